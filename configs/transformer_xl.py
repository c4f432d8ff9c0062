"""Transformer-XL (Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a
Fixed-Length Context", arXiv 1901.02860; kimiyoung/transformer-xl pytorch). The baseline the
recurrent families compare against; specs/attention.md B.1-B.3, specs/results.md §1a.

Variants (`--config=configs/transformer_xl.py:VARIANT`):
  enwik8  (default) the 12-layer base of `run_enwik8_base.sh`: d_model 512, 8 heads of 64,
          d_ff 2048, segment 512, memory 512, dropout 0.1, dropatt 0, Adam 2.5e-4 with a cosine
          decay to 0 over 400k steps, no warmup, global clip 0.25, batch 22.
          Expected: test 1.06 bpc (README, 41M params; "4 GPUs, >= 11G each"). The reference
          *evaluates* with segment 80, memory 2100, clamp_len 820 and same_length; here eval
          uses the training memory (512, no clamp), which scores somewhat worse.
          Needs --config.data.path=enwik8(.zip) where there is no internet.
  cpu     4 layers, d_model 256, 4 heads, d_ff 1024, segment 256, memory 256, batch 8: the
          benchmark shape; trains on the embedded stdlib corpus. `python -m lmjax.bench
          --config=configs/transformer_xl.py:cpu --steps=5`: 1608 ms/step, 1143 MB peak RSS
          on a shared 2-core CPU.
  tiny    seconds; for tests.

  python -m lmjax.main --config=configs/transformer_xl.py:cpu --workdir=/tmp/txl_cpu

Differences from the reference recipe: the cosine schedule here gives update k the factor of
step k + 1 (the reference's first update uses the full rate): a one-step shift of 400k.
Parameter init follows the reference (N(0, 0.02), LayerNorm gains N(1, 0.02)).
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="enwik8")
    config = common.base_config()
    config.seed = 1111
    config.model_name = "transformer_xl"
    config.data.name = "enwik8"

    config.model.vocab_size = 256
    config.model.d_model = 512
    config.model.num_heads = 8
    config.model.head_dim = 64
    config.model.d_ff = 2048
    config.model.num_layers = 12
    config.model.mem_len = 512
    config.model.clamp_len = 0  # no clamp in training (the reference's default -1)
    config.model.dropout_rate = 0.1
    config.model.dropout_attn = 0.0
    config.model.dtype = "float32"
    config.model.fused_attention = True
    config.model.kv_cache = False  # True only for decoding (--mode=generate)

    config.optim.name = "adam"
    config.optim.learning_rate = 2.5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 0
    config.optim.decay_steps = 400_000
    config.optim.min_lr_ratio = 0.0
    config.optim.grad_clip = 0.25

    config.train.batch_size = 22
    config.train.seq_len = 512
    config.train.num_steps = 400_000
    config.train.log_every = 200
    config.train.eval_every = 4000
    config.train.eval_steps = -1
    config.train.checkpoint_every = 4000
    config.eval.batch_size = 10  # the reference's eval_batch_size default
    config.eval.seq_len = 128  # eval_tgt_len during training

    v = arg.variant
    if v in ("cpu", "tiny"):
        common.make_cpu(config)
        config.model.d_model = 256
        config.model.num_heads = 4
        config.model.head_dim = 64
        config.model.d_ff = 1024
        config.model.num_layers = 4
        config.model.mem_len = 256
        config.optim.warmup_steps = 200
        config.optim.decay_steps = 2000
    elif v != "enwik8":
        raise ValueError(f"unknown transformer_xl variant {v!r}")
    if v == "tiny":
        common.make_tiny(config)
        config.model.d_model = 32
        config.model.num_heads = 2
        config.model.head_dim = 16
        config.model.d_ff = 64
        config.model.num_layers = 2
        config.model.mem_len = 16
        config.optim.decay_steps = 4
    return config

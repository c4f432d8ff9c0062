"""Plain SRU language model, the no-attention ablation of SRU++ (Lei et al. 2018, "Simple
Recurrent Units for Highly Parallelizable Recurrence", arXiv 1709.02755; reference
asappresearch/sru master language_model/train_enwik8.py with `sru` 2.6.0). specs/recurrent.md
B1 and B13.

Variants (`--config=configs/sru.py:VARIANT`):
  enwik8       (default) embedding width min(vocab, d) -> 10 SRU layers of width 1152 (the
               paper's `--depth 10 --d 1152`, ~37M parameters, unverified) -> Linear; dropout 0.2
               (embedding, the recurrence mask, final hidden), highway bias -3, no rescale;
               Adam lr 1e-3, clip 0.3, batch 128 x 100 bytes, 100 epochs. The paper's best
               enwik8 SRU result is 1.19 test bpc (which configuration gave it: unverified).
  enwik8_proj  `--depth 8 --d 3056 --n_proj 512 --dropout 0.3` (~47M, unverified).
  cpu          4 layers, d_model 256, batch 8, seq_len 256: the SRU++ `cpu` shape without
               attention, for the ablation and the benchmark; trains on the stdlib corpus.
  tiny         seconds; for tests.

  python -m lmjax.main --config=configs/sru.py --config.data.path=/data/enwik8.zip \
      --workdir=/tmp/sru_enwik8

Not reproduced: Adam's coupled L2 weight decay of 1e-7 (lmjax's `adam` has none; at 1e-7 it is
negligible); the reference's test pass at batch 1 is `--mode=eval --config.eval.batch_size=1`.
"""

from configs import common

EPOCH_STEPS = 90_000_000 // (128 * 100)  # train bytes / (batch x unroll)


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="enwik8")
    config = common.base_config()
    config.seed = 0
    config.model_name = "sru"
    config.data.name = "enwik8"

    config.model.vocab_size = 256
    config.model.d_model = 1152  # --d
    config.model.embed_dim = 0  # n_e = min(vocab, d)
    config.model.num_layers = 10  # --depth
    config.model.projection_size = 0  # --n_proj
    config.model.highway_bias = -3.0  # --bias
    config.model.dropout_rate = 0.2
    config.model.rescale = False
    config.model.vc_terms = True
    config.model.scan_impl = "auto"
    config.model.unroll = 1
    config.model.dtype = "float32"

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.3

    config.train.batch_size = 128
    config.train.seq_len = 100
    config.train.num_steps = 100 * EPOCH_STEPS
    config.train.log_every = 100
    config.train.eval_every = EPOCH_STEPS
    config.train.eval_steps = -1
    config.train.checkpoint_every = 2000
    config.eval.batch_size = 128
    config.eval.seq_len = 100

    v = arg.variant
    if v == "enwik8_proj":
        config.model.num_layers = 8
        config.model.d_model = 3056
        config.model.projection_size = 512
        config.model.dropout_rate = 0.3
    elif v in ("cpu", "tiny"):
        common.make_cpu(config)
        config.model.num_layers = 4
        config.model.d_model = 256
    elif v != "enwik8":
        raise ValueError(f"unknown sru variant {v!r}")
    if v == "tiny":
        common.make_tiny(config)
        config.model.num_layers = 2
        config.model.d_model = 32
        config.model.projection_size = 16  # exercise the factorised weight
    return config

"""Linear Transformers as fast weight programmers (Schlag, Irie & Schmidhuber, ICML 2021,
arXiv 2102.11174; reference IDSIA/lmtool-fwms, example_scripts/2021_linear_transformers_are_
secretly_fwps). specs/attention.md B.2-B.9; Table 2 numbers in specs/results.md 1c.

Variants (`--config=configs/fast_weights.py:VARIANT`), WikiText-103 words, 16 layers, 8 heads,
d_ff 2048, dropout 0.1, dropatt 0, adaptive softmax (cutoffs 20k/40k/200k, tied, div_val 1),
Adam 2.5e-4, clip 0.25, 2,000 warmup steps then a cosine to 0 (`cosine_txl`: as the
reference, the very first update uses the full rate and the warmup value is written after
each update), mem_len 0 (every window its own context):
  small_<attn>    d_model 128, heads of 16, segments of 256, batch 96, 500k steps (~44M params)
  medium_<attn>   d_model 256, heads of 32, segments of 384, batch 56, 400k steps (~90M)
  medium_delta_linear_carry
                  type 24 with `carry_over_fast_weight` and `no_pos`, evaluated with the carry
with <attn> one of the paper's seven and the reference's `attn_type` codes:

  <attn>            attn_type   model.feature_map  model.update_rule  paper: small / medium test ppl
  softmax           2           softmax            -                  34.1 / 29.6
  linear            4 (34)      linear             sum                38.3 / 33.0
  performer         5 (35)      performer          sum                39.6 / 33.8
  dpfp              6           dpfp               sum                38.8 (Table 5, ν 1) / -
  delta_linear      24          linear             delta              35.5 / 31.5
  delta_performer   25          performer          delta              37.2 / 31.8
  delta_dpfp        26          dpfp               delta              35.0 (Table 5, ν 1) / -
  (44 / 45 / 46: the delta types with model.attn_norm=True; 34 / 35 are the recurrent sum
  kernels, equal to 4 / 5 up to a 1/√d_head output factor.)

Paper numbers: specs/results.md 1c (arXiv 2102.11174 Tables 2 and 5; sliding-window test
perplexity; "two V100 GPUs in less than four days"). The Performer has m = 8 features in the
small models and 16 in the medium ones (Table 2; train.py's default is 16); DPFP ν =
dpfp_n_roll 2 (train.py's default; Table 5's best small rows use ν 1). As the shipped scripts,
the delta types keep the output normalisation (`skip_attn_normalization` False; the layer
comment calls True the best setting: D.B 3, and Table 3's best medium ablation drops it).

  cpu    4 layers, d_model 256, 8 heads of 32, d_ff 1024, batch 8 x 256 bytes of the stdlib
         corpus, 2,000 steps: the benchmark shape; delta_linear by default, any other with
         `:cpu,attn=<attn>` (or --config.model.feature_map / update_rule).
         On WikiText-2 (README, results; --config.data.name=text with train_path valid.txt,
         test_path test.txt), test bpc with --config.eval.protocol=segments after 2,000 steps:
         softmax 2.222, linear 2.540, delta_linear 2.585, performer 3.191,
         delta_performer 2.968, dpfp 2.721, delta_dpfp 2.593.
  tiny   seconds; for tests (also `:tiny,attn=<attn>`).

  python -m lmjax.main --config=configs/fast_weights.py:small_delta_linear \
      --config.data.path=/data/wikitext-103-v1.zip --workdir=/tmp/fwp_small_delta
  # test perplexity as the paper: sliding window of 256, batch 1 (here batched over windows)
  python -m lmjax.main --mode=eval --config=configs/fast_weights.py:small_delta_linear \
      --workdir=/tmp/fwp_small_delta --config.eval.protocol=sliding
  # the carry-over model: contiguous segments with the fast weights carried
  python -m lmjax.main --mode=eval --config=configs/fast_weights.py:medium_delta_linear_carry \
      --workdir=/tmp/fwp_carry --config.eval.protocol=carry --config.eval.batch_size=1

Evaluation protocols (`eval.protocol`): segments (independent windows: what training reports),
sliding (the reference's eval_sliding_window.py; `eval.sliding_stride` k scores every k-th
position), carry (contiguous windows with the state carried; a model trained without
carry-over gets it with --config.model.carry_over_fast_weight=True).
"""

from configs import common

ATTN = {  # <attn> -> (feature_map, update_rule)
    "softmax": ("softmax", "sum"),
    "linear": ("linear", "sum"),
    "performer": ("performer", "sum"),
    "dpfp": ("dpfp", "sum"),
    "delta_linear": ("linear", "delta"),
    "delta_performer": ("performer", "delta"),
    "delta_dpfp": ("dpfp", "delta"),
}
VARIANTS = (
    *(f"small_{a}" for a in ATTN),
    *(f"medium_{a}" for a in ATTN),
    "medium_delta_linear_carry",
    "cpu",
    "tiny",
)
TINY_VARIANTS = ("tiny",)


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="small_delta_linear", attn="")
    v = arg.variant
    if v not in VARIANTS:
        raise ValueError(f"unknown fast_weights variant {v!r}; known: {', '.join(VARIANTS)}")
    config = common.base_config()
    config.seed = 1111
    config.model_name = "fast_weights"
    config.data.name, config.data.level = "wikitext103", "word"

    m = config.model
    m.vocab_size = 267_735  # B.7: <eos> + 267,734 words of train.txt
    m.adaptive_cutoffs = (20000, 40000, 200000)
    m.num_layers, m.num_heads, m.d_ff = 16, 8, 2048
    m.d_model, m.head_dim = 128, 16
    m.dropout_rate, m.dropout_attn = 0.1, 0.0
    m.feature_map, m.update_rule = "linear", "delta"
    m.attn_norm = False
    m.skip_attn_normalization = False  # the scripts' setting (D.B 3)
    m.performer_proj_dim, m.dpfp_n_roll = 16, 2
    m.carry_over_fast_weight, m.no_pos = False, False
    m.mem_len, m.clamp_len = 0, 0
    m.fast_weight_impl, m.chunk_size, m.unroll = "auto", 64, 8
    m.dtype = "float32"

    config.optim.name = "adam"
    config.optim.learning_rate = 2.5e-4
    config.optim.schedule = "cosine_txl"
    config.optim.warmup_steps = 2000
    config.optim.decay_steps = 500_000
    config.optim.grad_clip = 0.25

    config.train.batch_size = 96
    config.train.seq_len = 256
    config.train.num_steps = 500_000
    config.train.log_every = 200
    config.train.eval_every = 4000
    config.train.eval_steps = -1
    config.train.checkpoint_every = 4000
    config.eval.batch_size = 10  # eval_batch_size during training
    config.eval.seq_len = 256

    attn = arg.attn or "delta_linear"
    if v.startswith("medium"):
        m.d_model, m.head_dim = 256, 32
        config.train.batch_size = 56
        config.train.seq_len = config.eval.seq_len = 384
        config.train.num_steps = config.optim.decay_steps = 400_000
    if v.startswith(("small_", "medium_")):
        attn = v.split("_", 1)[1]
    if v.startswith("small_"):
        m.performer_proj_dim = 8  # Table 2's small Performers
    if v == "medium_delta_linear_carry":
        attn = "delta_linear"
        m.carry_over_fast_weight, m.no_pos = True, True
        config.eval.protocol = "carry"
    if v in ("cpu", "tiny"):
        common.make_cpu(config)
        m.vocab_size, m.adaptive_cutoffs = 256, ()
        m.num_layers, m.d_model, m.num_heads, m.head_dim, m.d_ff = 4, 256, 8, 32, 1024
        config.optim.learning_rate = 1e-3  # 2.5e-4 is for 96 x 256-word batches
        config.optim.warmup_steps = 200
        config.optim.decay_steps = 2000
    if attn not in ATTN:
        raise ValueError(f"unknown attn {attn!r}; known: {', '.join(ATTN)}")
    m.feature_map, m.update_rule = ATTN[attn]
    if v == "tiny":
        common.make_tiny(config)
        m.num_layers, m.d_model, m.num_heads, m.head_dim, m.d_ff = 2, 32, 2, 16, 64
        m.performer_proj_dim = 4
        m.chunk_size = 8
        config.optim.decay_steps = 4
    return config

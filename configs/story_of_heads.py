"""The Story of Heads (Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads
Do the Heavy Lifting, the Rest Can Be Pruned", arXiv 1905.09418; lena-voita/the-story-of-heads).
A Transformer translation model whose heads carry Hard-Concrete gates; specs/attention.md C.1-C.9,
specs/results.md 1d.

Variants (`--config=configs/story_of_heads.py:VARIANT`):
  multi30k        a small Transformer with the paper's head layout (6 + 6 layers, 8 heads: the
                  144 heads of C.9) at d_model 256, d_ff 1024, for Multi30k at CPU scale:
                  --config.data.path=../shared/data/multi30k (en -> de by default; set
                  data.src_lang / data.tgt_lang for the other direction). BPE 8,000 per side.
  multi30k_prune  from a `multi30k` checkpoint (--config.init_from=DIR): gates on all three
                  attention types, λ = model.gate_coef; fresh Adam moments and the warmup
                  again, as the reference's pre-init (C.5).
  multi30k_fixed  from scratch with fixed head masks (model.alive_heads = {type: 6 x 8 0/1});
                  the paper's "same configuration trained from scratch" comparison.
  tiny            seconds; for tests (data paths set by the caller).

  python -m lmjax.main --config=configs/story_of_heads.py:multi30k --workdir=runs/soh_m30k \\
      --config.data.path=../shared/data/multi30k
  python -m lmjax.main --config=configs/story_of_heads.py:multi30k --workdir=runs/soh_m30k \\
      --config.data.path=../shared/data/multi30k --mode=eval   # prints valid/test bleu

The optimizer is C.5's Adam (β₂ 0.998, ε 1e-9) with the t2t noam schedule, which is `rsqrt`
after a linear warmup W: lr(step) = 4 (d W)^-1/2 min(step / W, (W / step)^1/2), peaking at
4 (d W)^-1/2 (1.40e-3 for Transformer-base, W = 16,000). Differences from the reference:
optax's Adam adds ε to the bias-corrected √v̂ (TF: to √v before the correction, a difference
of ε√(1-β₂ᵗ), immaterial at ε = 1e-9); embeddings update densely (the reference's LazyAdam
updates only the rows in the batch).
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="multi30k", lam=0.05)
    config = common.base_config()
    config.seed = 42
    config.task = "translation"
    config.model_name = "story_of_heads"

    d = config.data
    d.name = "multi30k"
    d.path = ""  # the Multi30k folder, e.g. ../shared/data/multi30k
    d.src_lang, d.tgt_lang = "en", "de"
    for split in ("train", "valid", "test"):  # data.name='text_pairs': one file per side
        d[f"{split}_src"], d[f"{split}_tgt"] = "", ""
    d.vocab_size = 8000  # BPE pieces per side (sentencepiece)
    d.cache_dir = ""  # where the BPE models are kept; '' = ~/.cache/lmjax/subwords
    d.batch_len = 4000  # rows x padded length per batch (the reference's batch_len)
    d.max_len = 64  # training pairs longer than this (subwords + EOS) are dropped

    m = config.model
    m.src_vocab_size = m.tgt_vocab_size = d.vocab_size
    m.d_model, m.num_heads, m.d_ff, m.num_layers = 256, 8, 1024, 6
    m.dropout_rate = m.attn_dropout = m.relu_dropout = 0.1
    m.label_smoothing = 0.1
    m.concrete_heads = ()
    m.alive_heads = {}
    m.gate_coef = arg.lam
    m.dtype = "float32"

    o = config.optim
    o.name = "adam"
    o.b1, o.b2, o.eps = 0.9, 0.998, 1e-9
    o.schedule = "rsqrt"
    o.warmup_steps = 4000
    o.learning_rate = 4.0 * (m.d_model * o.warmup_steps) ** -0.5  # noam's peak
    o.grad_clip = 0.0  # the reference does not clip

    t = config.train
    t.batch_size = 8  # unused by translation batches (data.batch_len); kept for the trainer's check
    t.num_steps = 20_000
    t.log_every = 100
    t.eval_every = 1000
    t.eval_steps = 8  # validation batches per in-training BLEU; -1 = the whole split
    t.checkpoint_every = 1000
    config.eval.batch_size = 8
    config.eval.batch_len = 4000
    config.eval.beam_size = 4  # C.6; 1 = greedy
    config.eval.len_alpha = 0.6  # the GNMT length penalty's α

    if arg.variant == "multi30k":
        pass
    elif arg.variant == "multi30k_prune":
        m.concrete_heads = ("enc-self", "dec-self", "dec-enc")
    elif arg.variant == "multi30k_fixed":
        pass  # set model.alive_heads, e.g. from a pruned run's open heads
    elif arg.variant == "tiny":
        common.make_tiny(config)
        d.name = "text_pairs"
        d.vocab_size = m.src_vocab_size = m.tgt_vocab_size = 64
        d.batch_len, d.max_len = 256, 32
        m.d_model, m.num_heads, m.d_ff, m.num_layers = 32, 4, 64, 2
        o.warmup_steps = 10
        o.learning_rate = 3e-3
        config.eval.batch_len = 256
        config.eval.beam_size = 2
        t.eval_steps = 2
    else:
        raise ValueError(f"unknown variant {arg.variant!r}")
    return config

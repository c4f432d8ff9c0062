"""The Story of Heads (Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads
Do the Heavy Lifting, the Rest Can Be Pruned", arXiv 1905.09418; lena-voita/the-story-of-heads).
A Transformer translation model whose heads carry Hard-Concrete gates; specs/attention.md C.1-C.9,
specs/results.md 1d.

Variants (`--config=configs/story_of_heads.py:VARIANT`):
  multi30k        a small Transformer with the paper's head layout (6 + 6 layers, 8 heads: the
                  144 heads of C.9) at d_model 256, d_ff 512, for Multi30k at CPU scale:
                  --config.data.path=../shared/data/multi30k (en -> de by default; set
                  data.src_lang / data.tgt_lang for the other direction). BPE 8,000 per side.
  multi30k_prune  from a `multi30k` checkpoint (--config.init_from=DIR): gates on all three
                  attention types, λ = model.gate_coef; fresh Adam moments and the warmup
                  again, as the reference's pre-init (C.5).
  multi30k_fixed  from scratch with fixed head masks (model.alive_heads = {type: 6 x 8 0/1});
                  the paper's "same configuration trained from scratch" comparison.
                  `multi30k_fixed,heads=FILE` reads them from the alive_heads.json that
                  `lmjax.export --prune` writes beside a pruned model (any *_fixed variant).
  multi30k_prune_enc  as multi30k_prune with gates on enc-self only and everything but the
                  encoder frozen (optim.trainable = emb_inp*, enc*), C.4.
  wmt_en_ru       Transformer-base (d 512, 8 heads, d_ff 2048, 6 + 6 layers), 32k BPE per side,
                  batch_len 4000, C.5's noam schedule (W = 16,000, peak 1.40e-3): the paper's
                  baseline, WMT EN-RU BLEU 29.6 (results.md 1d, tokenised lowercase C.7 BLEU).
  wmt_en_ru_prune from a wmt_en_ru checkpoint (--config.init_from=DIR), all three types gated,
                  λ = 0.1 (the reference script's example; the paper sweeps it: e.g. 14/31/30
                  heads kept at 29.62, 5/9/12 at 28.90).
  wmt_en_ru_prune_enc  encoder self-attention gated, decoder frozen: 10/48 heads at -0.15 BLEU.
  wmt_en_ru_fixed from scratch with model.alive_heads (a pruned run's open heads): Table 2's
                  "from scratch" column (e.g. 14/31/30: 29.47).
  wmt_en_de, wmt_en_de_prune, wmt_en_de_prune_enc, wmt_en_de_fixed: the same for EN-DE (the
                  paper reports no EN-DE pruning numbers; results.md 1d).
  tiny            seconds; for tests (data paths set by the caller).

WMT data: data.name='text_pairs' on local files (data.train_src / train_tgt / valid_* /
test_*, plain or .gz), prepared as the reference (C.1): Moses-tokenised and lowercased, then
given to the pipeline, which learns its own sentencepiece BPE (32,000 pieces per side). The
tensorflow-datasets WMT builders need TensorFlow to prepare their data, which lmjax does not
install, so they are not used. E.g. (newstest2013 as valid, newstest2014 as test):

  python -m lmjax.main --config=configs/story_of_heads.py:wmt_en_de --workdir=runs/wmt_en_de \
      --config.data.train_src=train.tok.lc.en --config.data.train_tgt=train.tok.lc.de \
      --config.data.valid_src=nt2013.tok.lc.en --config.data.valid_tgt=nt2013.tok.lc.de \
      --config.data.test_src=nt2014.tok.lc.en --config.data.test_tgt=nt2014.tok.lc.de
  The reference trains on ~16k tokens an update (4 GPUs x batch_len 4000); on fewer devices,
  --config.train.grad_accum_steps=4 gives an update of the same size. One difference (C.5): the
  reference averages the micro-batches' token means, lmjax takes the token mean of the whole
  update (each token weighs the same), which differs when micro-batches hold different
  numbers of target tokens.

  python -m lmjax.main --config=configs/story_of_heads.py:multi30k --workdir=runs/soh_m30k \\
      --config.data.path=../shared/data/multi30k
  python -m lmjax.main --config=configs/story_of_heads.py:multi30k --workdir=runs/soh_m30k \\
      --config.data.path=../shared/data/multi30k --mode=eval   # prints valid/test bleu

  Measured on a 2-core CPU (2026-12-06; README "Translation: the Story of Heads on Multi30k"),
  sacreBLEU, beam 4: `multi30k` stopped after 55 minutes (2,202 steps): valid 36.43, test
  35.78. `multi30k_prune` from it, 600 steps: λ = 0.1 keeps 10 / 46 / 48 heads (enc-self /
  dec-self / dec-enc), test 35.67; `multi30k_prune,lam=1.0` keeps 0 / 4 / 18 = 22 of 144, test
  27.47. The paper (WMT EN-RU, results.md 1d): 29.6 with all heads, 29.62 with 14 / 31 / 30,
  28.90 with 5 / 9 / 12.

The optimizer is C.5's Adam (β₂ 0.998, ε 1e-9) with the t2t noam schedule, which is `rsqrt`
after a linear warmup W: lr(step) = 4 (d W)^-1/2 min(step / W, (W / step)^1/2), peaking at
4 (d W)^-1/2 (1.40e-3 for Transformer-base, W = 16,000). Differences from the reference:
optax's Adam adds ε to the bias-corrected √v̂ (TF: to √v before the correction, a difference
of ε√(1-β₂ᵗ), immaterial at ε = 1e-9); embeddings update densely (the reference's LazyAdam
updates only the rows in the batch).
"""

from configs import common


def get_config(arg=None):
    # lam < 0: the variant's λ; heads: an alive_heads.json for the *_fixed variants
    arg = common.parse_arg(arg, variant="multi30k", lam=-1.0, heads="")
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
    d.batch_len = 3000  # rows x padded length per batch (the reference's batch_len)
    d.max_len = 64  # training pairs longer than this (subwords + EOS) are dropped

    m = config.model
    m.src_vocab_size = m.tgt_vocab_size = d.vocab_size
    m.d_model, m.num_heads, m.d_ff, m.num_layers = 256, 8, 512, 6
    m.dropout_rate = m.attn_dropout = m.relu_dropout = 0.1
    m.label_smoothing = 0.1
    m.concrete_heads = ()
    m.alive_heads = {}
    m.kept_heads = {}  # set by `lmjax.export --prune` in the pruned workdir's overrides
    m.gate_coef = 0.1  # λ: the reference script's example ("set this again for each experiment")
    m.dtype = "float32"

    o = config.optim
    o.name = "adam"
    o.b1, o.b2, o.eps = 0.9, 0.998, 1e-9
    o.schedule = "rsqrt"
    # CPU scale: a short warmup and a peak of 1.5e-3 (noam's 4 (d W)^-1/2 would be 1.4e-2 at
    # W = 300) so that an hour of training (~1,300 updates, ~13 epochs) gets far.
    o.warmup_steps = 300
    o.learning_rate = 1.5e-3
    o.grad_clip = 0.0  # the reference does not clip

    t = config.train
    t.batch_size = 8  # unused by translation batches (data.batch_len); kept for the trainer's check
    t.num_steps = 100_000  # stop by hand or by time (SIGTERM saves a checkpoint), as the reference
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
    elif arg.variant in ("multi30k_prune", "multi30k_prune_enc"):
        m.concrete_heads = ("enc-self", "dec-self", "dec-enc")
        if arg.variant == "multi30k_prune_enc":
            m.concrete_heads = ("enc-self",)
            o.trainable = ("emb_inp*", "enc*")
        # CPU scale: minutes, not the reference's days, of pruning. Adam moves a parameter by
        # about its learning rate a step whatever the gradient's size, so log_a (from U(±0.6))
        # would need thousands of steps to reach a closed gate (log_a < -2.4) at 1.5e-3; the
        # gates learn 10x faster instead (the reference has one learning rate), and the
        # restarted warmup is 100 updates.
        o.lr_scale = {"*/gate/log_a": 10.0}
        o.warmup_steps = 100
        # 600 updates (~15 minutes here) close most gates. A checkpoint every 50 steps, all
        # kept, is the notebook's picture of the gates over the run. No in-training BLEU: best/
        # ranks by BLEU alone and would keep an early checkpoint with more heads open, so
        # eval and export read the run's last checkpoint.
        t.num_steps = 600
        t.checkpoint_every, t.keep_checkpoints = 50, 100
        t.eval_every = 100_000
    elif arg.variant == "multi30k_fixed":
        pass  # set model.alive_heads, e.g. from a pruned run's open heads
    elif arg.variant.startswith(("wmt_en_ru", "wmt_en_de")):
        lang = arg.variant[4:9]
        kind = arg.variant[9:]  # '', _prune, _prune_enc, _fixed
        if kind not in ("", "_prune", "_prune_enc", "_fixed"):
            raise ValueError(f"unknown variant {arg.variant!r}")
        d.name = "text_pairs"
        d.src_lang, d.tgt_lang = lang.split("_")
        d.vocab_size = m.src_vocab_size = m.tgt_vocab_size = 32000
        d.batch_len, d.max_len = 4000, 256
        m.d_model, m.num_heads, m.d_ff, m.num_layers = 512, 8, 2048, 6
        o.warmup_steps = 16_000
        o.learning_rate = 4.0 * (m.d_model * o.warmup_steps) ** -0.5  # noam's peak, 1.40e-3
        t.num_steps = 1_000_000  # the reference runs until stopped by hand
        t.log_every, t.eval_every, t.checkpoint_every = 256, 2048, 2048
        t.eval_steps = -1
        if kind == "_prune":
            m.concrete_heads = ("enc-self", "dec-self", "dec-enc")
        elif kind == "_prune_enc":
            m.concrete_heads = ("enc-self",)
            o.trainable = ("emb_inp*", "enc*")
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
    if arg.lam >= 0:
        m.gate_coef = arg.lam
    if arg.heads:
        if not arg.variant.endswith("_fixed"):
            raise ValueError(f"heads= is for the *_fixed variants, not {arg.variant!r}")
        m.alive_heads = _read_heads(arg.heads)
    return config


def _read_heads(path):
    """{type: [layers][heads] 0/1} from an alive_heads.json (lmjax.export --prune)."""
    import json
    import os

    try:
        with open(os.path.expanduser(path)) as f:
            heads = json.load(f)
    except OSError as e:
        raise ValueError(f"heads={path}: {e.strerror}") from None
    except ValueError:
        raise ValueError(f"heads={path}: not JSON") from None
    if not isinstance(heads, dict) or not all(isinstance(v, list) for v in heads.values()):
        raise ValueError(f"heads={path}: not {{type: [layers][heads] 0/1}}")
    return heads

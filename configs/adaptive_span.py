"""Adaptive-Span Transformer (Sukhbaatar et al. 2019, "Adaptive Attention Span in
Transformers", arXiv 1905.07799) and All-attention (arXiv 1907.01470); the scripts of
facebookresearch/adaptive-span `experiments/*.sh`. specs/attention.md A.8-A.9.

Variants (`--config=configs/adaptive_span.py:VARIANT`), all with ramp 32, z init 0, the span
cache, Adagrad with the per-tensor clip 0.03, lr 0.07, warmup min(1, k/W) and no decay, eval on
8 streams of whole blocks:
  enwik8_small       8 layers of 256 (FF 1024), 4 heads, span 1024, block 256, batch 64, no
                     dropout, warmup 8k, 150k steps, λ 2e-6. README: "about 1.3 bpc on dev".
  enwik8  (default)  12 layers of 512 (FF 2048), 8 heads, span 8192, block 512, batch 64,
                     dropout 0.3, warmup 32k, 600k steps, λ 5e-7. Expected dev 1.04 / test 1.02
                     bpc, 38M params (8 GPUs in the reference).
  enwik8_large       24 layers of 768 (FF 4096), dropout 0.4, batch-split 2, 150k steps, then
                     the fine-tune below to 170k. Expected dev 1.00 / test 0.98, 209M params,
                     "about 1.2 sec/batch on 8 V100 GPUs".
  text8              as enwik8 on text8, 900k steps. Expected dev 1.05 / test 1.11, 39M.
  text8_large        as enwik8_large on text8, 250k steps + fine-tune to 270k. Expected 1.01 /
                     1.07, 209M.
  enwik8_pers_small  All-attention: 18 layers of 512, no FF, 1024 persistent vectors per head,
                     dropout 0.3, λ 1e-7, batch-split 2, 450k + fine-tune to 480k. Expected
                     1.03 / 1.01, 39M.
  enwik8_pers        36 layers, 2048 persistent vectors, dropout 0.4, 200k + fine-tune to
                     210k. Expected 1.00 / 0.98, 114M.
  wiki103_pers       All-attention on WikiText-103 words (`--adapt-io --adapt-io-tied`): 36
                     layers of 512, 8 heads, no FF, 2048 persistent vectors per head, span
                     2048, block 256, batch 64 (batch-split 2), dropout 0.3, emb dropout 0.1,
                     λ 5e-7; adaptive input (×√512) and softmax cut at 20000/40000/200000 with
                     widths 512/128/32/8 (div 4), tables and projections tied; Adam (0.9,
                     0.999) lr 2.5e-4, warmup 8k, global clip 1.0, 800k steps + fine-tune to
                     850k at 2.5e-5. Expected dev 18.8 / test 19.7 ppl (README; <eos> counted
                     as a token), 133M params (132,493,746 here).
  cpu                4 layers of 256 (FF 1024), 4 heads, span 1024, block 256, batch 8, λ 2e-6:
                     the benchmark shape; trains on the embedded stdlib corpus. After 600
                     steps (with the clamp/trim hooks) the learned spans are 32-41 tokens, so
                     every layer trims 960 of 1024 distances. `python -m lmjax.bench
                     --config=configs/adaptive_span.py:cpu --steps=10` times the trainer's
                     step with the trim from the initial spans (960 everywhere): 565 ms/step,
                     915 MB peak RSS on a shared 2-core CPU (the full span: ~1860 ms, 1866 MB).
  tiny               seconds; for tests.
  wiki103_pers_tiny  tiny with wiki103_pers's code paths (persistent memory, tied adaptive IO)
                     on the stdlib bytes cut into clusters at 32/96/192: no download.

  python -m lmjax.main --config=configs/adaptive_span.py:enwik8 --workdir=W \
      --config.data.path=enwik8.zip
Fine-tune (the `_large` and `_pers` scripts relaunch on the same checkpoint at lr/10; the
optimizer state is kept and the warmup is long over), e.g. for enwik8_large:
  python -m lmjax.main --config=configs/adaptive_span.py:enwik8_large --workdir=W \
      --config.optim.learning_rate=0.007 --config.train.num_steps=170000

  python -m lmjax.main --config=configs/adaptive_span.py:wiki103_pers --workdir=W \
      --config.data.path=wikitext-103-v1.zip     # then fine-tune: lr 2.5e-5, 850000 steps

`model.trim_lens` stays () here: the trainer's `adapt_to` hook sets it from the learned spans.
Vocabulary order: the reference's `data.py` counts `<eos>` like a word and breaks count ties in
reverse first-seen order; lmjax uses Transformer-XL's order (lmjax/data/words.py), which can
differ only among equally frequent words, and so only where a cutoff splits such a group.
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="enwik8")
    config = common.base_config()
    config.seed = 0
    config.model_name = "adaptive_span"
    config.data.name = "enwik8"

    config.model.vocab_size = 256
    config.model.d_model = 512
    config.model.num_heads = 8
    config.model.d_ff = 2048
    config.model.num_layers = 12
    config.model.attn_span = 8192
    config.model.dropout_rate = 0.3
    config.model.dropout_emb = 0.0
    config.model.adapt_span = True
    config.model.span_ramp = 32
    config.model.span_init = 0.0
    config.model.span_loss = 5e-7
    config.model.span_cache = True
    config.model.pers_mem_size = 0
    config.model.trim_lens = ()  # static trims per layer; set by the trainer hook
    config.model.dtype = "float32"

    config.optim.name = "adagrad"
    config.optim.learning_rate = 0.07
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 32_000
    config.optim.grad_clip = 0.03  # per tensor, on the step size

    config.train.batch_size = 64  # global (8 rows on each of 8 GPUs in the reference)
    config.train.seq_len = 512
    config.train.num_steps = 600_000
    config.train.log_every = 1000  # one reference "iteration" (--nbatches)
    config.train.eval_every = 1000
    config.train.eval_steps = 100  # the reference's quick validation: nbatches / 10 blocks
    config.train.checkpoint_every = 1000
    config.train.grad_accum_steps = 1  # --batch-split
    config.eval.batch_size = 8
    config.eval.seq_len = 512

    v = arg.variant
    m = config.model
    if v == "enwik8_small":
        m.d_model, m.num_heads, m.d_ff, m.num_layers, m.attn_span = 256, 4, 1024, 8, 1024
        m.dropout_rate, m.span_loss = 0.0, 2e-6
        config.optim.warmup_steps = 8000
        config.train.seq_len = config.eval.seq_len = 256
        config.train.num_steps = 150_000
    elif v in ("enwik8_large", "text8_large"):
        m.d_model, m.d_ff, m.num_layers, m.dropout_rate = 768, 4096, 24, 0.4
        config.train.grad_accum_steps = 2
        config.train.num_steps = 150_000 if v == "enwik8_large" else 250_000
    elif v in ("enwik8_pers_small", "enwik8_pers"):
        m.d_ff, m.span_loss, config.train.grad_accum_steps = 1, 1e-7, 2  # d_ff: a dummy
        if v == "enwik8_pers_small":
            m.num_layers, m.pers_mem_size, config.train.num_steps = 18, 1024, 450_000
        else:
            m.num_layers, m.pers_mem_size, m.dropout_rate = 36, 2048, 0.4
            config.train.num_steps = 200_000
    elif v in ("wiki103_pers", "wiki103_pers_tiny"):
        config.data.name, config.data.level = "wikitext103", "word"
        m.vocab_size = 267_735
        m.adaptive_cutoffs, m.div_val, m.adaptive_tied = (20000, 40000, 200000), 4, True
        m.num_layers, m.d_ff, m.pers_mem_size, m.attn_span = 36, 1, 2048, 2048  # d_ff: dummy
        m.dropout_rate, m.dropout_emb, m.span_loss = 0.3, 0.1, 5e-7
        config.optim.name, config.optim.learning_rate = "adam", 2.5e-4
        config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.999, 1e-8
        config.optim.warmup_steps, config.optim.grad_clip = 8000, 1.0  # global-norm clip
        config.train.seq_len = config.eval.seq_len = 256
        config.train.num_steps = 800_000
        config.train.grad_accum_steps = 2
    elif v in ("cpu", "tiny"):
        common.make_cpu(config)
        m.d_model, m.num_heads, m.d_ff, m.num_layers, m.attn_span = 256, 4, 1024, 4, 1024
        m.dropout_rate, m.span_loss = 0.0, 2e-6
        config.optim.warmup_steps = 200
    elif v not in ("enwik8", "text8"):
        raise ValueError(f"unknown adaptive_span variant {v!r}")
    if v == "wiki103_pers_tiny":  # the wiki103_pers code paths on bytes, no download
        common.make_tiny(config)
        m.vocab_size, m.adaptive_cutoffs, m.div_val = 256, (32, 96, 192), 2
        m.d_model, m.num_heads, m.num_layers, m.pers_mem_size, m.attn_span = 32, 2, 2, 8, 128
    if v.startswith("text8"):
        config.data.name = "text8"
    if v == "text8":
        config.train.num_steps = 900_000
    if v == "tiny":
        common.make_tiny(config)
        m.d_model, m.num_heads, m.d_ff, m.num_layers = 32, 2, 64, 2
        m.attn_span = 128  # > 64, so the trimming paths run
    return config


TINY_VARIANTS = ("tiny", "wiki103_pers_tiny")  # tests/configs_test.py takes a step with each

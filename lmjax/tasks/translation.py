"""Translation: sentence pairs, subword vocabularies, label-smoothed loss, BLEU.

Data (`config.data`, lmjax/data/translation.py): `text_pairs` files or a `multi30k` folder; a
sentencepiece BPE vocabulary per side of `data.vocab_size` trained on the training split on
first use (cached), which must equal the model's `src_vocab_size` / `tgt_vocab_size`; training
batches of at most `data.batch_len` tokens grouped by length (C.1), a pure function of the step.

Loss: the family's label-smoothed token losses (models/story_of_heads.py `nll`) summed over
target tokens (EOS included) and divided by their count; a gated model adds λ·L0 through its
`aux_losses`. The label-smoothed loss is not a likelihood, so no perplexity is reported.

Evaluation: the split's loss, and BLEU of translations by beam search (`eval.beam_size`, 4 as
the reference; 1 = greedy; lmjax/decoding.py) with the eval gates: sacreBLEU on detokenised
text (`bleu`, the headline and what ranks checkpoints) and the reference's tokenised lowercase
BLEU-4 (`bleu_tok`, C.7). Every pair of an evaluation split is
scored (only training drops pairs longer than `data.max_len`).

`--mode=translate --input=FILE` (or `-` for stdin) prints the translation of every line.

Not yet: several processes in evaluation (every process decodes the whole split).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lmjax import bleu, decoding
from lmjax.data import translation as tr
from lmjax.errors import UserError
from lmjax.tasks import base


class TranslationTask(base.Task):
    """Sequence-to-sequence translation over `config.data`."""

    metric = "bleu"
    rank_by = "bleu"
    higher_is_better = True

    def __init__(self, config):
        super().__init__(config)
        d = config.data
        for field in ("vocab_size", "batch_len", "max_len"):
            if int(d.get(field, 0)) <= 0:
                raise UserError(f"data.{field}={d.get(field, 0)} must be positive")
        self._text = {}
        self._vocab = None
        self._train = None
        self._eval = {}

    # -- data ----------------------------------------------------------------------------------

    def _lines(self, split):
        if split not in self._text:
            src, tgt, field = tr.pair_paths(self.config.data, split)
            self._text[split] = tr.read_pairs(src, tgt, field)
        return self._text[split]

    def vocabularies(self):
        """(source, target) SubwordVocab, trained on the training split on first use."""
        if self._vocab is None:
            d = self.config.data
            src, tgt = self._lines("train")
            sides = d.get("src_lang", "src"), d.get("tgt_lang", "tgt")
            self._vocab = tuple(
                tr.load_or_train_vocab(lines, int(d.vocab_size), d.get("cache_dir", ""), side)
                for lines, side in zip((src, tgt), sides, strict=True)
            )
        return self._vocab

    def prepare(self, model, splits):
        c = model.config
        d = self.config.data
        for field, size in (
            ("src_vocab_size", c.src_vocab_size),
            ("tgt_vocab_size", c.tgt_vocab_size),
        ):
            if size != int(d.vocab_size):
                raise UserError(f"model.{field}={size} but data.vocab_size={d.vocab_size}")
        for split in splits:
            self._lines(split)
        src_voc, tgt_voc = self.vocabularies()
        if "train" in splits and self._train is None:
            src, tgt = self._lines("train")
            self._train = tr.PairBatches.build(
                src_voc.encode(src), tgt_voc.encode(tgt),
                batch_len=int(d.batch_len), max_len=int(d.max_len),
                row_multiple=jax.device_count(), seed=int(self.config.seed),
            )  # fmt: skip
            if self._train.dropped:
                n = self._train.dropped
                print(f"train: {n} pairs longer than data.max_len={d.max_len} dropped")

    def _eval_batches(self, split):
        if split not in self._eval:
            src, tgt = self._lines(split)
            src_voc, tgt_voc = self.vocabularies()
            s, t = src_voc.encode(src), tgt_voc.encode(tgt)
            longest = max(max(len(a), len(b)) for a, b in zip(s, t, strict=True))
            batches = tr.PairBatches.build(
                s, t, batch_len=max(int(self.config.eval.batch_len), longest), max_len=longest
            )
            self._eval[split] = list(batches.in_order())
        return self._eval[split]

    def init_inputs(self):
        z = jnp.zeros((1, 8), jnp.int32)
        return (z, jnp.ones((1, 8), jnp.float32), z)

    def train_batch(self, step):
        return self._train.batch(step, jax.process_index(), jax.process_count())

    def synthetic_batch(self, model, seed=0):
        rng = np.random.default_rng(seed)
        length = int(self.config.data.max_len)
        rows = (
            self._train.rows(length)
            if self._train
            else max(1, int(self.config.data.batch_len) // length)
        )
        rows //= jax.process_count()
        v = model.config.tgt_vocab_size
        ids = lambda: rng.integers(3, v, (rows, length), dtype=np.int32)
        ones = np.ones((rows, length), np.float32)
        return {"src": ids(), "src_mask": ones, "tgt": ids(), "weights": ones}

    # -- loss ----------------------------------------------------------------------------------

    def loss(self, model, params, batch, carry, *, train, rngs=None):
        nll, aux = model.apply(
            {"params": params}, batch["src"], batch["src_mask"], batch["tgt"], train=train,
            rngs=rngs, method="nll",
        )  # fmt: skip
        return jnp.sum(nll * batch["weights"]), jnp.sum(batch["weights"]), carry, aux

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, model, params, split, *, mesh, max_batches=-1, progress=False):
        del mesh
        batches = self._eval_batches(split)
        if max_batches >= 0:
            batches = batches[:max_batches]
        loss_fn = jax.jit(lambda p, b: self.loss(model, p, b, None, train=False)[:2])
        _, tgt_voc = self.vocabularies()
        refs = self._lines(split)[1]
        loss_sum = count = 0.0
        hyps, gold = [], []
        bar = tqdm.tqdm(
            batches, desc=split, leave=False, disable=not progress or jax.process_index()
        )
        for idx, arrays in bar:
            ls, n = loss_fn(params, arrays)
            loss_sum, count = loss_sum + float(ls), count + float(n)
            out = self._decode(model, params, arrays)
            hyps += [tgt_voc.decode(row) for row in out[: len(idx)]]
            gold += [refs[i] for i in idx]
        return {
            "loss": loss_sum / max(count, 1.0),
            "bleu": bleu.sacre_bleu(hyps, gold),
            "bleu_tok": bleu.paper_bleu(hyps, gold),
            "sentences": len(hyps),
        }

    def _decode(self, model, params, arrays):
        k = int(self.config.eval.get("beam_size", 4))
        if k <= 1:
            return np.asarray(decoding.greedy(model, params, arrays["src"], arrays["src_mask"]))
        tokens, _ = decoding.beam_search(
            model, params, arrays["src"], arrays["src_mask"], beam_size=k,
            alpha=float(self.config.eval.get("len_alpha", 0.6)),
        )  # fmt: skip
        return np.asarray(tokens)

    def eval_note(self, metrics):
        n = metrics["sentences"]
        k = int(self.config.eval.get("beam_size", 4))
        how = f"beam {k}" if k > 1 else "greedy"
        return f" (tokenised lowercase BLEU {metrics['bleu_tok']:.2f}, {n} sentences, {how})"

    def source_lines(self, split):
        """The source side of `split` (detokenised text)."""
        return self._lines(split)[0]

    def pairs(self, split):
        """(source lines, target lines) of `split`, as read (detokenised text)."""
        return self._lines(split)

    def translate_lines(self, model, params, lines):
        """Translations (beam search with eval.beam_size; 1 = greedy) of source `lines`
        (detokenised text)."""
        src_voc, tgt_voc = self.vocabularies()
        ids = src_voc.encode(lines)
        batches = tr.PairBatches.build(
            ids, ids, batch_len=max(int(self.config.eval.batch_len), max(map(len, ids))),
            max_len=max(map(len, ids)),
        )  # fmt: skip
        out = [""] * len(lines)
        for idx, arrays in batches.in_order():
            rows = self._decode(model, params, arrays)
            for i, row in zip(idx, rows, strict=False):
                out[i] = tgt_voc.decode(row)
        return out

    def check_translate_options(self, model, input):
        del model
        if not input:
            raise UserError("--mode=translate needs --input=FILE (one sentence a line; - = stdin)")
        if input != "-" and not os.path.isfile(os.path.expanduser(input)):
            raise UserError(f"--input: no file {input!r}")

    def translate(self, model, params, input):
        lines = sys.stdin.read().splitlines() if input == "-" else tr.read_lines(input, "--input")
        out = self.translate_lines(model, params, lines) if lines else []
        for line in out:
            print(line)
        return out

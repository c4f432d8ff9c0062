"""Sentence pairs for translation: files, subword vocabularies, and token-count batches.

Sources (`data.name`):
  text_pairs  one file per side and split (`data.train_src` / `train_tgt`, `valid_*`, `test_*`),
              one sentence a line, aligned by line number, plain or .gz;
  multi30k    a folder (`data.path`, e.g. ../shared/data/multi30k) holding Multi30k task 1 as
              {train, val, test_2016_flickr}.{lang}.gz (or without .gz), `data.src_lang` ->
              `data.tgt_lang` in either direction.

Subwords (`SubwordVocab`): a sentencepiece BPE model per side, trained on that side's training
split on first use and cached under `data.cache_dir` (default ~/.cache/lmjax/subwords) by a
hash of the text and the settings, so a second run (or a second process) loads it. Ids follow
the reference's `Voc` (specs/attention.md C.1): 0 _BOS_ (never produced: the decoder starts
from a zero vector), 1 _EOS_ (ends every sentence and pads batches), 2 _UNK_.

How this differs from the reference's pipeline (C.1: Moses tokenisation, lowercasing, 32k
subword-nmt merges, " `" continuation marks) and why the numbers stay comparable: sentencepiece
learns BPE merges the same way (most frequent adjacent pair first) on raw, cased text with the
spaces kept as a symbol, so the models see cased subwords and detokenisation is exact
(`decode`), which is what sacreBLEU scores; for the paper's tokenised lowercase BLEU (C.7) the
detokenised output and references are tokenised and lowercased alike. A 32k BPE vocabulary
(32k merges plus the alphabet) segments about as finely as 32k subword-nmt merges do, so
sequence lengths, batch sizes in tokens and the model's capacity per token match the paper's.

Batches (`PairBatches`, C.1): pairs longer than `max_len` subwords on either side are dropped
(counted, as the reference drops >200-word pairs). Every epoch shuffles the pairs (seeded by
the epoch), sorts windows of `window` pairs by length, and cuts each window greedily into
batches whose rows x padded length stay within `batch_len` tokens. To compile a handful of
shapes rather than one per batch, lengths are padded up to a few bucket lengths and each
bucket has one row count (batch_len // length, rounded down to a multiple of `row_multiple`,
the devices' row granularity); a batch's unused rows are padding with weight 0. Batches are
shuffled within the epoch; `batch(step)` is a pure function of the step (epochs are rebuilt on
demand from their seeds), so a resumed run reads the same batches, and each process takes its
contiguous block of rows.
"""

import dataclasses
import gzip
import hashlib
import os
import pathlib
import tempfile

import numpy as np

from lmjax.errors import UserError

BOS, EOS, UNK = 0, 1, 2
MULTI30K_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
SPLITS = tuple(MULTI30K_FILES)


def read_lines(path, field):
    """The lines of a plain or .gz text file (newline stripped); `field` names the config
    field the path came from, for the error."""
    path = pathlib.Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise UserError(f"{field}: no file {str(path)!r}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{field}: cannot read {str(path)!r} as UTF-8 text ({e})") from None


def pair_paths(data_cfg, split):
    """(source path, target path, field name) of `split` for `data.name` text_pairs/multi30k."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; known: {SPLITS}")
    if data_cfg.name == "text_pairs":
        src, tgt = data_cfg.get(f"{split}_src", ""), data_cfg.get(f"{split}_tgt", "")
        if not src or not tgt:
            raise UserError(f"data.{split}_src and data.{split}_tgt are needed for text_pairs")
        return src, tgt, f"data.{split}_src/_tgt"
    if data_cfg.name == "multi30k":
        if not data_cfg.get("path", ""):
            raise UserError("data.path: the Multi30k folder is needed for data.name='multi30k'")
        src_lang, tgt_lang = data_cfg.src_lang, data_cfg.tgt_lang
        if src_lang == tgt_lang:
            raise UserError(f"data.src_lang and data.tgt_lang are both {src_lang!r}")
        folder = pathlib.Path(os.path.expanduser(data_cfg.path))
        paths = []
        for lang, field in ((src_lang, "data.src_lang"), (tgt_lang, "data.tgt_lang")):
            stem = folder / f"{MULTI30K_FILES[split]}.{lang}"
            found = [p for p in (stem.with_name(stem.name + ".gz"), stem) if p.is_file()]
            if not found:
                have = sorted({p.name.split(".")[1] for p in folder.glob("*.*") if "." in p.name})
                raise UserError(
                    f"{field}={lang!r}: no {stem.name}[.gz] in {str(folder)!r} "
                    f"(languages there: {', '.join(have) or 'none'})"
                )
            paths.append(found[0])
        return str(paths[0]), str(paths[1]), "data.path"
    raise UserError(f"data.name={data_cfg.name!r} is not a translation dataset")


def read_pairs(src_path, tgt_path, field="data"):
    """(source lines, target lines), checked aligned and non-empty."""
    src, tgt = read_lines(src_path, field), read_lines(tgt_path, field)
    if len(src) != len(tgt):
        raise UserError(
            f"{field}: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "the sides must be aligned line by line"
        )
    if not src:
        raise UserError(f"{field}: {src_path} and {tgt_path} are empty")
    return src, tgt


# -- subwords ----------------------------------------------------------------------------------


class SubwordVocab:
    """A sentencepiece BPE model with the reference's special ids (BOS 0, EOS 1, UNK 2)."""

    def __init__(self, model_path):
        import sentencepiece as spm

        self.path = str(model_path)
        self._sp = spm.SentencePieceProcessor(model_file=self.path)

    @property
    def size(self):
        return self._sp.get_piece_size()

    def encode(self, lines):
        """int32 ids of each line, ending with EOS."""
        return [np.asarray(ids + [EOS], np.int32) for ids in self._sp.encode(list(lines))]

    def decode(self, ids):
        """The text of one id sequence, cropped at its first EOS (specials dropped)."""
        ids = [int(i) for i in ids]
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        return self._sp.decode([i for i in ids if i > UNK])

    def pieces(self, ids):
        return [self._sp.id_to_piece(int(i)) for i in ids]


def _train_sentencepiece(lines, vocab_size, prefix):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        bos_id=BOS,
        eos_id=EOS,
        unk_id=UNK,
        pad_id=-1,
        bos_piece="_BOS_",
        eos_piece="_EOS_",
        unk_piece="_UNK_",
        input_sentence_size=2_000_000,  # a sample of this many lines at WMT scale
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


def load_or_train_vocab(lines, vocab_size, cache_dir, tag):
    """The BPE model of `lines` at `vocab_size`, from the cache or trained now (written to a
    temporary name and renamed, so an interrupted run leaves no half model behind)."""
    import sentencepiece as spm

    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    h.update(f"bpe {vocab_size} sentencepiece {spm.__version__}".encode())
    cache = pathlib.Path(os.path.expanduser(cache_dir or "~/.cache/lmjax/subwords"))
    target = cache / f"{tag}_bpe{vocab_size}_{h.hexdigest()[:16]}.model"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            try:
                _train_sentencepiece(lines, vocab_size, os.path.join(tmp, "spm"))
            except RuntimeError as e:  # e.g. a vocabulary larger than the text allows
                raise UserError(f"data.vocab_size={vocab_size} for {tag}: {e}") from None
            os.replace(os.path.join(tmp, "spm.model"), target)
    return SubwordVocab(target)


# -- batches -----------------------------------------------------------------------------------


def bucket_lengths(max_len, smallest=8):
    """Padded lengths: 8, 12, 16, 24, 32, 48, ... (each ~1.5x the last) up to max_len."""
    out, n = [], smallest
    while n < max_len:
        out.append(n)
        n = n + n // 2 if (n & (n - 1)) == 0 else n // 3 * 4  # 8 -> 12 -> 16 -> 24 -> 32
    return tuple(out) + (max_len,)


@dataclasses.dataclass(frozen=True)
class PairBatches:
    """Token-count batches of (source, target) id sequences.

    Attributes:
      src, tgt: per pair, int32 ids ending with EOS (pairs over max_len already dropped).
      batch_len: rows x padded length bound per batch (the reference's `batch_len`).
      max_len: the longest side kept, in subwords with EOS.
      row_multiple: every batch's row count is a multiple of this (devices x processes).
      window: pairs sorted by length together (the reference's `split_len`).
      seed: the shuffles' seed.
      dropped: pairs dropped for length.
    """

    src: tuple
    tgt: tuple
    batch_len: int
    max_len: int
    row_multiple: int = 1
    window: int = 100_000
    seed: int = 42
    dropped: int = 0

    @classmethod
    def build(cls, src, tgt, *, batch_len, max_len, row_multiple=1, window=100_000, seed=42):
        keep = [
            i
            for i, (s, t) in enumerate(zip(src, tgt, strict=True))
            if max(len(s), len(t)) <= max_len
        ]
        if not keep:
            raise UserError(f"data.max_len={max_len}: every sentence pair is longer")
        return cls(
            tuple(src[i] for i in keep), tuple(tgt[i] for i in keep), batch_len, max_len,
            row_multiple, window, seed, len(src) - len(keep),
        )  # fmt: skip

    def __post_init__(self):
        for length in self.buckets:
            if self.rows(length) < self.row_multiple:
                raise UserError(
                    f"data.batch_len={self.batch_len} holds fewer than {self.row_multiple} rows "
                    f"of length {length} (data.max_len={self.max_len})"
                )

    @property
    def buckets(self):
        return bucket_lengths(self.max_len)

    def rows(self, length):
        """The row count of every batch of padded `length`."""
        return self.batch_len // length // self.row_multiple * self.row_multiple

    def _bucket_of(self, n):
        return next(b for b in self.buckets if n <= b)

    def _epoch(self, epoch):
        """The epoch's batches: a list of (bucket length, pair indices)."""
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.src))
        lengths = np.asarray([max(len(s), len(t)) for s, t in zip(self.src, self.tgt, strict=True)])
        batches = []
        for start in range(0, len(order), self.window):
            part = order[start : start + self.window]
            part = part[np.argsort(lengths[part], kind="stable")]
            by_bucket = {}
            for i in part:
                by_bucket.setdefault(self._bucket_of(lengths[i]), []).append(int(i))
            for length, idx in sorted(by_bucket.items()):
                n = self.rows(length)
                batches += [(length, idx[j : j + n]) for j in range(0, len(idx), n)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        object.__setattr__(self, "_cache", (epoch, batches))
        return batches

    def in_order(self):
        """Evaluation batches: every pair once, sorted by length (no shuffle), as
        (pair indices, arrays) in the bucket shapes."""
        lengths = [max(len(s), len(t)) for s, t in zip(self.src, self.tgt, strict=True)]
        order = np.argsort(lengths, kind="stable")
        by_bucket = {}
        for i in order:
            by_bucket.setdefault(self._bucket_of(lengths[i]), []).append(int(i))
        for length, idx in sorted(by_bucket.items()):
            n = self.rows(length)
            for j in range(0, len(idx), n):
                yield idx[j : j + n], self.assemble(length, idx[j : j + n])

    def batches_per_epoch(self, epoch=0):
        return len(self._epoch(epoch))

    def locate(self, step):
        """(epoch, index in the epoch) of training step `step` (epochs back to back)."""
        epoch = 0
        while step >= self.batches_per_epoch(epoch):
            step -= self.batches_per_epoch(epoch)
            epoch += 1
        return epoch, step

    def batch(self, step, process_index=0, process_count=1):
        """This process's rows of training batch `step`, and whether it opens an epoch."""
        epoch, index = self.locate(step)
        length, idx = self._epoch(epoch)[index]
        return self.assemble(length, idx, process_index, process_count), index == 0

    def assemble(self, length, idx, process_index=0, process_count=1):
        """The arrays of pairs `idx` padded to `length` and to the bucket's row count:
        src, tgt [rows, length] (EOS-padded), src_mask, weights (the target mask) float32."""
        rows = self.rows(length)
        src = np.full((rows, length), EOS, np.int32)
        tgt = np.full((rows, length), EOS, np.int32)
        src_mask = np.zeros((rows, length), np.float32)
        weights = np.zeros((rows, length), np.float32)
        for r, i in enumerate(idx):
            s, t = self.src[i], self.tgt[i]
            src[r, : len(s)], tgt[r, : len(t)] = s, t
            src_mask[r, : len(s)], weights[r, : len(t)] = 1.0, 1.0
        local = rows // process_count
        block = slice(process_index * local, (process_index + 1) * local)
        return {
            "src": src[block],
            "tgt": tgt[block],
            "src_mask": src_mask[block],
            "weights": weights[block],
        }

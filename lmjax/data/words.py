"""Word-level tokenisation as in the Transformer-XL data pipeline (the one SRU++ uses).

specs/recurrent.md B8 and specs/attention.md B.7 (kimiyoung/transformer-xl `vocabulary.py`):
  lines   the file is read as text with universal newlines (\\n, \\r\\n, \\r); a final newline
          does not start another line
  tokens  each line is stripped and split on whitespace (Python's str.split()), and `<eos>` is
          appended, so an empty line is a single `<eos>`; case is kept
  vocab   counted on the training split only: `<eos>` is id 0, then every other word by
          descending count (Counter.most_common: ties in first-seen order); no min count
  ids     int32; a word outside the vocabulary maps to `<unk>` when the vocabulary has it (as
          the reference's get_idx), else it is an error

Adaptive-Span's own `data.py` orders the vocabulary differently (`<eos>` counted like any word,
ties in reverse first-seen order); only which of several equally frequent words lands on either
side of a cutoff can differ, so one order serves both.

WikiText-103 under these rules (Merity et al. 2016, Table 1; the counts include one `<eos>` a
line): 103,227,021 / 217,646 / 245,569 tokens and a 267,735-word vocabulary.
"""

import array
import collections

import numpy as np

EOS = "<eos>"
UNK = "<unk>"


class UnknownWordError(ValueError):
    """A word outside the vocabulary, with no `<unk>` to map it to."""


def split_lines(text: str) -> list[str]:
    """Lines as Python's text-mode file iteration gives them (universal newlines)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":  # the newline ends the last line; it does not open one
        lines.pop()
    return lines


def count_words(lines) -> collections.Counter:
    """Word counts over `lines`, in first-seen order (which most_common's ties keep)."""
    counts = collections.Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def build_vocab(counts: collections.Counter) -> tuple[str, ...]:
    """`<eos>` first, then the words by descending count, ties in first-seen order."""
    return (EOS, *(w for w, _ in counts.most_common() if w != EOS))


def encode(lines, vocab: tuple[str, ...]) -> np.ndarray:
    """Token ids [n] int32 of `lines` (words, then `<eos>` per line).

    Raises:
      UnknownWordError: naming the word and its 1-based line, when a word is not in the
        vocabulary and the vocabulary has no `<unk>`.
    """
    index = {w: i for i, w in enumerate(vocab)}
    unk, eos = index.get(UNK), index[EOS]
    ids = array.array("i")  # C int: 4 bytes on every platform numpy and JAX support
    get = index.__getitem__
    for n, line in enumerate(lines, 1):
        words = line.split()
        start = len(ids)
        try:
            ids.extend(map(get, words))  # the fast path: every word known
        except KeyError:
            del ids[start:]  # extend keeps the prefix it appended before the unknown word
            for w in words:
                i = index.get(w, unk)
                if i is None:
                    msg = f"word {w!r} on line {n} is not in the vocabulary"
                    raise UnknownWordError(msg) from None
                ids.append(i)
        ids.append(eos)
    return np.frombuffer(ids, np.int32)


def decode(ids, vocab: tuple[str, ...]) -> str:
    """Text of token ids: words joined by spaces, `<eos>` as a line break."""
    out = []
    for i in ids:
        word = vocab[int(i)]
        out.append("\n" if word == EOS else (word if not out or out[-1] == "\n" else " " + word))
    return "".join(out)

"""Corpora: each split of a dataset as one long token stream, of bytes or of words.

`data.level` picks the tokens. "byte" (the default): the vocabulary is the 256 byte values (the
byte is the token id), so no tokenizer, vocabulary file or preprocessing is involved and bits
per byte are comparable across papers; splits are uint8. "word": whitespace-separated words
with `<eos>` a line and a vocabulary counted on the training split (lmjax/data/words.py);
splits are int32 and `load_vocab` returns the words by id. `load_corpus(config.data)` returns
{"train", "valid", "test"} -> 1-D arrays for:

  stdlib  the Python standard library's own .py sources (no download, nothing shipped).
          ~12 MB on CPython 3.11: train 11.4 MB, valid 0.34 MB, test 0.34 MB. The exact bytes
          depend on the interpreter version that runs it, so numbers are comparable only
          between runs on the same Python version; it exists for smoke tests and tiny configs.
  text    one file per split (data.train_path/valid_path/test_path), as raw bytes or, with
          data.level="word", as words; an empty valid_path holds out the last
          data.valid_fraction of the train file (for words: of its tokens, cut at a line end).
  enwik8  Hutter-prize enwik8 / text8: 90M/5M/5M bytes, prepared once as a tfds array_record
  text8   dataset under data.data_dir (see tfds_builders.py) and read back without TensorFlow.
          data.path is a local copy (raw file or zip); empty means download with checksums.
  wikitext103  word level only: WikiText-103 v1 (267,735 words), tokenised and prepared once as
          a tfds dataset like enwik8; data.path is a local copy (the zip or its directory).

Word-level `text` splits are cached per process (keyed on the files' paths, sizes and
modification times); the wikitext103 ids and vocabulary are stored by its tfds builder.

Every problem a user can fix (unknown name, unreadable file, empty split, bad local copy, no
network) is a one-line `UserError` naming the config field. `check_split` then checks that a
split holds at least one batch of windows and only ids below the model's vocabulary.
"""

import functools
import os
import sysconfig
import zlib

import numpy as np

from lmjax.data import tfds_builders, words
from lmjax.errors import UserError

VOCAB_SIZE = 256  # byte level
SPLITS = ("train", "valid", "test")
DATASETS = ("stdlib", "text", "enwik8", "text8", "wikitext103")
LEVELS = ("byte", "word")
_WORD_ONLY = ("wikitext103",)
_BOTH = ("text",)

# stdlib: directories left out at any depth: third-party code and tests (test/, tests/,
# idlelib/idle_test/, lib2to3/tests/, ...) are not ordinary library code.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
# crc32(relative path) % 100 below these goes to valid / test; 2% each gives ~340 KB apiece.
_STDLIB_VALID_PCT = 2
_STDLIB_TEST_PCT = 4


def level(data_cfg) -> str:
    """data.level, checked against what data.name offers: "byte" or "word"."""
    name, lvl = data_cfg.name, data_cfg.get("level", "byte")
    if lvl not in LEVELS:
        raise UserError(f"data.level={lvl!r} is not a level; known: {', '.join(LEVELS)}")
    offered = LEVELS if name in _BOTH else ("word",) if name in _WORD_ONLY else ("byte",)
    if name in DATASETS and lvl not in offered:
        raise UserError(
            f"data.level={lvl!r} is not available for data.name={name!r} "
            f"(it offers {', '.join(offered)})"
        )
    return lvl


def load_corpus(data_cfg) -> dict[str, np.ndarray]:
    """Loads the dataset named by data_cfg.name as {"train", "valid", "test"} -> [n] token ids
    (uint8 at byte level, int32 at word level)."""
    name = data_cfg.name
    if name not in DATASETS:
        raise UserError(f"data.name={name!r} is not a known dataset; known: {', '.join(DATASETS)}")
    word = level(data_cfg) == "word"
    if name == "stdlib":
        splits = stdlib_splits()
    elif name == "text":
        splits = _text_word_corpus(data_cfg)[0] if word else _text_splits(data_cfg)
    elif name == "wikitext103":
        splits = _wikitext_splits(data_cfg)
    else:
        splits = _hutter_splits(name, data_cfg)
    for split in SPLITS:
        if splits[split].size == 0:
            raise UserError(f"data.name={name!r}: the {split} split is empty")
    return splits


def load_vocab(data_cfg) -> tuple[str, ...] | None:
    """The words by token id at word level (from the prepared or cached corpus); None for bytes."""
    if level(data_cfg) == "byte":
        return None
    if data_cfg.name == "text":
        return _text_word_corpus(data_cfg)[1]
    builder = _wikitext_builder(data_cfg)
    _prepare("wikitext103", builder)
    return tuple(builder.info.metadata["vocab"])


def vocab_size(data_cfg) -> int:
    """The number of token ids the data can hold: 256 bytes, or the word vocabulary's size."""
    vocab = load_vocab(data_cfg)
    return VOCAB_SIZE if vocab is None else len(vocab)


def check_vocab_size(data_cfg, model_vocab_size: int):
    """At word level the model's vocabulary must be the data's exactly (the softmax normalises
    over it, and adaptive cutoffs follow its frequency order): a UserError naming both."""
    if level(data_cfg) == "word":
        n = vocab_size(data_cfg)
        if model_vocab_size != n:
            raise UserError(
                f"model.vocab_size={model_vocab_size} but the data.name={data_cfg.name!r} "
                f"word vocabulary has {n:,} words; set --config.model.vocab_size={n}"
            )


def check_split(name: str, tokens: np.ndarray, *, batch_size: int, seq_len: int, vocab_size: int):
    """Raises UserError unless `tokens` fill one [batch_size, seq_len] window and fit the vocab.

    The stream is cut into batch_size contiguous rows of L = (n - 1) // batch_size inputs each
    (see lm.LMStream); one full window needs L >= seq_len, i.e. n >= batch_size * seq_len + 1
    tokens (each row reads seq_len inputs plus the next token as its last target).
    """
    need = batch_size * seq_len + 1
    if len(tokens) < need:
        raise UserError(
            f"the {name} split has {len(tokens):,} tokens, but batch_size={batch_size} rows of "
            f"seq_len={seq_len} need at least {need:,} (batch_size * seq_len + 1); use a larger "
            f"corpus or a smaller batch/window"
        )
    top = int(tokens.max())
    if top >= vocab_size:
        hint = f"byte corpora need vocab_size={VOCAB_SIZE}" if tokens.dtype == np.uint8 else ""
        raise UserError(
            f"the {name} split contains token id {top}, but the model's vocab_size is "
            f"{vocab_size}" + (f"; {hint}" if hint else "")
        )


# ---------------------------------------------------------------------------------------------
# stdlib


def stdlib_files() -> tuple[str, list[tuple[str, str]]]:
    """The stdlib directory and its .py files as (posix relative path, split), sorted by path.

    A file goes to valid, test or train by a stable hash of its relative path, so the split
    does not depend on the file system's listing order and adding a file never moves another.
    """
    root = sysconfig.get_paths()["stdlib"]
    rel = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
        rel_dir = os.path.relpath(dirpath, root)
        rel += [os.path.normpath(os.path.join(rel_dir, f)) for f in filenames if f.endswith(".py")]
    # posix-style relative paths, so sorting and hashing agree across platforms
    rel = sorted(path.replace(os.sep, "/") for path in rel)
    files = []
    for path in rel:
        bucket = zlib.crc32(path.encode()) % 100
        if bucket < _STDLIB_VALID_PCT:
            files.append((path, "valid"))
        elif bucket < _STDLIB_TEST_PCT:
            files.append((path, "test"))
        else:
            files.append((path, "train"))
    return root, files


@functools.lru_cache(maxsize=1)
def stdlib_splits() -> dict[str, np.ndarray]:
    """Each split's stdlib files concatenated in path order (cached once per process)."""
    root, files = stdlib_files()
    if not files:
        raise UserError(f"data.name='stdlib': no .py files under {root} (a stripped Python?)")
    parts = {split: [] for split in SPLITS}
    for path, split in files:
        with open(os.path.join(root, path), "rb") as f:
            parts[split].append(f.read())
    # frombuffer over bytes is read-only, which the cache needs: every caller shares the arrays
    return {s: np.frombuffer(b"".join(parts[s]), np.uint8) for s in SPLITS}


# ---------------------------------------------------------------------------------------------
# text


def _read_bytes(field: str, path: str) -> np.ndarray:
    if not path:
        raise UserError(f"data.{field} is empty; data.name='text' needs a file for it")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            tokens = np.frombuffer(f.read(), np.uint8)
    except OSError as e:
        raise UserError(f"data.{field}: cannot read {path} ({e.strerror or e})") from e
    if tokens.size == 0:
        raise UserError(f"data.{field}: {path} is empty")
    return tokens


def _text_splits(data_cfg) -> dict[str, np.ndarray]:
    train = _read_bytes("train_path", data_cfg.train_path)
    test = _read_bytes("test_path", data_cfg.test_path)
    if data_cfg.valid_path:
        valid = _read_bytes("valid_path", data_cfg.valid_path)
    else:
        fraction = data_cfg.valid_fraction
        if not 0.0 < fraction < 1.0:
            raise UserError(
                f"data.valid_fraction={fraction} must be in (0, 1) when data.valid_path is empty"
            )
        cut = len(train) - int(round(len(train) * fraction))
        if cut == len(train):
            raise UserError(
                f"data.valid_fraction={fraction} of the {len(train)}-byte data.train_path "
                f"holds out no bytes; set data.valid_path or a larger fraction"
            )
        train, valid = train[:cut], train[cut:]
    return {"train": train, "valid": valid, "test": test}


def _read_lines(field: str, path: str) -> list[str]:
    raw = _read_bytes(field, path).tobytes()
    try:
        return words.split_lines(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(
            f"data.{field}: {path} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e


def _stamp(path: str):
    """What the word-level cache keys a file by: path, size and modification time."""
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, None, None)  # reading it reports the error


def _text_word_corpus(data_cfg) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    paths = (data_cfg.train_path, data_cfg.valid_path, data_cfg.test_path)
    stamps = tuple(_stamp(p) if p else None for p in paths)
    return _text_words(stamps, float(data_cfg.valid_fraction))


@functools.lru_cache(maxsize=4)
def _text_words(stamps, valid_fraction):
    """(splits, vocab) of the `text` files at word level; one entry per set of file versions."""
    fields = ("train_path", "valid_path", "test_path")
    paths = {f: s[0] if s else "" for f, s in zip(fields, stamps, strict=True)}
    train = _read_lines("train_path", paths["train_path"])
    test = _read_lines("test_path", paths["test_path"])
    if paths["valid_path"]:
        valid = _read_lines("valid_path", paths["valid_path"])
    else:
        if not 0.0 < valid_fraction < 1.0:
            raise UserError(
                f"data.valid_fraction={valid_fraction} must be in (0, 1) when data.valid_path "
                f"is empty"
            )
        # Hold out the last lines holding valid_fraction of the tokens (one <eos> a line).
        sizes = np.cumsum([len(line.split()) + 1 for line in train])
        keep = sizes[-1] - int(round(sizes[-1] * valid_fraction))
        cut = int(np.searchsorted(sizes, keep, side="left")) + 1
        if cut >= len(train):
            raise UserError(
                f"data.valid_fraction={valid_fraction} of the {len(train)}-line "
                f"data.train_path holds out no line; set data.valid_path or a larger fraction"
            )
        train, valid = train[:cut], train[cut:]
    vocab = words.build_vocab(words.count_words(train))
    splits = {}
    for split, lines in (("train", train), ("valid", valid), ("test", test)):
        try:
            ids = words.encode(lines, vocab)
        except words.UnknownWordError as e:
            field = (
                "train_path" if split == "valid" and not paths["valid_path"] else f"{split}_path"
            )
            raise UserError(
                f"data.{field}: {e} of the training split, which has no {words.UNK} to map it to"
            ) from e
        ids.flags.writeable = False  # cached: every caller shares the arrays
        splits[split] = ids
    return splits, vocab


# ---------------------------------------------------------------------------------------------
# enwik8 / text8 / wikitext103


def _prepare(name, builder):
    """download_and_prepare (a no-op once prepared), with the one-line errors."""
    if name == "wikitext103":
        what = "wikitext-103-v1.zip (or the unzipped wikitext-103 directory)"
    else:
        what = f"{name}.zip (or the unzipped {name})"
    try:
        # A no-op when a previous run prepared it; the source is only read to prepare.
        builder.download_and_prepare(download_config=tfds_builders.DOWNLOAD_CONFIG)
    except tfds_builders.DownloadError as e:
        raise UserError(
            f"{name}: {e}; download it elsewhere and pass --config.data.path=/path/to/{what}"
        ) from e
    except tfds_builders.SourceError as e:
        raise UserError(f"data.path: {e}") from e


def _wikitext_builder(data_cfg):
    path = os.path.expanduser(data_cfg.path) if data_cfg.path else ""
    if path and not os.path.exists(path):
        raise UserError(f"data.path: cannot read {path} (no such file or directory)")
    return tfds_builders.WikiText103(
        data_dir=os.path.expanduser(data_cfg.data_dir) or None,
        file_format="array_record",
        source_path=path,
    )


def _wikitext_splits(data_cfg) -> dict[str, np.ndarray]:
    builder = _wikitext_builder(data_cfg)
    _prepare("wikitext103", builder)
    tfds_split = {"train": "train", "valid": "validation", "test": "test"}
    return {
        split: tfds_builders.read_split(builder, tfds_split[split], "ids", np.int32)
        for split in SPLITS
    }


def _hutter_splits(name: str, data_cfg) -> dict[str, np.ndarray]:
    builder_cls = tfds_builders.BUILDERS[name]
    path = os.path.expanduser(data_cfg.path) if data_cfg.path else ""
    if path and not os.path.isfile(path):
        raise UserError(f"data.path: cannot read {path} (no such file) for data.name={name!r}")
    builder = builder_cls(
        data_dir=os.path.expanduser(data_cfg.data_dir) or None,
        file_format="array_record",
        source_path=path,
    )
    _prepare(name, builder)
    tfds_split = {"train": "train", "valid": "validation", "test": "test"}
    return {split: tfds_builders.read_split(builder, tfds_split[split]) for split in SPLITS}

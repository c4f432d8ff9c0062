"""Byte-level corpora: each split of a dataset as one long uint8 token stream.

The vocabulary is the 256 byte values (the byte is the token id), so no tokenizer, vocabulary
file or preprocessing is involved and bits per byte are comparable across papers.
`load_corpus(config.data)` returns {"train", "valid", "test"} -> 1-D uint8 arrays for:

  stdlib  the Python standard library's own .py sources (no download, nothing shipped).
          ~12 MB on CPython 3.11: train 11.4 MB, valid 0.34 MB, test 0.34 MB. The exact bytes
          depend on the interpreter version that runs it, so numbers are comparable only
          between runs on the same Python version; it exists for smoke tests and tiny configs.
  text    one file per split (data.train_path/valid_path/test_path), read as raw bytes; an
          empty valid_path holds out the last data.valid_fraction of the train file.
  enwik8  Hutter-prize enwik8 / text8: 90M/5M/5M bytes, prepared once as a tfds array_record
  text8   dataset under data.data_dir (see tfds_builders.py) and read back without TensorFlow.
          data.path is a local copy (raw file or zip); empty means download with checksums.

Every problem a user can fix (unknown name, unreadable file, empty split, bad local copy, no
network) is a one-line `UserError` naming the config field. `check_split` then checks that a
split holds at least one batch of windows and only ids below the model's vocabulary.
"""

import functools
import os
import sysconfig
import zlib

import numpy as np

from lmjax.data import tfds_builders
from lmjax.errors import UserError

VOCAB_SIZE = 256
SPLITS = ("train", "valid", "test")
DATASETS = ("stdlib", "text", "enwik8", "text8")

# stdlib: directories left out at any depth: third-party code and tests (test/, tests/,
# idlelib/idle_test/, lib2to3/tests/, ...) are not ordinary library code.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
# crc32(relative path) % 100 below these goes to valid / test; 2% each gives ~340 KB apiece.
_STDLIB_VALID_PCT = 2
_STDLIB_TEST_PCT = 4


def load_corpus(data_cfg) -> dict[str, np.ndarray]:
    """Loads the dataset named by data_cfg.name as {"train", "valid", "test"} -> uint8 [n]."""
    name = data_cfg.name
    if name == "stdlib":
        splits = stdlib_splits()
    elif name == "text":
        splits = _text_splits(data_cfg)
    elif name in tfds_builders.BUILDERS:
        splits = _hutter_splits(name, data_cfg)
    else:
        raise UserError(f"data.name={name!r} is not a known dataset; known: {', '.join(DATASETS)}")
    for split in SPLITS:
        if splits[split].size == 0:
            raise UserError(f"data.name={name!r}: the {split} split is empty")
    return splits


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
        raise UserError(
            f"the {name} split contains token id {top}, but the model's vocab_size is "
            f"{vocab_size}; byte corpora need vocab_size={VOCAB_SIZE}"
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


# ---------------------------------------------------------------------------------------------
# enwik8 / text8


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
    try:
        # A no-op when a previous run prepared it; the source is only read to prepare.
        builder.download_and_prepare(download_config=tfds_builders.DOWNLOAD_CONFIG)
    except tfds_builders.DownloadError as e:
        raise UserError(
            f"{name}: {e}; download it elsewhere and pass --config.data.path=/path/to/{name}.zip "
            f"(or the unzipped {name})"
        ) from e
    except tfds_builders.SourceError as e:
        raise UserError(f"data.path: {e}") from e
    tfds_split = {"train": "train", "valid": "validation", "test": "test"}
    return {split: tfds_builders.read_split(builder, tfds_split[split]) for split in SPLITS}

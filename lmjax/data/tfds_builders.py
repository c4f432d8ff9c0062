"""tensorflow-datasets builders for the Hutter-prize byte corpora enwik8 and text8.

Both corpora are one 10^8-byte file inside a zip on mattmahoney.net, split by position into
90M/5M/5M bytes (train/validation/test), the split every character-level paper reports on.
The builders store each split as fixed-size byte chunks in order, written as array_record so
that they are prepared once and read back without TensorFlow (which is never installed):

    builder = Enwik8(data_dir=..., file_format="array_record", source_path="")
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    train = read_split(builder, "train")  # [90_000_000] uint8

`source_path` is a local copy (the raw file or the zip as distributed); when it is empty the
builder downloads the zip into tfds' download directory. Every source is checked against the
published size and sha256 of the raw file, so a local copy, a re-zipped copy and a download all
prepare the same bytes. A failed download or check raises `SourceError` inside
`download_and_prepare`; tfds then deletes its incomplete directory, so nothing half-prepared is
left that a later run could mistake for a prepared dataset.

Checksums (the constants below; each value agrees across several independent public sources):
  enwik8.zip   36,445,475 B, sha256 547994d9..: huggingface/datasets,
               datasets/enwik8/dataset_infos.json ("download_checksums").
  enwik8      100,000,000 B: Mahoney's table on mattmahoney.net/dc/text.html (md5 a1fa5ffd..,
               sha1 57b8363b..), quoted in gluon-nlp's
               data/corpora/large_text_compression_benchmark.py; sha256 2b49720e.. is published
               next to that md5 in many benchmark repositories.
  text8.zip    31,344,016 B: TensorFlow's word2vec tutorial (`maybe_download(.., 31344016)`);
               sha256 a6640522.. pinned in several word2vec/character-LM repositories.
  text8       100,000,000 B, sha256 6e890197.. (same repositories; gluon-nlp gives sha1 0dc3edeb..).
The raw-file check is what guarantees the bytes; the zip check only rejects a bad download early.
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# Prepared datasets are never fetched from GCS (that check itself needs the network).
DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)
DOWNLOAD_TIMEOUT_S = 30  # per connect / per stalled read, so an unreachable host fails fast


class SourceError(Exception):
    """A local copy or download that is missing, malformed or fails its size/checksum check."""


class DownloadError(SourceError):
    """The canonical address could not be fetched (no network, HTTP error, truncated file)."""


class _HutterBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: one 10^8-byte file, split by position, stored as ordered byte chunks.

    Subclasses set the source constants. Tests shrink RAW_SIZE/SPLIT_SIZES/CHUNK_SIZE and the
    checksums (monkeypatching the class attributes) to prepare a few-KB fake corpus.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "90M/5M/5M byte split as 1 MiB chunks in order."}
    URL: str
    MEMBER: str  # the file name inside the zip
    ZIP_SIZE: int
    ZIP_SHA256: str
    RAW_SIZE = 100_000_000
    RAW_SHA256: str
    SPLIT_SIZES = {"train": 90_000_000, "validation": 5_000_000, "test": 5_000_000}
    CHUNK_SIZE = 1 << 20
    # tfds 4.9.10 derives code_path for builders inside a package through `importlib_resources`,
    # which it only installs on Python < 3.9 (ModuleNotFoundError). The path only locates an
    # optional checksums.tsv, which these builders do not use.
    code_path = epath.Path(__file__)

    def __init__(self, *, source_path: str = "", **kwargs):
        self.source_path = os.fspath(source_path)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo(builder=self) directly: dataset_info_from_configs() wants package metadata.
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.MEMBER}: {self.RAW_SIZE:,} bytes split 90/5/5 by position.",
            features=tfds.features.FeaturesDict(
                {"bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8)}
            ),
            homepage="http://mattmahoney.net/dc/textdata.html",
            # Keys are chunk indices; with shuffling disabled tfds writes them sorted by key,
            # so record i of a split is its i-th chunk.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        path = self.source_path or download(type(self), dl_manager.download_dir)
        raw = read_source(type(self), path)
        generators, start = {}, 0
        for split, size in self.SPLIT_SIZES.items():
            generators[split] = self._generate_examples(raw, start, start + size)
            start += size
        return generators

    def _generate_examples(self, raw: bytes, start: int, stop: int):
        for i, lo in enumerate(range(start, stop, self.CHUNK_SIZE)):
            hi = min(lo + self.CHUNK_SIZE, stop)
            yield i, {"bytes": np.frombuffer(raw, np.uint8, hi - lo, lo)}


class Enwik8(_HutterBuilder, skip_registration=True):
    """The first 10^8 bytes of the 2006-03-03 English Wikipedia XML dump (Hutter prize)."""

    name = "enwik8"
    URL = "http://mattmahoney.net/dc/enwik8.zip"
    MEMBER = "enwik8"
    ZIP_SIZE = 36_445_475
    ZIP_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
    RAW_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"


class Text8(_HutterBuilder, skip_registration=True):
    """enwik9 cleaned to lower-case a-z and space, first 10^8 characters (Mahoney)."""

    name = "text8"
    URL = "http://mattmahoney.net/dc/text8.zip"
    MEMBER = "text8"
    ZIP_SIZE = 31_344_016
    ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
    RAW_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"


BUILDERS = {"enwik8": Enwik8, "text8": Text8}


def read_source(cls: type[_HutterBuilder], path: str) -> bytes:
    """The verified raw corpus from a local raw file or zip (as distributed, or re-zipped)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if cls.MEMBER not in zf.namelist():
                    raise SourceError(f"{path} is a zip without a member named {cls.MEMBER!r}")
                raw = zf.read(cls.MEMBER)
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, zipfile.BadZipFile) as e:
        raise SourceError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from e
    if len(raw) != cls.RAW_SIZE:
        raise SourceError(
            f"{path} holds {len(raw):,} bytes of {cls.MEMBER}, expected {cls.RAW_SIZE:,}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != cls.RAW_SHA256:
        raise SourceError(
            f"{path}: sha256 of {cls.MEMBER} is {digest}, expected the published {cls.RAW_SHA256}"
        )
    return raw


def download(cls: type[_HutterBuilder], download_dir) -> str:
    """Fetches cls.URL into download_dir (reusing a verified earlier download); returns the path.

    The file is written as `<name>.part` and renamed only after its size and sha256 match, so
    an interrupted or corrupted download never looks complete.
    """
    os.makedirs(download_dir, exist_ok=True)
    dest = os.path.join(os.fspath(download_dir), os.path.basename(cls.URL))
    if os.path.exists(dest) and _file_digest(dest) == (cls.ZIP_SIZE, cls.ZIP_SHA256):
        return dest
    part = dest + ".part"
    try:
        try:
            with urllib.request.urlopen(cls.URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                with open(part, "wb") as out:
                    while block := resp.read(1 << 20):
                        out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"could not download {cls.URL} ({reason})") from e
        size, digest = _file_digest(part)
        if size != cls.ZIP_SIZE or digest != cls.ZIP_SHA256:
            raise DownloadError(
                f"could not download {cls.URL} (got {size:,} bytes with sha256 {digest}, "
                f"expected {cls.ZIP_SIZE:,} bytes with sha256 {cls.ZIP_SHA256})"
            )
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.remove(part)
    return dest


def _file_digest(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
    """A prepared split as one uint8 array: its records concatenated in index (= chunk) order."""
    source = builder.as_data_source(split=split)
    chunks = [np.asarray(source[i]["bytes"], np.uint8) for i in range(len(source))]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)

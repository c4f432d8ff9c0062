"""tensorflow-datasets builders: the Hutter-prize byte corpora enwik8 and text8, and
WikiText-103 at word level.

enwik8 and text8 are one 10^8-byte file inside a zip on mattmahoney.net, split by position into
90M/5M/5M bytes (train/validation/test), the split every character-level paper reports on.
WikiText-103 (Merity et al. 2016) is three tokenised files, `wiki.{train,valid,test}.tokens`,
in a zip on Salesforce's S3; the builder tokenises them as the Transformer-XL pipeline does
(lmjax/data/words.py) and stores token ids plus the vocabulary.
The builders store each split as fixed-size chunks in order, written as array_record so that
they are prepared once and read back without TensorFlow (which is never installed):

    builder = Enwik8(data_dir=..., file_format="array_record", source_path="")
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    train = read_split(builder, "train")  # [90_000_000] uint8

`source_path` is a local copy (the raw file or the zip as distributed; for WikiText-103 the zip
or the unzipped directory); when it is empty the builder downloads the zip into tfds' download
directory. A failed download or check raises `SourceError` inside `download_and_prepare`; tfds
then deletes its incomplete directory, so nothing half-prepared is left that a later run could
mistake for a prepared dataset.

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
  wikitext-103-v1.zip  190,229,076 B, sha256 242ba0f2..: huggingface/datasets,
               datasets/wikitext/dataset_infos.json ("download_checksums"); torchtext's
               datasets/wikitext103.py pins md5 9ddaacaf6af0710eda8c456decff7832 and 1,801,350 /
               3,760 / 4,358 lines. Its token counts with one <eos> a line, 103,227,021 /
               217,646 / 245,569, and the 267,735-word vocabulary are the WikiText paper's
               (Merity et al. 2016, Table 1) and Transformer-XL's n_token.
The raw-file check is what guarantees the bytes of enwik8/text8; for WikiText-103, whose files
have no published digests, the line and token counts of every split and the vocabulary size are
checked instead. The zip checks only reject a bad download early.
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

from lmjax.data import words

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


class WikiText103(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """WikiText-103 v1 (tokenised, with <unk>) as int32 token ids; the vocabulary is metadata.

    Tests shrink the count and checksum constants (monkeypatching the class attributes) to
    prepare a few-line fake corpus.
    """

    name = "wikitext103"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Transformer-XL tokenisation: <eos> a line, vocabulary by count."}
    URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
    ZIP_SIZE = 190_229_076
    ZIP_SHA256 = "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590"
    FILES = {
        "train": "wiki.train.tokens",
        "validation": "wiki.valid.tokens",
        "test": "wiki.test.tokens",
    }
    NUM_LINES = {"train": 1_801_350, "validation": 3_760, "test": 4_358}
    NUM_TOKENS = {"train": 103_227_021, "validation": 217_646, "test": 245_569}
    VOCAB_SIZE = 267_735
    CHUNK_SIZE = 1 << 20  # tokens per record
    code_path = epath.Path(__file__)  # see _HutterBuilder

    def __init__(self, *, source_path: str = "", **kwargs):
        self.source_path = os.fspath(source_path)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="WikiText-103 v1: token ids, <eos> a line; metadata['vocab'] by count.",
            features=tfds.features.FeaturesDict(
                {"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}
            ),
            homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
            disable_shuffling=True,  # record i of a split is its i-th chunk
            metadata=tfds.core.MetadataDict(),  # written next to the records, read back with them
        )

    def _split_generators(self, dl_manager):
        path = self.source_path or download(type(self), dl_manager.download_dir)
        lines = {
            split: words.split_lines(text)
            for split, text in read_wikitext(type(self), path).items()
        }
        for split, want in self.NUM_LINES.items():
            if len(lines[split]) != want:
                raise SourceError(
                    f"{path}: {self.FILES[split]} has {len(lines[split]):,} lines, "
                    f"expected {want:,}"
                )
        vocab = words.build_vocab(words.count_words(lines["train"]))
        if len(vocab) != self.VOCAB_SIZE:
            raise SourceError(
                f"{path}: the training split has {len(vocab):,} distinct words with <eos>, "
                f"expected {self.VOCAB_SIZE:,}"
            )
        generators = {}
        for split, want in self.NUM_TOKENS.items():
            try:
                ids = words.encode(lines.pop(split), vocab)  # pop: free each text once encoded
            except words.UnknownWordError as e:
                raise SourceError(f"{path}: {self.FILES[split]}: {e}") from e
            if len(ids) != want:
                raise SourceError(
                    f"{path}: {self.FILES[split]} has {len(ids):,} tokens with <eos>, "
                    f"expected {want:,}"
                )
            generators[split] = self._generate_examples(ids)
        self.info.metadata["vocab"] = list(vocab)
        return generators

    def _generate_examples(self, ids: np.ndarray):
        for i, lo in enumerate(range(0, len(ids), self.CHUNK_SIZE)):
            yield i, {"ids": ids[lo : lo + self.CHUNK_SIZE]}


def read_wikitext(cls: type[WikiText103], path: str) -> dict[str, str]:
    """The three token files' text from a zip (any folder inside) or a directory holding them
    (directly or in a `wikitext-103/` subdirectory)."""
    texts = {}
    try:
        if os.path.isdir(path):
            folder = path
            if not os.path.exists(os.path.join(folder, cls.FILES["train"])):
                folder = os.path.join(path, "wikitext-103")
            for split, name in cls.FILES.items():
                member = os.path.join(folder, name)
                if not os.path.isfile(member):
                    raise SourceError(f"{path} is a directory without {name}")
                with open(member, "rb") as f:
                    texts[split] = f.read()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                by_name = {os.path.basename(n): n for n in zf.namelist()}
                for split, name in cls.FILES.items():
                    if name not in by_name:
                        raise SourceError(f"{path} is a zip without a member named {name!r}")
                    texts[split] = zf.read(by_name[name])
        else:
            raise SourceError(f"{path} is neither a zip nor a directory of wiki.*.tokens files")
    except (OSError, zipfile.BadZipFile) as e:
        raise SourceError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from e
    try:
        return {split: raw.decode("utf-8") for split, raw in texts.items()}
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: a token file is not UTF-8 ({e})") from e


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


def download(cls, download_dir) -> str:
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


def read_split(
    builder: tfds.core.DatasetBuilder, split: str, feature: str = "bytes", dtype=np.uint8
) -> np.ndarray:
    """A prepared split as one array: its records concatenated in index (= chunk) order."""
    source = builder.as_data_source(split=split)
    chunks = [np.asarray(source[i][feature], dtype) for i in range(len(source))]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)

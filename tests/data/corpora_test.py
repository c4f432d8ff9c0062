"""Tests for lmjax/data/corpora.py and tfds_builders.py: every dataset, every user error.

enwik8/text8 are prepared from a few-KB fake corpus by shrinking the builder's size, split
and checksum constants; downloads are faked by replacing urlopen, so nothing touches the network.
"""

import hashlib
import io
import os
import pathlib
import re
import urllib.error
import zipfile

import ml_collections
import numpy as np
import pytest

from configs import common
from lmjax.data import corpora, lm, tfds_builders
from lmjax.errors import UserError

# ../shared/data relative to the repository root: read-only real corpora, absent on some machines
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _cfg(**overrides):
    cfg = ml_collections.ConfigDict(common.base_config().data.to_dict())
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------------------
# stdlib


def test_stdlib_splits_are_disjoint_by_file_and_deterministic():
    root, files = corpora.stdlib_files()
    paths = [p for p, _ in files]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)  # each file in one split
    for p in paths:
        parts = set(p.split("/")[:-1])
        assert not parts & {"test", "tests", "idle_test", "site-packages", "dist-packages"}, p
    splits = corpora.load_corpus(_cfg(name="stdlib"))
    for split in corpora.SPLITS:
        expected = b"".join(pathlib.Path(root, p).read_bytes() for p, s in files if s == split)
        assert splits[split].dtype == np.uint8 and splits[split].ndim == 1
        assert splits[split].tobytes() == expected
    # ~12 MB on CPython 3.11; bounds loose enough for other versions
    assert splits["train"].size > 5_000_000
    assert splits["valid"].size > 100_000 and splits["test"].size > 100_000
    corpora.stdlib_splits.cache_clear()
    again = corpora.load_corpus(_cfg(name="stdlib"))
    for split in corpora.SPLITS:
        np.testing.assert_array_equal(again[split], splits[split])


# ---------------------------------------------------------------------------------------------
# text


def test_text_reads_each_split_file(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        s: rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for s, n in [("train", 1000), ("valid", 300), ("test", 200)]
    }
    cfg = _cfg(name="text", **{f"{s}_path": _write(tmp_path / s, d) for s, d in data.items()})
    splits = corpora.load_corpus(cfg)
    assert {s: splits[s].tobytes() for s in corpora.SPLITS} == data


def test_text_holds_out_the_end_of_train_as_valid(tmp_path):
    train = bytes(range(256)) * 4  # 1024 bytes
    cfg = _cfg(
        name="text",
        train_path=_write(tmp_path / "train", train),
        test_path=_write(tmp_path / "test", b"t" * 50),
        valid_fraction=0.25,
    )
    splits = corpora.load_corpus(cfg)
    assert splits["train"].tobytes() == train[:768]
    assert splits["valid"].tobytes() == train[768:]
    assert splits["test"].tobytes() == b"t" * 50


def test_text_errors_name_the_field_and_path(tmp_path):
    ok = _write(tmp_path / "ok", b"abc" * 10)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(UserError, match=f"data.train_path: cannot read {re.escape(missing)}"):
        corpora.load_corpus(_cfg(name="text", train_path=missing, test_path=ok))
    a_dir = str(tmp_path)  # a directory cannot be read as a file
    with pytest.raises(UserError, match=f"data.valid_path: cannot read {re.escape(a_dir)}"):
        corpora.load_corpus(_cfg(name="text", train_path=ok, valid_path=a_dir, test_path=ok))
    with pytest.raises(UserError, match="data.test_path is empty"):
        corpora.load_corpus(_cfg(name="text", train_path=ok))
    with pytest.raises(UserError, match="data.valid_fraction=1.5"):
        corpora.load_corpus(_cfg(name="text", train_path=ok, test_path=ok, valid_fraction=1.5))
    empty = _write(tmp_path / "empty", b"")
    with pytest.raises(UserError, match=f"data.valid_path: {re.escape(empty)} is empty"):
        corpora.load_corpus(_cfg(name="text", train_path=ok, valid_path=empty, test_path=ok))
    with pytest.raises(UserError, match="data.valid_fraction=0.01 of the 30-byte .* no bytes"):
        corpora.load_corpus(_cfg(name="text", train_path=ok, test_path=ok, valid_fraction=0.01))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UserError, match="data.name='wt103' is not a known dataset.*stdlib.*text8"):
        corpora.load_corpus(_cfg(name="wt103"))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (shared corpora) is absent")
def test_wikitext2_files_through_the_text_dataset():
    wt2 = SHARED_DATA / "wikitext-2"
    cfg = _cfg(name="text", train_path=str(wt2 / "valid.txt"), test_path=str(wt2 / "test.txt"))
    splits = corpora.load_corpus(cfg)
    assert splits["train"].size + splits["valid"].size == (wt2 / "valid.txt").stat().st_size
    assert splits["test"].size == (wt2 / "test.txt").stat().st_size
    held_out = splits["valid"].size / (wt2 / "valid.txt").stat().st_size
    assert abs(held_out - cfg.valid_fraction) < 1e-6
    assert splits["test"][:3].tobytes() == (wt2 / "test.txt").read_bytes()[:3]
    for split, tokens in splits.items():
        corpora.check_split(split, tokens, batch_size=8, seq_len=256, vocab_size=256)
    stream = lm.LMStream(splits["test"], 8, 256)
    assert stream.num_targets == 8 * ((splits["test"].size - 1) // 8)


# ---------------------------------------------------------------------------------------------
# enwik8 / text8 from a fake 3,000-byte corpus

RAW = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
SIZES = {"train": 2700, "validation": 150, "test": 150}


def _zip(member: str, data: bytes = RAW) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
    return buf.getvalue()


@pytest.fixture(params=["enwik8", "text8"])
def fake(request, monkeypatch, tmp_path):
    """A shrunken builder (3,000 bytes in 256-byte records) and a config with a fresh data_dir."""
    name = request.param
    cls = tfds_builders.BUILDERS[name]
    zipped = _zip(cls.MEMBER)
    for attr, value in dict(
        RAW_SIZE=len(RAW),
        SPLIT_SIZES=SIZES,
        CHUNK_SIZE=256,
        RAW_SHA256=hashlib.sha256(RAW).hexdigest(),
        ZIP_SIZE=len(zipped),
        ZIP_SHA256=hashlib.sha256(zipped).hexdigest(),
    ).items():
        monkeypatch.setattr(cls, attr, value)

    def no_network(url, timeout=None):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", no_network)
    return name, zipped, _cfg(name=name, data_dir=str(tmp_path / "tfds"))


def _expect_fake_splits(splits):
    assert splits["train"].tobytes() == RAW[:2700]
    assert splits["valid"].tobytes() == RAW[2700:2850]
    assert splits["test"].tobytes() == RAW[2850:]


def test_hutter_from_local_raw_file(fake, tmp_path):
    name, _, cfg = fake
    cfg.path = _write(tmp_path / name, RAW)
    _expect_fake_splits(corpora.load_corpus(cfg))
    # prepared once: the next load reads the array_record files, even without the source
    os.remove(cfg.path)
    cfg.path = ""
    _expect_fake_splits(corpora.load_corpus(cfg))
    builder = tfds_builders.BUILDERS[name](data_dir=cfg.data_dir, file_format="array_record")
    assert len(builder.as_data_source(split="train")) == 11  # ceil(2700 / 256) ordered records


def test_hutter_from_local_zip(fake, tmp_path):
    name, zipped, cfg = fake
    cfg.path = _write(tmp_path / f"{name}.zip", zipped)
    _expect_fake_splits(corpora.load_corpus(cfg))


def test_hutter_bad_local_copies(fake, tmp_path):
    name, _, cfg = fake
    cases = {
        "short": (RAW[:-1], "holds 2,999 bytes"),
        "changed": (RAW[:-1] + bytes([RAW[-1] ^ 1]), "sha256 of"),
        "wrong.zip": (_zip("other"), "zip without a member"),
        "changed.zip": (_zip(tfds_builders.BUILDERS[name].MEMBER, RAW[::-1]), "sha256 of"),
    }
    for file_name, (data, message) in cases.items():
        cfg.path = _write(tmp_path / file_name, data)
        with pytest.raises(UserError, match=f"^data.path: {re.escape(cfg.path)}.*{message}") as e:
            corpora.load_corpus(cfg)
        assert "\n" not in str(e.value)
    cfg.path = str(tmp_path / "absent.zip")
    with pytest.raises(UserError, match=f"data.path: cannot read {re.escape(cfg.path)}"):
        corpora.load_corpus(cfg)
    # nothing half-prepared was left behind: a good copy still prepares
    cfg.path = _write(tmp_path / name, RAW)
    _expect_fake_splits(corpora.load_corpus(cfg))


def test_hutter_download_failure_says_how_to_pass_a_local_copy(fake, monkeypatch):
    name, _, cfg = fake

    def offline(url, timeout=None):
        assert timeout == tfds_builders.DOWNLOAD_TIMEOUT_S
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", offline)
    url = f"http://mattmahoney.net/dc/{name}.zip"
    with pytest.raises(UserError) as e:
        corpora.load_corpus(cfg)
    assert str(e.value) == (
        f"{name}: could not download {url} (Name or service not known); download it elsewhere "
        f"and pass --config.data.path=/path/to/{name}.zip (or the unzipped {name})"
    )
    builder = tfds_builders.BUILDERS[name](data_dir=cfg.data_dir)
    assert not builder.is_prepared()
    assert not list(pathlib.Path(cfg.data_dir).rglob("*.part"))


def test_hutter_download_is_checked_and_reused(fake, monkeypatch):
    name, zipped, cfg = fake
    served = []

    def serve(data):
        def urlopen(url, timeout=None):
            served.append(url)
            return io.BytesIO(data)

        monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", urlopen)

    serve(zipped[:-10])  # a truncated transfer fails its size/checksum check
    with pytest.raises(UserError, match=f"{name}: could not download .*got {len(zipped) - 10:,}"):
        corpora.load_corpus(cfg)
    assert not list(pathlib.Path(cfg.data_dir).rglob(f"{name}.zip*"))
    serve(zipped)
    _expect_fake_splits(corpora.load_corpus(cfg))
    _expect_fake_splits(corpora.load_corpus(cfg))  # prepared: no second download
    assert served == [f"http://mattmahoney.net/dc/{name}.zip"] * 2

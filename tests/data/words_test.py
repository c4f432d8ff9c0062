"""Word-level data: the Transformer-XL tokenisation rules, `text` at word level (and on the
shared WikiText-2 files), and the WikiText-103 builder prepared from a few-line fake zip with
shrunken counts and checksums (downloads faked; nothing touches the network)."""

import hashlib
import io
import pathlib
import re
import urllib.error
import zipfile

import ml_collections
import numpy as np
import pytest

from configs import common
from lmjax.data import corpora, tfds_builders, words
from lmjax.errors import UserError

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _cfg(**overrides):
    cfg = ml_collections.ConfigDict(common.base_config().data.to_dict())
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_tokenisation_rules():
    # universal newlines; a blank line is one <eos>; the final newline opens no line
    lines = words.split_lines("b a\r\n\n  c a  b\rd\n")
    assert lines == ["b a", "", "  c a  b", "d"]
    vocab = words.build_vocab(words.count_words(lines))
    # <eos> first; then by count (a, b: 2 each, b seen first), then c, d (1 each, first-seen)
    assert vocab == ("<eos>", "b", "a", "c", "d")
    ids = words.encode(lines, vocab)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [1, 2, 0, 0, 3, 2, 1, 0, 4, 0])
    assert words.decode(ids, vocab) == "b a\n\nc a b\nd\n"
    with pytest.raises(words.UnknownWordError, match="word 'zz' on line 2 is not in the vocab"):
        words.encode(["a", "b zz a"], vocab)
    with_unk = (*vocab, "<unk>")
    np.testing.assert_array_equal(words.encode(["a zz b"], with_unk), [2, 5, 1, 0])


def _text(tmp_path, train, test, valid=None, **kw):
    paths = {}
    for name, text in (("train", train), ("test", test), ("valid", valid)):
        if text is not None:
            (tmp_path / f"{name}.txt").write_text(text)
            paths[f"{name}_path"] = str(tmp_path / f"{name}.txt")
    return _cfg(name="text", level="word", **paths, **kw)


def test_text_word_level(tmp_path):
    cfg = _text(tmp_path, "x y x\n\nz x\n", "y q\n", valid="z y\n")
    with pytest.raises(UserError, match="data.test_path: word 'q' on line 1 .*no <unk>"):
        corpora.load_corpus(cfg)
    cfg = _text(tmp_path, "x y x\n<unk>\nz x\n", "y <unk> q\n", valid="z y\n")
    splits = corpora.load_corpus(cfg)
    vocab = corpora.load_vocab(cfg)
    assert vocab == ("<eos>", "x", "y", "<unk>", "z")
    assert all(splits[s].dtype == np.int32 for s in corpora.SPLITS)
    np.testing.assert_array_equal(splits["train"], [1, 2, 1, 0, 3, 0, 4, 1, 0])
    np.testing.assert_array_equal(splits["valid"], [4, 2, 0])
    np.testing.assert_array_equal(splits["test"], [2, 3, 3, 0])  # q -> <unk>
    assert corpora.vocab_size(cfg) == 5
    assert corpora.load_corpus(cfg)["train"] is splits["train"]  # cached
    corpora.check_vocab_size(cfg, 5)
    with pytest.raises(UserError, match="model.vocab_size=256 but .* has 5 words.*size=5"):
        corpora.check_vocab_size(cfg, 256)
    # A changed file is read again.
    (tmp_path / "valid.txt").write_text("z z z y\n")
    np.testing.assert_array_equal(corpora.load_corpus(cfg)["valid"], [4, 4, 4, 2, 0])


def test_text_word_level_holds_out_whole_lines(tmp_path):
    train = "".join(f"w{i % 5} w{(i + 1) % 5}\n" for i in range(10))  # 30 tokens with <eos>
    cfg = _text(tmp_path, train, "w1\n", valid_fraction=0.25)
    splits = corpora.load_corpus(cfg)
    vocab = corpora.load_vocab(cfg)
    # 30 - round(7.5) = 22 tokens to keep: the first 8 lines (24 tokens) train, 2 lines valid
    assert splits["train"].size == 24 and splits["valid"].size == 6
    assert words.decode(splits["valid"], vocab) == "w3 w4\nw4 w0\n"
    with pytest.raises(UserError, match="valid_fraction=0.01 of the 10-line .* no line"):
        corpora.load_corpus(_text(tmp_path, train, "w1\n", valid_fraction=0.01))


def test_levels_follow_the_dataset(tmp_path):
    with pytest.raises(UserError, match="data.level='word' is not available for .*'stdlib'"):
        corpora.load_corpus(_cfg(name="stdlib", level="word"))
    with pytest.raises(UserError, match="data.level='byte' is not available for .*wikitext103"):
        corpora.load_corpus(_cfg(name="wikitext103"))
    with pytest.raises(UserError, match="data.level='char' is not a level"):
        corpora.load_corpus(_cfg(name="text", level="char"))
    assert corpora.vocab_size(_cfg(name="stdlib")) == 256 and corpora.load_vocab(_cfg()) is None
    corpora.check_vocab_size(_cfg(name="stdlib"), 300)  # byte level: only ids are checked


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (shared corpora) is absent")
def test_wikitext2_word_level_through_the_text_dataset():
    wt2 = SHARED_DATA / "wikitext-2"
    cfg = _cfg(
        name="text",
        level="word",
        train_path=str(wt2 / "valid.txt"),
        test_path=str(wt2 / "test.txt"),
    )
    splits = corpora.load_corpus(cfg)
    vocab = corpora.load_vocab(cfg)
    # WikiText's published counts (with one <eos> a line): valid 217,646, test 245,569 tokens.
    assert splits["train"].size + splits["valid"].size == 217_646
    assert splits["test"].size == 245_569
    assert abs(splits["valid"].size / 217_646 - cfg.valid_fraction) < 0.01
    assert vocab[0] == "<eos>" and vocab[1] == "the" and "<unk>" in vocab
    assert corpora.vocab_size(cfg) == len(vocab) == int(splits["train"].max()) + 1
    counts = np.bincount(splits["train"], minlength=len(vocab))
    assert (np.diff(counts[1:]) <= 0).all()  # descending frequency after <eos>
    assert words.decode(splits["test"][:6], vocab) == "\n= Robert <unk> =\n"


# ---------------------------------------------------------------------------------------------
# wikitext103 from a fake zip

FAKE = {
    "train": " = A = \n\n the cat sat on the mat . \n a dog <unk> . \n",
    "validation": " the dog sat . \n",
    "test": "\n a cat <unk> \n",
}
# "=", "the", "." twice each (ties in first-seen order), then the words seen once, in order
FAKE_VOCAB = ("<eos>", "=", "the", ".", "A", "cat", "sat", "on", "mat", "a", "dog", "<unk>")
FAKE_TOKENS = {"train": 18, "validation": 5, "test": 5}


def _zip(texts=FAKE, folder="wikitext-103/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, text in texts.items():
            zf.writestr(folder + tfds_builders.WikiText103.FILES[split], text)
    return buf.getvalue()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    cls = tfds_builders.WikiText103
    zipped = _zip()
    for attr, value in dict(
        NUM_LINES={s: len(words.split_lines(t)) for s, t in FAKE.items()},
        NUM_TOKENS=FAKE_TOKENS,
        VOCAB_SIZE=len(FAKE_VOCAB),
        CHUNK_SIZE=4,
        ZIP_SIZE=len(zipped),
        ZIP_SHA256=hashlib.sha256(zipped).hexdigest(),
    ).items():
        monkeypatch.setattr(cls, attr, value)

    def no_network(url, timeout=None):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", no_network)
    return zipped, _cfg(name="wikitext103", level="word", data_dir=str(tmp_path / "tfds"))


def _expect_fake(cfg):
    splits = corpora.load_corpus(cfg)
    vocab = corpora.load_vocab(cfg)
    assert vocab == FAKE_VOCAB and corpora.vocab_size(cfg) == len(FAKE_VOCAB)
    assert {s: a.dtype for s, a in splits.items()} == dict.fromkeys(corpora.SPLITS, np.int32)
    assert (
        words.decode(splits["train"], vocab) == "= A =\n\nthe cat sat on the mat .\na dog <unk> .\n"
    )
    assert words.decode(splits["valid"], vocab) == "the dog sat .\n"
    assert words.decode(splits["test"], vocab) == "\na cat <unk>\n"


def test_wikitext103_from_local_zip_and_directory(fake, tmp_path):
    zipped, cfg = fake
    (tmp_path / "wt.zip").write_bytes(zipped)
    cfg.path = str(tmp_path / "wt.zip")
    _expect_fake(cfg)
    # prepared once: read back without the source, 4-token records in order
    (tmp_path / "wt.zip").unlink()
    cfg.path = ""
    _expect_fake(cfg)
    builder = tfds_builders.WikiText103(data_dir=cfg.data_dir, file_format="array_record")
    assert len(builder.as_data_source(split="train")) == 5  # ceil(18 / 4)
    # an unzipped directory (with or without the wikitext-103/ level)
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        zf.extractall(tmp_path / "unzipped")
    for path in (tmp_path / "unzipped", tmp_path / "unzipped" / "wikitext-103"):
        _expect_fake(_cfg(**{**cfg.to_dict(), "path": str(path), "data_dir": str(path) + "_t"}))


def test_wikitext103_bad_copies(fake, tmp_path):
    _, cfg = fake
    cases = {
        "missing.zip": (_zip({"train": FAKE["train"]}), "without a member named 'wiki.valid"),
        "lines.zip": (_zip({**FAKE, "test": "x\n" + FAKE["test"]}), "wiki.test.tokens has 3 lines"),
        "vocab.zip": (
            _zip({**FAKE, "train": FAKE["train"].replace(" mat ", " mat rug ")}),
            "has 13 distinct words",
        ),
        "plain.txt": (b"not a zip", "neither a zip nor a directory"),
    }
    cases["tokens.zip"] = (
        _zip({**FAKE, "train": FAKE["train"].replace(" mat ", " mat mat ")}),
        "wiki.train.tokens has 19 tokens",
    )
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        cfg.path = str(tmp_path / name)
        with pytest.raises(UserError, match=f"^data.path: {re.escape(cfg.path)}.*{message}") as e:
            corpora.load_corpus(cfg)
        assert "\n" not in str(e.value)
    cfg.path = str(tmp_path / "absent")
    with pytest.raises(UserError, match="data.path: cannot read .*absent"):
        corpora.load_corpus(cfg)


def test_wikitext103_download_failure_and_checked_download(fake, monkeypatch):
    zipped, cfg = fake

    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", offline)
    url = tfds_builders.WikiText103.URL
    with pytest.raises(UserError) as e:
        corpora.load_corpus(cfg)
    assert str(e.value) == (
        f"wikitext103: could not download {url} (Name or service not known); download it "
        f"elsewhere and pass --config.data.path=/path/to/wikitext-103-v1.zip (or the unzipped "
        f"wikitext-103 directory)"
    )
    served = []

    def serve(url, timeout=None):
        served.append(url)
        return io.BytesIO(zipped)

    monkeypatch.setattr(tfds_builders.urllib.request, "urlopen", serve)
    _expect_fake(cfg)
    _expect_fake(cfg)
    assert served == [url]

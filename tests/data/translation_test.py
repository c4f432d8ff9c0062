"""Translation data: pair files, Multi30k paths, sentencepiece subwords, token-count batches."""

import gzip
import os
import pathlib

import numpy as np
import pytest

from lmjax.data import translation as tr
from lmjax.errors import UserError

MULTI30K = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"


def _corpus(n=400, seed=0):
    """Toy parallel text: numbers in words, English and a 'German' of swapped word forms."""
    rng = np.random.default_rng(seed)
    en_words = "one two three four five six seven eight nine ten red blue cat dog sees".split()
    de = dict(zip(en_words, "eins zwei drei vier fünf sechs sieben acht neun zehn rot blau "
                  "Katze Hund sieht".split(), strict=True))  # fmt: skip
    src, tgt = [], []
    for _ in range(n):
        words = list(rng.choice(en_words, rng.integers(1, 12)))
        src.append(" ".join(words).capitalize() + ".")
        tgt.append(" ".join(de[w] for w in words).capitalize() + ".")
    return src, tgt


def _write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def test_read_pairs_checks_alignment(tmp_path):
    a = _write(tmp_path / "a.en.gz", ["x", "y", "z"], gz=True)
    b = _write(tmp_path / "b.de", ["x", "y"])
    with pytest.raises(UserError, match=r"a\.en\.gz has 3 lines but .*b\.de has 2"):
        tr.read_pairs(a, b)
    empty = _write(tmp_path / "e.de", [])
    with pytest.raises(UserError, match="empty"):
        tr.read_pairs(empty, empty)
    with pytest.raises(UserError, match="data.train_src: no file"):
        tr.read_lines(tmp_path / "missing", "data.train_src")
    assert tr.read_pairs(a, _write(tmp_path / "c.de", ["1", "2", "3"])) == (
        ["x", "y", "z"], ["1", "2", "3"])  # fmt: skip


def test_multi30k_paths_either_direction(tmp_path):
    import ml_collections

    for stem in ("train", "val", "test_2016_flickr"):
        for lang in ("en", "de"):
            _write(tmp_path / f"{stem}.{lang}.gz", ["a"], gz=True)
    cfg = ml_collections.ConfigDict(
        dict(name="multi30k", path=str(tmp_path), src_lang="de", tgt_lang="en")
    )
    src, tgt, _ = tr.pair_paths(cfg, "test")
    assert src.endswith("test_2016_flickr.de.gz") and tgt.endswith("test_2016_flickr.en.gz")
    cfg.src_lang, cfg.tgt_lang = "en", "de"
    assert tr.pair_paths(cfg, "valid")[0].endswith("val.en.gz")
    cfg.tgt_lang = "fr"
    with pytest.raises(
        UserError, match=r"data.tgt_lang='fr': no val.fr\[.gz\] .*languages there: de, en"
    ):
        tr.pair_paths(cfg, "valid")


@pytest.mark.skipif(not MULTI30K.is_dir(), reason="needs ../shared/data/multi30k")
def test_real_multi30k_splits():
    import ml_collections

    cfg = ml_collections.ConfigDict(
        dict(name="multi30k", path=str(MULTI30K), src_lang="en", tgt_lang="de")
    )
    sizes = {s: len(tr.read_pairs(*tr.pair_paths(cfg, s))[0]) for s in tr.SPLITS}
    assert sizes == {"train": 29000, "valid": 1014, "test": 1000}


def test_subwords_round_trip_and_cache(tmp_path):
    src, _ = _corpus()
    vocab = tr.load_or_train_vocab(src, 60, tmp_path, "en")
    assert vocab.size == 60 and vocab.pieces([0, 1, 2]) == ["_BOS_", "_EOS_", "_UNK_"]
    ids = vocab.encode(src[:20])
    assert all(x[-1] == tr.EOS and tr.EOS not in x[:-1] and tr.BOS not in x for x in ids)
    assert [vocab.decode(x) for x in ids] == src[:20]  # exact detokenisation
    assert vocab.decode(np.concatenate([ids[0], ids[1]])) == src[0]  # cropped at EOS
    mtime = os.stat(vocab.path).st_mtime_ns
    again = tr.load_or_train_vocab(src, 60, tmp_path, "en")  # from the cache
    assert again.path == vocab.path and os.stat(again.path).st_mtime_ns == mtime
    assert tr.load_or_train_vocab(src[:-1], 60, tmp_path, "en").path != vocab.path
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p)
        for p in {vocab.path, tr.load_or_train_vocab(src[:-1], 60, tmp_path, "en").path}
    )  # no temporary left behind
    with pytest.raises(UserError, match="data.vocab_size=100000 for en"):
        tr.load_or_train_vocab(src, 100_000, tmp_path, "en")


def test_token_count_batches(tmp_path):
    src, tgt = _corpus(600)
    vocab = tr.load_or_train_vocab(src + tgt, 80, tmp_path, "joint")
    s, t = vocab.encode(src), vocab.encode(tgt)
    batches = tr.PairBatches.build(s, t, batch_len=256, max_len=30, row_multiple=2, window=200)
    assert batches.dropped == sum(max(len(a), len(b)) > 30 for a, b in zip(s, t, strict=True))
    n = batches.batches_per_epoch(0)
    seen, shapes = [], set()
    for step in range(n):
        b, first = batches.batch(step)
        assert first == (step == 0)
        rows, length = b["src"].shape
        shapes.add((rows, length))
        assert rows * length <= 256 and rows % 2 == 0 and length in batches.buckets
        for r in range(rows):
            if b["weights"][r].sum():
                ls, lt = int(b["src_mask"][r].sum()), int(b["weights"][r].sum())
                seen.append((tuple(b["src"][r, :ls]), tuple(b["tgt"][r, :lt])))
                assert b["src"][r, ls - 1] == tr.EOS and np.all(b["src"][r, ls:] == tr.EOS)
    kept = sorted((tuple(a), tuple(b)) for a, b in zip(batches.src, batches.tgt, strict=True))
    assert sorted(seen) == kept  # every kept pair exactly once per epoch
    assert len(shapes) <= len(batches.buckets)
    # A pure function of the step, also across epochs; processes split the rows.
    fresh = tr.PairBatches.build(s, t, batch_len=256, max_len=30, row_multiple=2, window=200)
    for step in (0, n - 1, n, n + 5):
        a, b = batches.batch(step)[0], fresh.batch(step)[0]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        halves = [batches.batch(step, p, 2)[0] for p in (0, 1)]
        np.testing.assert_array_equal(np.concatenate([h["tgt"] for h in halves]), a["tgt"])
    assert fresh.batch(n)[1] and not np.array_equal(
        fresh.batch(n)[0]["src"], fresh.batch(0)[0]["src"]
    )
    with pytest.raises(UserError, match="data.max_len=1: every sentence pair is longer"):
        tr.PairBatches.build(s, t, batch_len=256, max_len=1)
    with pytest.raises(UserError, match="data.batch_len=40 holds fewer than 2 rows of length 24"):
        tr.PairBatches.build(s, t, batch_len=40, max_len=30, row_multiple=2)


def test_bucket_lengths():
    assert tr.bucket_lengths(100) == (8, 12, 16, 24, 32, 48, 64, 96, 100)
    assert tr.bucket_lengths(8) == (8,)

"""Tests for lmjax/data/lm.py: contiguous rows, shifted targets, padding, processes, cycling."""

import itertools

import numpy as np
import pytest

from lmjax.data import corpora, lm
from lmjax.errors import UserError

# n = 1003 tokens, B = 4 rows -> L = 250 inputs per row; T = 16 -> 15 full windows + one of 10.
N, B, T = 1003, 4, 16
L = (N - 1) // B


def _tokens(n=N):
    return np.arange(n, dtype=np.int64) + 1000  # distinct values show exactly where a token is


def test_sizes():
    s = lm.LMStream(_tokens(), B, T)
    assert (s.row_len, s.num_windows, s.num_train_windows) == (250, 16, 15)
    assert s.num_targets == B * L


def test_rows_are_contiguous_history_and_targets_are_next_tokens():
    tokens = _tokens()
    s = lm.LMStream(tokens, B, T)
    windows = [s.window(i) for i in range(s.num_windows)]
    for w in windows:
        assert w["inputs"].dtype == np.int32 and w["targets"].dtype == np.int32
        assert w["weights"].dtype == np.float32 and w["inputs"].shape == (B, T)
    for r in range(B):
        mask = np.concatenate([w["weights"][r] for w in windows]) > 0
        inputs = np.concatenate([w["inputs"][r] for w in windows])[mask]
        targets = np.concatenate([w["targets"][r] for w in windows])[mask]
        # row r is the r-th contiguous 1/B of the stream, read window after window
        np.testing.assert_array_equal(inputs, tokens[r * L : r * L + L])
        np.testing.assert_array_equal(targets, tokens[r * L + 1 : r * L + L + 1])
    for w, nxt in itertools.pairwise(windows):
        np.testing.assert_array_equal(w["targets"][:, :-1], w["inputs"][:, 1:])
        # the last target of a window is the first input of the next one: the carry's history
        np.testing.assert_array_equal(w["targets"][:, -1], nxt["inputs"][:, 0])


def test_padded_last_window_counts_every_target_once():
    s = lm.LMStream(_tokens(), B, T)
    total = sum(s.window(i)["weights"].sum() for i in range(s.num_windows))
    assert total == s.num_targets == B * L
    last = s.window(s.num_windows - 1)
    width = L - (s.num_windows - 1) * T  # 10
    assert (last["weights"][:, :width] == 1).all() and (last["weights"][:, width:] == 0).all()
    assert (last["inputs"][:, width:] == 0).all() and (last["targets"][:, width:] == 0).all()
    for i in range(s.num_train_windows):
        assert (s.window(i)["weights"] == 1).all()
    with pytest.raises(IndexError):
        s.window(s.num_windows)


def test_uint8_bytes_keep_their_values():
    tokens = np.arange(N, dtype=np.int64).astype(np.uint8)  # wraps, includes bytes >= 128
    w = lm.LMStream(tokens, B, T).window(9)  # row 0 reads tokens 144..159
    np.testing.assert_array_equal(w["inputs"][0], np.arange(144, 160))
    np.testing.assert_array_equal(w["inputs"][1], tokens[L + 9 * T : L + 10 * T])


def test_processes_get_contiguous_halves_of_the_global_batch():
    tokens = _tokens()
    full = lm.LMStream(tokens, B, T)
    halves = [lm.LMStream(tokens, B, T, process_index=p, process_count=2) for p in range(2)]
    assert [h.local_rows for h in halves] == [(0, 2), (2, 4)]
    for i in (0, 7, full.num_windows - 1):
        for key in ("inputs", "targets", "weights"):
            joined = np.concatenate([h.window(i)[key] for h in halves])
            np.testing.assert_array_equal(joined, full.window(i)[key])
    assert all(h.num_windows == full.num_windows for h in halves)
    with pytest.raises(UserError, match="batch_size=4 does not divide into 3 processes"):
        lm.LMStream(tokens, B, T, process_index=0, process_count=3)


def test_train_window_cycles_full_windows_and_flags_new_passes():
    s = lm.LMStream(_tokens(), B, T)
    n = s.num_train_windows
    for step in range(2 * n + 3):
        batch, reset = s.train_window(step)
        assert reset == (step % n == 0)
        expected = s.window(step % n)
        for key in batch:
            np.testing.assert_array_equal(batch[key], expected[key])
        assert (batch["weights"] == 1).all()  # never the padded last window
    # a pure function of the step: resuming at step k gives the batch of an unbroken run
    again, _ = s.train_window(n + 4)
    np.testing.assert_array_equal(again["inputs"], s.train_window(n + 4)[0]["inputs"])


def test_too_short_split_is_caught_by_check_split():
    kwargs = dict(batch_size=B, seq_len=T, vocab_size=256)
    need = B * T + 1
    corpora.check_split("valid", np.zeros(need, np.uint8), **kwargs)  # exactly enough
    s = lm.LMStream(np.zeros(need, np.uint8), B, T)
    assert (s.num_train_windows, s.num_windows) == (1, 1)
    with pytest.raises(UserError, match=rf"the valid split has {need - 1} tokens.*at least {need}"):
        corpora.check_split("valid", np.zeros(need - 1, np.uint8), **kwargs)
    short = lm.LMStream(np.zeros(need - 1, np.uint8), B, T)  # eval still works: one partial
    assert (short.num_train_windows, short.num_windows) == (0, 1)
    with pytest.raises(UserError, match="no full window"):
        short.train_window(0)
    with pytest.raises(UserError, match="too few"):
        lm.LMStream(np.zeros(B, np.uint8), B, T)


def test_check_split_rejects_ids_outside_the_vocabulary():
    tokens = np.full(100, 65, np.uint8)
    tokens[50] = 200
    with pytest.raises(UserError, match="the train split contains token id 200.*vocab_size is 128"):
        corpora.check_split("train", tokens, batch_size=2, seq_len=8, vocab_size=128)
    corpora.check_split("train", tokens, batch_size=2, seq_len=8, vocab_size=256)

"""Decoding: greedy equals argmax over teacher forcing on its own output; beam search equals a
plain-Python beam search written from specs/attention.md C.6 on a tiny random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import decoding
from lmjax.data.translation import EOS
from lmjax.models import story_of_heads as soh

SMALL = dict(src_vocab_size=9, tgt_vocab_size=7, d_model=16, num_heads=2, d_ff=16, num_layers=1)


def _setup(seed=0):
    model = soh.StoryOfHeads(soh.StoryOfHeadsConfig(**SMALL, dropout_rate=0.0))
    rng = np.random.default_rng(seed)
    src = rng.integers(3, 9, (3, 5)).astype(np.int32)
    mask = (np.arange(5)[None] < np.array([5, 3, 4])[:, None]).astype(np.float32)
    src = np.where(mask > 0, src, EOS)
    params = model.init(jax.random.PRNGKey(seed), src, mask, src[:, :4] % 7, train=False)["params"]
    # Sharper, less uniform distributions than at init, so hypotheses differ.
    params = jax.tree.map(lambda x: x * 2.5, params)
    return model, params, jnp.asarray(src), jnp.asarray(mask)


def _logp_fn(model, params, src, mask):
    enc, _ = model.apply({"params": params}, src, mask, train=False, method="encode")

    def logp(row, prefix):
        tgt = jnp.asarray([list(prefix) + [EOS]], jnp.int32)
        logits, _ = model.apply(
            {"params": params}, tgt, enc[row : row + 1], mask[row : row + 1], train=False,
            method="decode",
        )  # fmt: skip
        return np.asarray(jax.nn.log_softmax(logits[0, len(prefix)]), np.float64)

    return logp


def _python_beam(logp, inp_len, k=4, alpha=0.6, spread=3.0):
    min_len, max_len = inp_len // 4 - 1, 2 * inp_len + 3
    live = [((), 0.0)]
    best, best_score, fallback, fallback_score = None, -np.inf, None, -np.inf
    n = 0
    while live:
        n += 1
        cands = [(h + (w,), s + lp) for h, s in live for w, lp in enumerate(logp(h))]
        cands = sorted(cands, key=lambda c: -c[1])[:k]
        pen = (1 + n / 6) ** alpha
        for h, s in cands:
            if h[-1] == EOS and n >= min_len and s / pen > best_score:
                best, best_score = h, s / pen
            if h[-1] != EOS and n == max_len and s / pen > fallback_score:
                fallback, fallback_score = h, s / pen
        live = [
            (h, s) for h, s in cands
            if h[-1] != EOS and n < max_len and s / pen + spread >= best_score
        ]  # fmt: skip
    return (best, best_score) if best is not None else (fallback, fallback_score)


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_equals_python_reference(seed):
    model, params, src, mask = _setup(seed)
    tokens, scores = decoding.beam_search(model, params, src, mask)
    logp = _logp_fn(model, params, src, mask)
    for row in range(src.shape[0]):
        want, score = _python_beam(lambda h, r=row: logp(r, h), int(mask[row].sum()))
        got = [int(x) for x in tokens[row]]
        assert got[: len(want)] == list(want) and all(x == EOS for x in got[len(want) :])
        assert float(scores[row]) == pytest.approx(score, rel=1e-4, abs=1e-4)


def test_greedy_is_argmax_of_its_own_teacher_forcing():
    model, params, src, mask = _setup(2)
    out = np.asarray(decoding.greedy(model, params, src, mask))
    logp = _logp_fn(model, params, src, mask)
    min_len, max_len = (np.asarray(x) for x in decoding.length_limits(mask))
    for row in range(src.shape[0]):
        prefix = []
        while len(prefix) < max_len[row]:
            lp = logp(row, prefix)
            if len(prefix) < min_len[row]:
                lp[EOS] = -np.inf
            prefix.append(int(np.argmax(lp)))
            if prefix[-1] == EOS:
                break
        assert list(out[row, : len(prefix)]) == prefix


@pytest.mark.parametrize("gated", [False, True])
def test_incremental_decoding_equals_the_full_forward(gated):
    """decode_step over a teacher-forced target, position by position through the K/V cache,
    gives the logits of one `decode` pass (with eval gates where the model is gated)."""
    heads = ("dec-self", "dec-enc") if gated else ()
    cfg = soh.StoryOfHeadsConfig(**{**SMALL, "num_layers": 2}, concrete_heads=heads)
    model = soh.StoryOfHeads(cfg)
    rng = np.random.default_rng(3)
    src = jnp.asarray(rng.integers(3, 9, (2, 5)), jnp.int32)
    mask = jnp.asarray((np.arange(5)[None] < np.array([[5], [3]])).astype(np.float32))
    tgt = jnp.asarray(rng.integers(0, 7, (2, 6)), jnp.int32)
    variables = model.init(jax.random.PRNGKey(1), src, mask, tgt, train=False)
    enc, _ = model.apply(variables, src, mask, train=False, method="encode")
    want, _ = model.apply(variables, tgt, enc, mask, train=False, method="decode")
    cache = model.apply(variables, enc, 9, method="init_cache")  # longer than the target
    prev = jnp.zeros((2,), jnp.int32)
    for i in range(tgt.shape[1]):
        step, cache = model.apply(variables, prev, i, cache, mask, method="decode_step")
        np.testing.assert_allclose(step, want[:, i], rtol=1e-5, atol=1e-5)
        prev = tgt[:, i]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_is_greedy(seed):
    """Sources of at most 7 tokens (EOS included) have min_len <= 0, so C.6's early-EOS rule,
    the one difference between beam 1 and greedy, does not bind."""
    model, params, src, mask = _setup(seed)
    assert int(jnp.max(decoding.length_limits(mask)[0])) <= 0
    greedy = np.asarray(decoding.greedy(model, params, src, mask))
    beam, _ = decoding.beam_search(model, params, src, mask, beam_size=1)
    np.testing.assert_array_equal(np.asarray(beam), greedy)

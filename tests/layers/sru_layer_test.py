"""layers/sru.py: the SRU layer equals Lei et al. 2018 eq. 1-2 run as a float64 numpy loop.

(Not `sru_test.py`: pytest needs unique basenames and tests/models/sru_test.py has it.)
"""

import jax
import numpy as np
import pytest

from lmjax.layers import sru


def _numpy_sru_layer(p, x, c0, hidden, bidirectional, scale_x):
    """Lei et al. 2018 eq. 1-2 per timestep and direction, float64 (the reference loop)."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    x = np.asarray(x, np.float64)
    b, t, d_in = x.shape
    n_dir = 2 if bidirectional else 1
    n = hidden * n_dir
    k = 3 if d_in == n else 4
    u = (x @ np.asarray(p["weight"], np.float64)).reshape(b, t, n_dir, hidden, k)
    v = np.asarray(p["weight_c"], np.float64).reshape(2, n_dir, hidden)
    bias = np.asarray(p["bias"], np.float64).reshape(2, n_dir, hidden)
    h = np.zeros((b, t, n_dir, hidden))
    c_last = np.zeros((b, n_dir, hidden))
    for di in range(n_dir):
        c = np.asarray(c0, np.float64).reshape(b, n_dir, hidden)[:, di]
        for s in reversed(range(t)) if di else range(t):
            uu = u[:, s, di]
            f = sig(uu[..., 1] + v[0, di] * c + bias[0, di])
            r = sig(uu[..., 2] + v[1, di] * c + bias[1, di])
            c = f * c + (1 - f) * uu[..., 0]
            skip = uu[..., 3] if k == 4 else x[:, s].reshape(b, n_dir, hidden)[:, di] * scale_x
            h[:, s, di] = r * c + (1 - r) * skip
        c_last[:, di] = c
    return h.reshape(b, t, n), c_last.reshape(b, n)


@pytest.mark.parametrize("impl", ["sequential", "associative"])
@pytest.mark.parametrize(
    "bidirectional,d_in,rescale", [(False, 8, True), (True, 8, False), (True, 5, False)]
)
def test_sru_layer_equals_reference_loop(impl, bidirectional, d_in, rescale):
    hidden = 4 if bidirectional else 8
    layer = sru.SRULayer(hidden, bidirectional=bidirectional, rescale=rescale, highway_bias=-1.0,
                         scan_impl=impl)  # fmt: skip
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, d_in))
    c0 = jax.random.normal(jax.random.PRNGKey(1), (3, 8))
    params = _perturbed_params_layer(layer, x, c0)
    h, c = layer.apply({"params": params}, x, c0, train=False)
    want_h, want_c = _numpy_sru_layer(params, x, c0, hidden, bidirectional,
                                      sru.scale_x(rescale, -1.0))  # fmt: skip
    np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-5)


def _perturbed_params_layer(layer, x, c0):
    params = layer.init(jax.random.PRNGKey(2), x, c0, train=False)["params"]
    return jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params
    )

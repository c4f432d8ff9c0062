"""Adaptive input embeddings and the projected adaptive softmax, with weight tying.

Papers: Grave et al. 2017, "Efficient softmax approximation for GPUs" (arXiv 1609.04309);
Baevski & Auli 2019, "Adaptive Input Representations for Neural Language Modeling" (arXiv
1809.10853); the projected, tied form of Transformer-XL (Dai et al. 2019, arXiv 1901.02860,
`ProjectedAdaptiveLogSoftmax`). Two references use it on WikiText-103 and this layer covers
both (specs/recurrent.md B4, specs/attention.md A.5):

  SRU++ `train_wt103.py`  tables and projections tied, emb_dropout inside both directions, no
                          input scaling, cluster logits as extra rows of the head table.
  Adaptive-Span           `adaptive_io.py`: input scaled by √d, cluster logits from a separate
                          `cluster_proj` (weight and bias), no dropout inside, tied with
                          `--adapt-io-tied`, PyTorch default initialisation.
  lmtool-fwms (B.7)       Transformer-XL's layer at div_val 1 with d_proj = d_embed: one table
                          in row slices, input scaled by √d, tied, *no* projections
                          (`projections=False`), N(0, 0.02) tables and cluster weight, biases 0.

Shape legend: b batch, t time, d d_model (the reference's d_proj), v vocab, c tail clusters,
n the size of one cluster, e the embedding width of one cluster.

The vocabulary (ids sorted by descending frequency) is cut at `cutoffs` into clusters
[l_i, l_{i+1}), l_0 = 0, l_{c+1} = v. Cluster i has a table E_i [n_i, e_i], e_i =
d_embed // div_val**i, and a projection P_i [d, e_i]:

  input       x(w) = scale · Drop(E_i[w − l_i]) P_iᵀ                  (w in cluster i)
  head        logits over [l_0, l_1) ∪ {c cluster logits}: Drop(h P_0) [E_0; C]ᵀ + [b_0; b_C]
  tail i ≥ 1  log p(w) = log p_head(column n_0 + c − i)
                         + log_softmax(Drop(h P_i) E_iᵀ + b_i)[w − l_i]

The cluster logits are in reverse order (head column −i belongs to tail cluster i), as in
Transformer-XL and both references. Tying shares E_i (and P_i) between input and output; the
output biases and C are never tied. Both references put a projection on every cluster, the
head included, so this layer always does.

`nll` gives per-token NLL for given targets with static shapes: every token's log-normaliser
is computed for the head and for every tail (the references gather the tokens of each cluster,
a dynamic shape), but in chunks of time steps under `jax.checkpoint`, so no [b, t, n] logits
bigger than `max_chunk_logits` elements exist at once, in the forward or the backward pass.
The extra compute is the tails' share of the softmax (about 0.8x the head at the wt103 sizes).
`log_probs` materialises the full [b, t, v] distribution, for generation and tests.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.layers import core


def cluster_bounds(vocab_size, cutoffs):
    """[0, l_1, ..., l_c, v] for strictly increasing cutoffs inside (0, v)."""
    bounds = (0, *cutoffs, vocab_size)
    if any(lo >= hi for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError(f"cutoffs {cutoffs} must increase strictly inside (0, {vocab_size})")
    return bounds


def cluster_widths(d_embed, div_val, num_clusters):
    """e_i = d_embed // div_val**i, as `int(d_embed // div_val ** i)` in the references."""
    widths = tuple(int(d_embed // div_val**i) for i in range(num_clusters))
    if min(widths) < 1:
        raise ValueError(f"d_embed={d_embed} // div_val={div_val}**i leaves a cluster width 0")
    return widths


def _logsumexp_chunked(z, w, bias, budget):
    """logsumexp_n(z wᵀ + bias) without holding more than ~`budget` logits at once.

    Args:
      z: [b, t, e]; w: [n, e]; bias: [n] float32.
      budget: the most [b, chunk, n] elements one chunk may hold.
    Returns:
      [b, t] float32.
    """
    b, t, _ = z.shape
    n = w.shape[0]

    @jax.checkpoint  # the backward pass recomputes a chunk's logits instead of storing them
    def lse(zc):
        logits = jnp.einsum("bte,ne->btn", zc, w, preferred_element_type=jnp.float32)
        return jax.nn.logsumexp(logits + bias[None, None], axis=-1)

    chunk = max(1, budget // max(1, b * n))
    if chunk >= t:
        return lse(z)
    num = -(-t // chunk)
    zp = jnp.pad(z, ((0, 0), (0, num * chunk - t), (0, 0)))
    zp = jnp.swapaxes(zp.reshape(b, num, chunk, z.shape[-1]), 0, 1)  # [num, b, chunk, e]
    out = jax.lax.map(lse, zp)  # [num, b, chunk]
    return jnp.swapaxes(out, 0, 1).reshape(b, num * chunk)[:, :t]


def _target_logprob(z, w, bias, idx, budget):
    """log_softmax(z wᵀ + bias)[idx] for z [b, t, e], w [n, e], idx [b, t] -> [b, t] float32."""
    target = jnp.einsum(
        "bte,bte->bt", z, jnp.take(w, idx, axis=0), preferred_element_type=jnp.float32
    )
    return target + bias[idx] - _logsumexp_chunked(z, w, bias, budget)


class AdaptiveIO(nn.Module):
    """Adaptive input embedding plus projected adaptive log-softmax (optionally tied).

    Attributes:
      vocab_size: v.
      d_model: d, the model width the embeddings project to and the softmax reads.
      cutoffs: cluster starts l_1 < ... < l_c; () is one cluster (a projected full softmax).
      d_embed: e_0, the width of cluster 0.
      div_val: cluster i has width d_embed // div_val**i.
      dropout_rate: dropout on the table rows (input) and on h P_i (output), inside the layer
        (SRU++'s emb_dropout; 0 for Adaptive-Span).
      scale_embed: multiply the input embedding by √d (Adaptive-Span).
      tie_tables: the softmax uses the input tables E_i.
      tie_projs: the softmax uses the input projections P_i.
      init_scheme: "xavier" (SRU++: tables and C ~ U(±√(3/d)), projections xavier-uniform,
        biases 0),
        "torch" (Adaptive-Span, PyTorch defaults: tables N(0, 1) as nn.Embedding,
        projections, untied output tables and biases U(±1/√e_i) as nn.Linear(e_i, ·), C and
        its bias U(±1/√e_0)) or "normal" (lmtool-fwms `weights_init`: tables, projections and C
        ~ N(0, 0.02), biases 0).
      projections: project every cluster (P_i); False needs d_embed = d_model and div_val 1.
      max_chunk_logits: the largest [b, chunk, n] logits block `nll` builds at once.
      dtype: matmul dtype; log-normalisers and outputs are float32.
    """

    vocab_size: int
    d_model: int
    cutoffs: tuple = ()
    d_embed: int = 0  # 0 means d_model
    div_val: int = 1
    dropout_rate: float = 0.0
    scale_embed: bool = False
    tie_tables: bool = True
    tie_projs: bool = True
    init_scheme: str = "xavier"
    projections: bool = True
    max_chunk_logits: int = 1 << 26
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.init_scheme not in ("xavier", "torch", "normal"):
            raise ValueError(f"init_scheme={self.init_scheme!r}; known: xavier, torch, normal")
        self.bounds = cluster_bounds(self.vocab_size, tuple(self.cutoffs))
        k = len(self.bounds) - 1  # clusters, head included
        self.widths = cluster_widths(self.d_embed or self.d_model, self.div_val, k)
        d, torch = self.d_model, self.init_scheme == "torch"
        if not self.projections and set(self.widths) != {d}:
            raise ValueError("projections=False needs every cluster d_model wide (div_val 1)")
        xavier_table = core.uniform(math.sqrt(3.0 / d))
        if self.init_scheme == "normal":
            xavier_table = nn.initializers.normal(0.02)  # every table and C
        tables, projs, out_tables, out_projs, biases = [], [], [], [], []
        for i in range(k):
            n, e = self.bounds[i + 1] - self.bounds[i], self.widths[i]
            linear = core.torch_linear_init(e)  # nn.Linear(e, ·) weights and biases
            proj_init = linear if torch else nn.initializers.xavier_uniform()
            if self.init_scheme == "normal":
                proj_init = nn.initializers.normal(0.02)
            table_init = nn.initializers.normal(1.0) if torch else xavier_table
            tables.append(self.param(f"table_{i}", table_init, (n, e)))
            if self.projections:
                projs.append(self.param(f"proj_{i}", proj_init, (d, e)))
            if not self.tie_tables:
                init = linear if torch else xavier_table
                out_tables.append(self.param(f"out_table_{i}", init, (n, e)))
            if not self.tie_projs and self.projections:
                out_projs.append(self.param(f"out_proj_{i}", proj_init, (d, e)))
            bias_init = linear if torch else nn.initializers.zeros
            biases.append(self.param(f"out_bias_{i}", bias_init, (n,)))
        projs = projs or [None] * k  # None: no projection
        self.tables, self.projs, self.biases = tables, projs, biases
        self.out_tables = out_tables or tables
        self.out_projs = out_projs or projs
        c = k - 1
        if c:
            e0 = self.widths[0]
            cluster_init = core.torch_linear_init(e0) if torch else xavier_table
            self.cluster_weight = self.param("cluster_weight", cluster_init, (c, e0))
            bias_init = cluster_init if torch else nn.initializers.zeros
            self.cluster_bias = self.param("cluster_bias", bias_init, (c,))
        self.drop = core.Dropout(self.dropout_rate)

    def embed(self, tokens, *, train):
        """tokens: [b, t] int. Returns [b, t, d] float32 input embeddings."""
        out = jnp.zeros((*tokens.shape, self.d_model), jnp.float32)
        for i, (table, proj) in enumerate(zip(self.tables, self.projs, strict=True)):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            rows = jnp.take(table, jnp.clip(tokens - lo, 0, hi - lo - 1), axis=0)  # [b, t, e]
            rows = self.drop(rows, deterministic=not train).astype(self.dtype)
            if proj is None:
                x = rows.astype(jnp.float32)
            else:
                x = jnp.einsum(
                    "bte,de->btd", rows, proj.astype(self.dtype), preferred_element_type=jnp.float32
                )
            out = out + jnp.where(((tokens >= lo) & (tokens < hi))[..., None], x, 0.0)
        return out * math.sqrt(self.d_model) if self.scale_embed else out

    def _project(self, h, train):
        """h: [b, t, d] -> [Drop(h P_i)] per cluster, each [b, t, e_i] in dtype."""
        h = h.astype(self.dtype)
        zs = []
        for proj in self.out_projs:
            z = h if proj is None else jnp.einsum("btd,de->bte", h, proj.astype(self.dtype))
            zs.append(self.drop(z, deterministic=not train))
        return zs

    def _head(self):
        """[E_0; C] [n_0 + c, e_0] and [b_0; b_C] [n_0 + c]."""
        if len(self.bounds) == 2:
            return self.out_tables[0], self.biases[0]
        w = jnp.concatenate([self.out_tables[0], self.cluster_weight], axis=0)
        return w, jnp.concatenate([self.biases[0], self.cluster_bias])

    def nll(self, h, targets, *, train):
        """h: [b, t, d] final hidden states; targets: [b, t] int in [0, v).

        Returns:
          [b, t] float32, −log p(targets).
        """
        assert h.shape[:2] == targets.shape and h.shape[-1] == self.d_model, (
            h.shape,
            targets.shape,
        )
        zs = self._project(h, train)
        n0, c = self.bounds[1], len(self.bounds) - 2
        budget = self.max_chunk_logits
        cluster = sum((targets >= lo).astype(jnp.int32) for lo in self.bounds[1:-1])  # [b, t]
        head_w, head_b = self._head()
        head_col = jnp.where(cluster == 0, targets, n0 + c - cluster)  # tail i: column −i
        logp = _target_logprob(zs[0], head_w.astype(self.dtype), head_b, head_col, budget)
        for i in range(1, c + 1):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            idx = jnp.clip(targets - lo, 0, hi - lo - 1)
            w = self.out_tables[i].astype(self.dtype)
            tail = _target_logprob(zs[i], w, self.biases[i], idx, budget)
            logp = logp + jnp.where(cluster == i, tail, 0.0)
        return -logp

    def log_probs(self, h, *, train):
        """h: [b, t, d]. Returns [b, t, v] float32 log-probabilities of the whole vocabulary."""
        zs = self._project(h, train)
        n0, c = self.bounds[1], len(self.bounds) - 2

        def log_softmax(z, w, bias):
            logits = jnp.einsum(
                "bte,ne->btn", z, w.astype(self.dtype), preferred_element_type=jnp.float32
            )
            return jax.nn.log_softmax(logits + bias[None, None], axis=-1)

        head = log_softmax(zs[0], *self._head())  # [b, t, n_0 + c]
        parts = [head[..., :n0]]
        for i in range(1, c + 1):
            tail = log_softmax(zs[i], self.out_tables[i], self.biases[i])
            parts.append(tail + head[..., n0 + c - i : n0 + c - i + 1])
        return jnp.concatenate(parts, axis=-1)

"""The task seam: a second, non-LM task trains through the one trainer.

A toy sequence-to-sequence task (reverse a random sequence) and a one-layer encoder-decoder,
both defined here and registered at run time, go through `train.train_and_evaluate` and
`evaluate.run_eval` unchanged: no carry, a batch of four arrays, checkpoints ranked by a
higher-is-better metric (token accuracy), and a resumed run reproducing the uninterrupted one.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from lmjax import evaluate, losses, models, sharding, tasks, train, writers
from lmjax.models import base as model_base
from lmjax.tasks import base as task_base

BOS = 1  # 0 pads; symbols are 2 .. vocab_size - 1


class ReverseTask(task_base.Task):
    """Source: a random sequence; target: the sequence reversed, teacher-forced after BOS."""

    metric = "accuracy"
    rank_by = "accuracy"
    higher_is_better = True

    def prepare(self, model, splits):
        self.vocab_size = model.config.vocab_size

    def init_inputs(self):
        n = self.config.train.seq_len
        return ((jnp.zeros((1, n), jnp.int32), jnp.zeros((1, n), jnp.int32)), None)

    def _batch(self, seed, batch_size):
        n = self.config.train.seq_len
        rng = np.random.default_rng(seed)
        src = rng.integers(2, self.vocab_size, (batch_size, n), dtype=np.int32)
        tgt = src[:, ::-1].copy()
        tgt_in = np.concatenate([np.full((batch_size, 1), BOS, np.int32), tgt[:, :-1]], axis=1)
        weights = np.ones((batch_size, n), np.float32)
        # This process's rows of the global batch (contiguous blocks, as the LM stream).
        per = batch_size // jax.process_count()
        rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
        batch = {"src": src, "tgt_in": tgt_in, "targets": tgt, "weights": weights}
        return {k: v[rows] for k, v in batch.items()}

    def train_batch(self, step):
        return self._batch(self.config.seed * 1_000_003 + step, self.config.train.batch_size), False

    def synthetic_batch(self, model, seed=0):
        self.vocab_size = model.config.vocab_size
        return self._batch(seed, self.config.train.batch_size)

    def _logits(self, model, params, batch, *, train, rngs=None):
        inputs = (batch["src"], batch["tgt_in"])
        return model.apply({"params": params}, inputs, None, train=train, rngs=rngs)

    def loss(self, model, params, batch, carry, *, train, rngs=None):
        logits, _, aux = self._logits(model, params, batch, train=train, rngs=rngs)
        loss_sum, count = losses.weighted_sum(
            losses.token_nll(logits, batch["targets"]), batch["weights"]
        )
        return loss_sum, count, carry, aux

    def evaluate(self, model, params, split, *, mesh, max_batches=-1, progress=False):
        @jax.jit
        def sums(params, batch):
            logits, _, _ = self._logits(model, params, batch, train=False)
            w = batch["weights"]
            nll = losses.token_nll(logits, batch["targets"])
            right = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
            return jnp.sum(nll * w), jnp.sum(right * w), jnp.sum(w)

        offset = {"valid": 10**9, "test": 2 * 10**9}[split]
        n = 2 if max_batches < 0 else min(max_batches, 2)
        totals = np.zeros(3)
        for i in range(n):
            batch = sharding.shard_host_batch(
                mesh, self._batch(offset + i, self.config.eval.batch_size)
            )
            totals += np.array([float(x) for x in sharding.to_host(sums(params, batch))])
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 12
    d_model: int = 32
    num_heads: int = 2
    dropout_rate: float = 0.1


class ToySeq2Seq(model_base.Family):
    """One encoder layer (self-attention + FF) and one decoder layer (causal self-attention,
    cross-attention, FF), post-LN, shared embedding, no carry.

    Attributes:
      config: a ToyConfig.
    """

    config: ToyConfig

    @nn.compact
    def __call__(self, inputs, carry=None, *, train):
        """inputs: (src [b, s] int, tgt_in [b, t] int). Returns (logits [b, t, v], None, {})."""
        c = self.config
        src, tgt = inputs
        embed = nn.Embed(c.vocab_size, c.d_model)
        pos = lambda n: self.param(f"pos_{n}", nn.initializers.normal(0.02), (64, c.d_model))
        drop = lambda x: nn.Dropout(c.dropout_rate)(x, deterministic=not train)

        def block(x, kv, mask, name):
            attn = nn.MultiHeadDotProductAttention(c.num_heads, name=name)
            x = nn.LayerNorm(name=f"{name}_ln")(x + drop(attn(x, kv, mask=mask)))
            return x

        def ff(x, name):
            y = nn.Dense(c.d_model, name=f"{name}_2")(nn.relu(nn.Dense(64, name=f"{name}_1")(x)))
            return nn.LayerNorm(name=f"{name}_ln")(x + drop(y))

        h = embed(src) + pos("src")[None, : src.shape[1]]
        h = ff(block(h, h, None, "enc_attn"), "enc_ff")
        y = embed(tgt) + pos("tgt")[None, : tgt.shape[1]]
        y = block(y, y, nn.make_causal_mask(tgt), "dec_self")
        y = ff(block(y, h, None, "dec_cross"), "dec_ff")
        return embed.attend(y), carry, {}


tasks.register("toy_reverse", ReverseTask)
models.register("toy_seq2seq", ToySeq2Seq, ToyConfig)


def _config(num_steps):
    config = common.base_config()
    config.task = "toy_reverse"
    config.model_name = "toy_seq2seq"
    config.model.vocab_size = 12
    config.model.dropout_rate = 0.1
    config.optim.learning_rate = 3e-3
    config.train.update(
        batch_size=8, seq_len=6, num_steps=num_steps, log_every=1, eval_every=1,
        eval_steps=2, checkpoint_every=3,
    )  # fmt: skip
    config.eval.batch_size = 8
    return config


def _events(workdir, split):
    return [e for e in writers.read_metrics(workdir) if e["split"] == split]


def test_seq2seq_task_resumes_exactly_and_ranks_by_higher_accuracy(tmp_path):
    whole = tmp_path / "whole"
    train.train_and_evaluate(_config(12), whole, devices=jax.devices()[:2])
    losses_whole = [e["loss"] for e in _events(whole, "train")]
    assert len(losses_whole) == 12 and losses_whole[-1] < losses_whole[0]
    assert "tokens_per_sec" in _events(whole, "train")[0]
    # Resume at a checkpoint step (3 of 12 saved every 3): identical losses afterwards.
    split = tmp_path / "split"
    train.train_and_evaluate(_config(3), split, devices=jax.devices()[:2])
    summary = train.train_and_evaluate(_config(12), split, devices=jax.devices()[:2])
    assert summary["start_step"] == 3 and summary["step"] == 12
    np.testing.assert_array_equal([e["loss"] for e in _events(split, "train")], losses_whole)
    assert not (split / "checkpoints" / "3" / "carry").exists()  # no carry item without state

    # best/ holds the step of the highest validation accuracy (the first, on ties).
    valid = _events(whole, "valid")
    acc = [e["accuracy"] for e in valid]
    best_step = valid[int(np.argmax(acc))]["step"]
    assert best_step != valid[int(np.argmin(acc))]["step"]  # accuracy moved: direction matters
    assert [p.name for p in (whole / "best").iterdir() if p.name.isdigit()] == [str(best_step)]

    results = evaluate.run_eval(_config(12), whole)
    assert set(results) == {"valid", "test"} and 0 <= results["valid"] <= 1
    assert results["valid"] == pytest.approx(max(acc))  # best/ is evaluated, same valid set


def test_seq2seq_one_device_equals_two(tmp_path):
    for name, n in (("one", 1), ("two", 2)):
        config = _config(3)
        train.train_and_evaluate(config, tmp_path / name, devices=jax.devices()[:n])
    one, two = ([e["loss"] for e in _events(tmp_path / n, "train")] for n in ("one", "two"))
    np.testing.assert_allclose(one, two, rtol=1e-5)

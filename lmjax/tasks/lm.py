"""Language modelling: one token stream per split, state carried from window to window.

Data: `corpora.load_corpus(config.data)` gives each split as one long stream of bytes or words;
`lm.LMStream` cuts it into `batch_size` contiguous rows read in windows of `seq_len`, so the
state a family carries into window i + 1 is the true history of each row (truncated BPTT).
Training cycles over a split's full windows and flags the first of each pass, where the
trainer starts the carry afresh, as the references do.

Loss: Σ per-token NLL / #targets from the family's `nll` (models/base.py), reported in nats per
token and bits per character, or at word level (data.level = "word") as perplexity exp(loss),
the references' ppl (SRU++ B9, Adaptive-Span A.7). Checkpoints are ranked by validation loss,
which orders them as bpc and ppl do.

Evaluation runs a whole split (or its first `train.eval_steps` windows during training) with
the carry; the last partial window is padded and masked, so every target counts once.
Generation samples a continuation of a prompt token by token, carrying the state.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lmjax import generate, losses, sharding
from lmjax import state as state_lib
from lmjax.data import corpora, lm, words
from lmjax.errors import UserError
from lmjax.tasks import base

PROTOCOLS = ("carry", "segments", "sliding")


class LMTask(base.Task):
    """Decoder-only language modelling over `config.data` with carried state."""

    rank_by = "loss"
    higher_is_better = False

    def __init__(self, config):
        super().__init__(config)
        for field in ("train.seq_len", "eval.seq_len"):
            section, name = field.split(".")
            if config[section][name] <= 0:
                raise UserError(f"{field}={config[section][name]} must be positive")
        protocol = config.eval.get("protocol", "carry")
        if protocol not in PROTOCOLS:
            raise UserError(f"eval.protocol={protocol!r} is unknown; known: {', '.join(PROTOCOLS)}")
        stride = config.eval.get("sliding_stride", 1)
        if not isinstance(stride, int) or stride < 1:
            raise UserError(f"eval.sliding_stride={stride} must be an integer >= 1")
        self.word = corpora.level(config.data) == "word"
        self.metric = "ppl" if self.word else "bpc"
        self._splits = None
        self._eval_steps = {}  # (model, mesh) -> jitted eval step
        self._train_stream = None

    # -- data ----------------------------------------------------------------------------------

    def _shape(self, split):
        if split == "train":
            return self.config.train.batch_size, self.config.train.seq_len
        return self.config.eval.batch_size, self.config.eval.seq_len

    def prepare(self, model, splits):
        """Loads the corpus and checks `splits` against the model's vocabulary and the shapes."""
        vocab = model.config.vocab_size
        self._splits = corpora.load_corpus(self.config.data)
        corpora.check_vocab_size(self.config.data, vocab)
        for name in splits:
            b, t = self._shape(name)
            corpora.check_split(name, self._splits[name], batch_size=b, seq_len=t, vocab_size=vocab)
            if name != "train" and self.protocol == "sliding":
                self._sliding_starts(name)

    def _stream(self, split):
        b, t = self._shape(split)
        return lm.LMStream(
            self._splits[split],
            b,
            t,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def init_inputs(self):
        return (jnp.zeros((1, self.config.train.seq_len), jnp.int32), None)

    def train_batch(self, step):
        if self._train_stream is None:
            self._train_stream = self._stream("train")
        return self._train_stream.train_window(step)

    def synthetic_batch(self, model, seed=0):
        b, t = self._shape("train")
        b //= jax.process_count()
        v = model.config.vocab_size
        tokens = np.random.default_rng(seed).integers(0, v, (b, t + 1), dtype=np.int32)
        ones = np.ones((b, t), np.float32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": ones}

    # -- loss and metrics ----------------------------------------------------------------------

    def loss(self, model, params, batch, carry, *, train, rngs=None):
        nll, carry, aux = model.apply(
            {"params": params}, batch["inputs"], batch["targets"], carry, train=train,
            rngs=rngs, method=model.nll,
        )  # fmt: skip
        loss_sum, count = losses.weighted_sum(nll, batch["weights"])
        return loss_sum, count, carry, aux

    def scores(self, loss):
        """{"ppl": ..} at word level, {"bpc": ..} at byte level."""
        return {"ppl": losses.ppl(loss)} if self.word else {"bpc": losses.bpc(loss)}

    # -- evaluation ----------------------------------------------------------------------------

    def _eval_step(self, model, mesh):
        key = (model, mesh)
        if key not in self._eval_steps:
            carry = state_lib.zero_carry(model, self.config.eval.batch_size, mesh)
            carry_sh = jax.tree.map(lambda _: sharding.batch_sharded(mesh), carry)

            def step(params, carry, batch):
                loss_sum, count, carry, _ = self.loss(model, params, batch, carry, train=False)
                return carry, {"loss_sum": loss_sum, "count": count}

            self._eval_steps[key] = jax.jit(
                step,
                # parameters: as they come (replicated, or split by train.param_sharding)
                in_shardings=(None, carry_sh, sharding.batch_sharded(mesh)),
                out_shardings=(carry_sh, sharding.replicated(mesh)),
                donate_argnums=(1,),
            )
        return self._eval_steps[key]

    def evaluate(self, model, params, split, *, mesh, max_batches=-1, progress=False):
        """Scores `split` by `eval.protocol`. Returns {"loss", "bpc" or "ppl", "targets"}
        (sliding adds "sliding_stride" and "split_targets").

          carry     the split in batch_size contiguous rows, windows of seq_len, the family's
                    state carried from window to window (from a fresh state): the full context
          segments  the same windows, each from a fresh state: what training reports when the
                    family carries nothing across windows (mem_len 0)
          sliding   windows of seq_len ending at every position of the split as one stream
                    (lmtool-fwms `eval_sliding_window.py`): the first scores all its targets,
                    every later one its last; fresh state each, batched over windows.
                    `eval.sliding_stride` k scores every k-th position (1: the reference).
        """
        protocol = self.protocol
        if protocol == "sliding":
            return self._evaluate_sliding(model, params, split, mesh, max_batches, progress)
        stream = self._stream(split)
        step_fn = self._eval_step(model, mesh)
        fresh = lambda: state_lib.zero_carry(model, self.config.eval.batch_size, mesh)
        carry = fresh()
        n = stream.num_windows if max_batches < 0 else min(max_batches, stream.num_windows)
        loss_sum, count = 0.0, 0.0
        for i in self._bar(n, split, progress):
            if protocol == "segments" and i:
                carry = fresh()
            batch = sharding.shard_host_batch(mesh, stream.window(i))
            carry, metrics = step_fn(params, carry, batch)
            metrics = sharding.to_host(metrics)
            loss_sum += float(metrics["loss_sum"])
            count += float(metrics["count"])
        loss = loss_sum / count
        return {"loss": loss, **self.scores(loss), "targets": count}

    @property
    def protocol(self):
        return self.config.eval.get("protocol", "carry")

    @property
    def stride(self):
        return self.config.eval.get("sliding_stride", 1)

    def eval_label(self, split):
        """The split's name in metrics.jsonl: `test`, or `test_sliding` for another protocol."""
        return split if self.protocol == "carry" else f"{split}_{self.protocol}"

    def eval_note(self, metrics):
        if self.protocol != "sliding":
            return f" ({self.protocol})" if self.protocol != "carry" else ""
        k, n, total = metrics["sliding_stride"], metrics["targets"], metrics["split_targets"]
        every = "every position" if k == 1 else f"every {k}th position"
        return (
            f" (sliding window {self.config.eval.seq_len}, {every}: {int(n):,} of "
            f"{int(total):,} targets scored)"
        )

    def _bar(self, n, split, progress):
        disable = not progress or jax.process_index() != 0
        return tqdm.trange(n, desc=split, leave=False, mininterval=1.0, disable=disable)

    def _sliding_starts(self, split):
        data = self._splits[split]
        t, k = self.config.eval.seq_len, self.stride
        if len(data) < t + 1:
            raise UserError(
                f"eval.seq_len={t}: the sliding window is longer than the {split} split "
                f"({len(data)} tokens)"
            )
        return data, np.concatenate([[0], np.arange(k, len(data) - t, k)]).astype(np.int64)

    def _evaluate_sliding(self, model, params, split, mesh, max_batches, progress):
        data, starts = self._sliding_starts(split)
        b, t = self.config.eval.batch_size, self.config.eval.seq_len
        step_fn = self._eval_step(model, mesh)
        num = -(-len(starts) // b)
        num = num if max_batches < 0 else min(max_batches, num)
        rows = b // jax.process_count()
        lo = jax.process_index() * rows
        offsets = np.arange(t + 1)
        loss_sum, count = 0.0, 0.0
        for j in self._bar(num, split, progress):
            chosen = starts[j * b : (j + 1) * b]
            idx = np.zeros((b,), np.int64)
            idx[: len(chosen)] = chosen
            windows = data[idx[:, None] + offsets[None, :]].astype(np.int32)  # [b, t + 1]
            weights = np.zeros((b, t), np.float32)
            weights[: len(chosen), -1] = 1.0  # a later window scores only its last target
            if j == 0:
                weights[0] = 1.0  # the first window scores all of its targets
            batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:], "weights": weights}
            batch = jax.tree.map(lambda x: x[lo : lo + rows], batch)
            carry = state_lib.zero_carry(model, b, mesh)
            _, metrics = step_fn(params, carry, sharding.shard_host_batch(mesh, batch))
            metrics = sharding.to_host(metrics)
            loss_sum += float(metrics["loss_sum"])
            count += float(metrics["count"])
        loss = loss_sum / count
        return {
            "loss": loss,
            **self.scores(loss),
            "targets": count,
            "split_targets": len(data) - 1,
            "sliding_stride": self.stride,
        }

    # -- generation ----------------------------------------------------------------------------

    def check_generate_options(
        self, model, *, length=200, temperature=1.0, top_k=0, num_samples=1, **_
    ):
        if length <= 0:
            raise UserError(f"--length={length} must be positive")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise UserError(f"--temperature={temperature} must be >= 0 (0 is greedy)")
        v = model.config.vocab_size
        if not 0 <= top_k <= v:
            raise UserError(f"--top_k={top_k} must be in [0, {v}] (0 samples from all {v})")
        if num_samples < 1:
            raise UserError(f"--num_samples={num_samples} must be at least 1")

    def generate(
        self, model, params, *, prompt="", length=200, temperature=1.0, top_k=0, seed=0,
        num_samples=1,
    ):  # fmt: skip
        """Prints the prompt and `num_samples` sampled continuations of `length` bytes or words,
        decoded together as one batch. Returns the continuation (a list of them if
        num_samples > 1)."""
        self.check_generate_options(
            model, length=length, temperature=temperature, top_k=top_k, num_samples=num_samples
        )
        vocab = corpora.load_vocab(self.config.data)  # None at byte level
        if vocab is None:
            tokens = encode_prompt(prompt, model.config.vocab_size)
        else:
            corpora.check_vocab_size(self.config.data, model.config.vocab_size)
            tokens = encode_word_prompt(prompt, vocab)
        out = generate.sample(
            params,
            jnp.repeat(tokens, num_samples, axis=0),
            jax.random.PRNGKey(seed),
            model=model,
            length=length,
            temperature=float(temperature),
            top_k=int(top_k),
        )
        texts = []
        for i, row in enumerate(jax.device_get(out)):
            if vocab is None:
                text = bytes(int(x) for x in row).decode("utf-8", errors="replace")
            else:
                text = words.decode(row, vocab)
                text = text if not prompt or text.startswith("\n") else " " + text
            if num_samples > 1:
                print(f"=== sample {i + 1} of {num_samples}")
            print(prompt + text)
            texts.append(text)
        return texts[0] if num_samples == 1 else texts


def encode_prompt(prompt, vocab_size):
    """UTF-8 bytes of `prompt` as token ids [1, p]; a byte outside the vocabulary is a
    UserError."""
    data = prompt.encode("utf-8") or b"\n"  # an empty prompt starts a new line
    for i, byte in enumerate(data):
        if byte >= vocab_size:
            raise UserError(
                f"--prompt byte {byte} (0x{byte:02x}) at position {i} is outside the model's "
                f"vocabulary of {vocab_size} bytes"
            )
    return jnp.asarray(list(data), jnp.int32)[None, :]


@functools.lru_cache(maxsize=4)
def _word_index(vocab):
    return {w: i for i, w in enumerate(vocab)}


def encode_word_prompt(prompt, vocab):
    """The prompt's words as ids [1, p] (unknown words -> <unk> if the vocabulary has one); an
    empty prompt starts a new line (<eos>)."""
    index = _word_index(tuple(vocab))
    ids = []
    for w in prompt.split():
        i = index.get(w, index.get(words.UNK))
        if i is None:
            raise UserError(f"--prompt word {w!r} is not in the data's vocabulary (no <unk>)")
        ids.append(i)
    return jnp.asarray(ids or [index[words.EOS]], jnp.int32)[None, :]

"""The model-family interface: what the trainer, the tasks and the tools may call on a model.

Every family's top module subclasses `Family` and overrides only what it needs; the defaults
are the behaviour of a family without that feature, so no caller ever asks `hasattr`:

  __call__(inputs, carry, *, train) -> (outputs, carry, aux)
      outputs: logits [b, t, v] for a language model (log-probabilities when the family has an
      adaptive softmax), or whatever the family's task consumes; carry: the recurrent state to
      feed the next window (None for families without state); aux: a dict of float32 scalars,
      every one of them logged, those named in `aux_losses` also added to the training loss.
  nll(tokens, targets, carry, *, train) -> (nll [b, t] float32, carry, aux)
      the per-token negative log-likelihood. The default is the cross-entropy of `__call__`'s
      logits, computed in one place (`losses.token_nll`); a family whose loss is cheaper than
      its logits (an adaptive softmax never builds [b, t, v]) overrides it.
  init_carry(batch_size)      the carry before any input: a typed NamedTuple, or None.
  decode_carry(batch_size, total_len)
                              the carry that starts decoding `total_len` tokens (prompt and
                              continuation); init_carry by default. None makes generation
                              rerun the whole window for every token (generate.py).
  post_update(params, rngs)   params after every optimizer update, inside the jitted step;
                              `rngs` are the RNG streams of the step's (last) forward pass.
                              Adaptive-Span clamps its spans to [0, 1]; the Performer stores
                              the random matrices its forward drew. Identity by default.
  adapt_to(params)            on the host, a model with static shapes that follow the current
                              parameters (Adaptive-Span's trimmed windows), or `self`. Called at
                              start-up and at log steps, never after every step: it reads
                              parameters back from the devices.
  describe()                  static facts worth printing beside a benchmark (e.g. the trim).
  rng_streams                 the RNG collections a training forward draws from; the first
                              gets the step's key itself, the others keys folded from it.
"""

from typing import ClassVar

import flax.linen as nn

from lmjax import losses


class Family(nn.Module):
    """Base of every model family's top module (a Linen module with a frozen `config`)."""

    rng_streams: ClassVar[tuple[str, ...]] = ("dropout",)
    aux_losses: ClassVar[tuple[str, ...]] = ()

    def init_carry(self, batch_size):
        """The state before any input for `batch_size` rows; None for stateless families."""
        del batch_size
        return None

    def decode_carry(self, batch_size, total_len):
        """The carry that starts decoding `total_len` tokens; None: decode by rerunning the
        window."""
        del total_len
        return self.init_carry(batch_size)

    def post_update(self, params, rngs=None):
        """Applied to the parameters after every optimizer update (inside the jitted step);
        `rngs`: the streams of the step's last forward pass."""
        del rngs
        return params

    def adapt_to(self, params):
        """This model with static shapes fitted to `params` (host side), or `self`."""
        del params
        return self

    def describe(self):
        """A dict of static, printable facts about this model instance (may be empty)."""
        return {}

    def pruned(self, params):
        """(model config fields, params) of a physically smaller model computing the same
        function (`lmjax.export --prune`), host side; None where the family has nothing to
        prune."""
        del params
        return None

    def head_masks(self, params):
        """{attention type: [layers][heads] 0/1}: the heads a gated model keeps open (what a
        model trained from scratch with the same heads, the Story of Heads' comparison, takes
        as fixed masks; `lmjax.export --prune` writes it as alive_heads.json); None where the
        family has no head gates."""
        del params
        return None

    def nll(self, tokens, targets, carry=None, *, train):
        """tokens, targets: [b, t] int. Returns (nll [b, t] float32, carry, aux)."""
        logits, carry, aux = self(tokens, carry, train=train)
        return losses.token_nll(logits, targets), carry, aux

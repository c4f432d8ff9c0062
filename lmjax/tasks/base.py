"""The Task interface: everything the trainer needs to know about what is being learned.

The trainer (train.py) owns the mesh, the TrainState, the jitted step, the loop, checkpoints and
logging; it names no field of any task. A Task owns the rest:

  prepare(model, splits)      load and check the data of `splits` for this model, raising a
                              one-line UserError for anything the user can fix. Called before
                              any checkpoint is opened.
  init_inputs()               the positional inputs `model.init` is traced with (after the RNG).
  train_batch(step)           this process's rows of the global batch for `step`, as a dict of
                              numpy arrays with a leading batch axis, and whether carried state
                              must start afresh before it (a new pass over a stream). A pure
                              function of `step`, so a resumed run reads the same batches.
  synthetic_batch(model, seed) a batch of the training shape from random data (benchmarks).
  loss(model, params, batch, carry, *, train, rngs)
                              (loss_sum, count, carry, aux) for one batch, inside jit: summed
                              nats and the number of targets they cover (the trainer divides on
                              the host and reports tokens/s as counted targets per second).
  count(batch)                the targets in a batch (traced; the gradient's normaliser).
  scores(loss)                metrics derived from a mean loss (e.g. {"bpc": ...}).
  evaluate(model, params, split, *, mesh, max_batches=-1, progress=False)
                              a dict of metrics over `split` (or its first max_batches batches);
                              it includes `loss` and `rank_by`; `progress` shows a bar.
  eval_label(split), eval_note(metrics)
                              the name an evaluation is logged under, and a note printed
                              after its number (the LM task's protocol and what it scored).
  check_generate_options(model, **options), generate(model, params, **options)
                              decoding for --mode=generate (options checked before the
                              restore); prints and returns the text.
  check_translate_options(model, input), translate(model, params, input)
                              --mode=translate (sequence-to-sequence tasks): translates the
                              lines of file `input` ('-': stdin), prints and returns them.

and the class attributes `metric` (the headline metric: progress bar, eval print), `rank_by`
(the validation metric that picks best/), `higher_is_better`, and `eval_splits`.
"""

import jax.numpy as jnp

from lmjax.errors import UserError


class Task:
    """Base class; the methods a task lacks raise, the attributes have LM-like defaults."""

    metric = "loss"
    rank_by = "loss"
    higher_is_better = False
    eval_splits = ("valid", "test")

    def __init__(self, config):
        self.config = config

    def prepare(self, model, splits):
        raise NotImplementedError

    def init_inputs(self):
        raise NotImplementedError

    def train_batch(self, step):
        raise NotImplementedError

    def synthetic_batch(self, model, seed=0):
        raise NotImplementedError

    def loss(self, model, params, batch, carry, *, train, rngs=None):
        raise NotImplementedError

    def count(self, batch):
        """The number of targets in `batch` (traced): the loss's normaliser."""
        return jnp.sum(batch["weights"])

    def scores(self, loss):
        del loss
        return {}

    def evaluate(self, model, params, split, *, mesh, max_batches=-1, progress=False):
        raise NotImplementedError

    def eval_label(self, split):
        """The name `split`'s evaluation is logged under (e.g. with the protocol)."""
        return split

    def eval_note(self, metrics):
        """Text printed after an evaluation's headline number (e.g. what was scored)."""
        del metrics
        return ""

    def check_generate_options(self, model, **options):
        """Raises a UserError for a bad generate option, before any checkpoint is read."""
        del model, options

    def generate(self, model, params, **options):
        del model, params, options
        raise UserError(f"task {type(self).__name__} has no --mode=generate")

    def check_translate_options(self, model, input):
        """Raises a UserError for a bad --mode=translate option, before any checkpoint is read."""
        del model, input
        raise UserError(f"task {type(self).__name__} has no --mode=translate")

    def translate(self, model, params, input):
        del model, params, input
        raise UserError(f"task {type(self).__name__} has no --mode=translate")

    def better(self, value, best):
        """Whether validation `value` of `rank_by` beats `best` (None: nothing yet)."""
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best

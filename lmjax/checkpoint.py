"""Checkpoints: orbax managers for the last N and the best-by-validation checkpoints.

A checkpoint holds the TrainState (params, optimizer state, step, base RNG), the carried recurrent
state and attention memory, and a JSON `meta` (step, data position, best validation bpc). The data
position is a pure function of the step (`LMStream.train_window(step)`), so restoring these three
items reproduces an uninterrupted run exactly.

Resume order (`restore_or_init` in train.py):
  (1) the latest intact checkpoint in `workdir/checkpoints`;
  (2) `config.init_from`: parameters only, fresh optimizer, data and state from the start
      (the SHA-RNN second pass at half the learning rate);
  (3) scratch.
A checkpoint whose parameters do not match the config is an error naming it. An unreadable one
(a truncated file, say) is skipped with a warning for the previous intact one; if none is intact
the run stops rather than silently starting over on top of them. orbax writes each checkpoint to
a temporary directory and renames it when complete, so a save cut short is never picked up.
"""

import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from lmjax.errors import UserError


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _param_shapes(tree, prefix="params"):
    """Flattens a nested dict of arrays or ArrayMetadata into {'params/a/b': shape}."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}"
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(_param_shapes(value, path))
        else:
            out[path] = tuple(value.shape)
    return out


def _manager(directory, keep):
    # Naming the handlers lets a fresh manager read item metadata before any restore.
    handlers = dict(
        state=ocp.StandardCheckpointHandler(),
        carry=ocp.StandardCheckpointHandler(),
        meta=ocp.JsonCheckpointHandler(),
    )
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class Checkpoints:
    """The `checkpoints/` (last `keep`) and `best/` (one) managers of a workdir."""

    def __init__(self, workdir, keep=3, *, read_only=False):
        self.workdir = os.path.abspath(workdir)
        if read_only and not any(
            os.path.isdir(os.path.join(self.workdir, d)) for d in ("checkpoints", "best")
        ):  # eval, generate and init_from read; they never create directories
            raise UserError(f"no checkpoint in {self.workdir}: train first (--mode=train)")
        self.latest = _manager(os.path.join(self.workdir, "checkpoints"), keep)
        self.best = _manager(os.path.join(self.workdir, "best"), 1)

    def save(self, step, state, carry, meta, *, best=False):
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            carry=ocp.args.StandardSave(carry),
            meta=ocp.args.JsonSave(meta),
        )
        (self.best if best else self.latest).save(step, args=args, force=True)

    def wait(self):
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self):
        self.latest.close()
        self.best.close()

    def restore_latest(self, state, carry):
        """(state, carry, meta, path) of the newest intact checkpoint, or None if there is none.

        `state` and `carry` are targets (arrays or ShapeDtypeStructs with shardings).
        """
        return _restore_newest(self.latest, state, carry)

    def restore_for_eval(self, state):
        """(state, meta, path) from best/ if it exists, else checkpoints/. Raises if neither."""
        for mngr in (self.best, self.latest):
            if mngr.all_steps():
                out = _restore_newest(mngr, state, None)
                return out[0], out[2], out[3]
        raise UserError(f"no checkpoint in {self.workdir}: train first (--mode=train)")


def _check_compatible(mngr, step, state):
    path = os.path.join(str(mngr.directory), str(step))
    stored = _param_shapes(mngr.item_metadata(step)["state"]["params"])
    wanted = _param_shapes(state.params)
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name) != wanted.get(name):
            raise UserError(
                f"checkpoint {path} does not match the config: {name} is "
                f"{stored.get(name, 'absent')} in the checkpoint, {wanted.get(name, 'absent')} in "
                "the config; use another --workdir or the config it was trained with"
            )


def _restore_newest(mngr, state, carry):
    steps = sorted(mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        path = os.path.join(str(mngr.directory), str(step))
        try:
            _check_compatible(mngr, step, state)
            items = dict(
                state=ocp.args.StandardRestore(_abstract(state)), meta=ocp.args.JsonRestore()
            )
            if carry is not None:
                items["carry"] = ocp.args.StandardRestore(_abstract(carry))
            restored = mngr.restore(step, args=ocp.args.Composite(**items))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if i + 1 == len(steps):
                raise UserError(
                    f"checkpoint {path} is unreadable ({reason}) and no earlier intact one "
                    "exists; move it aside to start over"
                ) from None
            # Keep it for inspection, out of the manager's way, so the next save of this step
            # does not collide with it: never deleted, never silently reused.
            aside = os.path.join(
                os.path.dirname(str(mngr.directory)),
                "unreadable",
                f"{os.path.basename(str(mngr.directory))}-{step}-{int(time.time())}",
            )
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.rename(path, aside)
            mngr.reload()
            message = (
                f"checkpoint {path} is unreadable ({reason}); moved it to {aside} and "
                f"fell back to step {steps[i + 1]}"
            )
            logging.warning(message)
            print(f"warning: {message}")
            continue
        return restored.state, (restored.carry if carry is not None else None), restored.meta, path
    return None

"""Checkpoints: orbax managers for the last N and the best-by-validation checkpoints.

A checkpoint holds the TrainState (params, optimizer state, step, base RNG), the carried state
(the recurrent state and attention memory; no item for families without state) and a JSON
`meta` (step, the best validation value so far and its metric, model and task names). The data
position is a pure function of the step (`Task.train_batch(step)`), so restoring these items
reproduces an uninterrupted run exactly. Checkpoints written before the task seam stored the best
validation bpc as `best_valid_bpc`; `upgrade_meta` reads them.

Evaluation, generation and `init_from` need only the parameters: `restore_params` builds the rest
of its restore target from the checkpoint's own metadata, so the optimizer, batch and schedule of
the config do not matter to them.

Resume order (train.py):
  (1) the latest intact checkpoint in `workdir/checkpoints`;
  (2) `config.init_from`: parameters only, fresh optimizer, data and state from the start
      (the SHA-RNN second pass at half the learning rate);
  (3) scratch.
A checkpoint whose parameters do not match the config is an error naming it. An unreadable one
(a truncated file, say) is skipped with a warning for the previous intact one; if none is intact
the run stops rather than silently starting over on top of them. orbax writes each checkpoint to
a temporary directory and renames it when complete, so a save cut short is never picked up.
"""

import functools
import math
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
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if carry is not None:
            items["carry"] = ocp.args.StandardSave(carry)
        (self.best if best else self.latest).save(
            step, args=ocp.args.Composite(**items), force=True
        )

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
        return _restore_newest(self.latest, lambda step: state, carry)

    def restore_params(self, params):
        """(params, meta, path) from best/ if it has a checkpoint, else checkpoints/.

        `params` is the target (ShapeDtypeStructs with shardings); the optimizer state and the
        rest are read with the shapes the checkpoint itself records. Raises if there is none.
        """
        for mngr in (self.best, self.latest):
            if mngr.all_steps():
                target = functools.partial(_params_target, mngr, params)
                state, _, meta, path = _restore_newest(mngr, target, None)
                return state["params"], meta, path
        raise UserError(f"no checkpoint in {self.workdir}: train first (--mode=train)")


def restore_params(workdir, params):
    """The parameters of `workdir`'s best (else latest) checkpoint: (params, meta, path).

    Used by --mode=eval, --mode=generate and `init_from`; never creates a directory.
    """
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        return ckpts.restore_params(params)
    finally:
        ckpts.close()


def upgrade_meta(meta):
    """`meta` in the current layout: pre-seam checkpoints kept the best validation bpc as
    `best_valid_bpc` (inf before any validation); it is loss / ln 2, so the best loss is
    bpc · ln 2."""
    if "best" not in meta and "best_valid_bpc" in meta:
        bpc = meta["best_valid_bpc"]
        value = None if bpc is None or math.isinf(bpc) else bpc * math.log(2)
        meta = dict(meta, best={"metric": "loss", "value": value})
    return meta


def _params_target(mngr, params, step):
    """A TrainState-shaped restore target: `params` as given, the other leaves as stored."""
    stored = mngr.item_metadata(step)["state"]
    stored = getattr(stored, "tree", stored)
    sharding = jax.tree.leaves(params)[0].sharding
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    shaped = lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)
    target = {k: jax.tree.map(shaped, v, is_leaf=is_leaf) for k, v in stored.items()}
    target["params"] = params
    return target


def _check_compatible(mngr, step, state):
    path = os.path.join(str(mngr.directory), str(step))
    stored = _param_shapes(mngr.item_metadata(step)["state"]["params"])
    params = state["params"] if isinstance(state, dict) else state.params
    wanted = _param_shapes(params)
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name) != wanted.get(name):
            raise UserError(
                f"checkpoint {path} does not match the config: {name} is "
                f"{stored.get(name, 'absent')} in the checkpoint, {wanted.get(name, 'absent')} in "
                "the config; use another --workdir or the config it was trained with"
            )


def _restore_newest(mngr, target, carry):
    """Restores the newest intact step of `mngr`; `target(step)` gives the state target."""
    steps = sorted(mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        path = os.path.join(str(mngr.directory), str(step))
        try:
            state = target(step)
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
        meta = upgrade_meta(restored.meta)
        return restored.state, (restored.carry if carry is not None else None), meta, path
    return None

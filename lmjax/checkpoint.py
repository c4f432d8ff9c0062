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
A checkpoint whose arrays (parameters, optimizer state, carry) do not fit the config is another
config's, not damaged: an error naming the config fields that differ from the ones saved in its
meta, touching nothing. One that cannot be read (a truncated file, say) or whose arrays fail the
crc32 checksums recorded at save time is moved to workdir/unreadable/ with one warning, and the
previous intact one is used; if none is intact the run stops rather than silently starting over
on top of them. orbax writes each checkpoint to a temporary directory and renames it when
complete, so a save cut short is never picked up. `WorkdirLock` keeps a second trainer out.
"""

import contextlib
import fcntl
import functools
import gc
import logging
import math
import os
import sys
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from lmjax.errors import UserError


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory, keep):
    # Naming the handlers lets a fresh manager read item metadata before any restore.
    handlers = dict(
        state=ocp.StandardCheckpointHandler(),
        carry=ocp.StandardCheckpointHandler(),
        meta=ocp.JsonCheckpointHandler(),
    )
    # With several processes, orbax names its barriers by step ("_async_write_complete.2"):
    # checkpoints/ and best/ both saving step 2 asynchronously met at one barrier and hung
    # (FAILED_PRECONDITION "Barrier ... is already ongoing", then the shutdown barrier timed
    # out). A prefix per manager (its directory's name) keeps their barriers apart.
    multiprocessing = ocp.options.MultiprocessingOptions(
        barrier_sync_key_prefix=os.path.basename(directory)
    )
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, multiprocessing_options=multiprocessing
    )
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
        """Saves asynchronously; `meta` (JSON) gains the checksums of every array."""
        sums = {"state": checksums(state)}
        if carry is not None:
            sums["carry"] = checksums(carry)
        meta = dict(meta, checksums=sums)
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

    def set_aside_after(self, step):
        """Moves best/ checkpoints of steps after `step` (the step a run resumes from: they
        belong to the run that was cut short, and their step numbers are about to be reached
        again) to workdir/superseded/. Returns whether any was moved."""
        later = [s for s in self.best.all_steps() if s > step]
        for s in later:
            aside = _move_aside(self.best, s, "superseded")
            print(
                f"warning: best/{s} is from a run that did not reach a checkpoint after step "
                f"{step}; moved it to {aside}",
                file=sys.stderr,
            )
        return bool(later)

    def restore_latest(self, state, carry, config=None):
        """(state, carry, meta, path) of the newest intact checkpoint, or None if there is none.

        `state` and `carry` are targets (arrays or ShapeDtypeStructs with shardings); `config`
        (a dict) names the differing fields when a checkpoint does not fit them.
        """
        return _restore_newest(self.latest, lambda step: state, carry, config)

    def restore_params(self, params, *, as_stored=False):
        """(params, meta, path) from best/ if it has a checkpoint, else checkpoints/.

        `params` is the target (ShapeDtypeStructs with shardings); the optimizer state and the
        rest are read with the shapes the checkpoint itself records (and with `as_stored` the
        parameters too, placed like `params`). Raises if there is none.
        """
        for mngr in (self.best, self.latest):
            if mngr.all_steps():
                target = functools.partial(_params_target, mngr, params, as_stored=as_stored)
                state, _, meta, path = _restore_newest(mngr, target, None)
                return state["params"], meta, path
        raise UserError(f"no checkpoint in {self.workdir}: train first (--mode=train)")


class WorkdirLock:
    """An exclusive lock on a workdir for one training run: `fcntl.flock` on workdir/.lock,
    released when the process exits however it exits (so never stale after a crash). A second
    trainer on the same workdir is a UserError naming the holder's pid. Eval and generate do not
    take it: they may run beside a trainer."""

    def __init__(self, workdir):
        self.path = os.path.join(os.path.abspath(workdir), ".lock")
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            pid = self._file.read().strip() or "unknown"
            self._file.close()
            raise UserError(
                f"workdir {os.path.dirname(self.path)} is in use by another trainer (pid {pid}); "
                "wait for it to finish or use another --workdir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self):
        if not self._file.closed:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def restore_params(workdir, params, *, as_stored=False):
    """The parameters of `workdir`'s best (else latest) checkpoint: (params, meta, path).

    Used by --mode=eval, --mode=generate and `init_from`; never creates a directory.
    """
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        return ckpts.restore_params(params, as_stored=as_stored)
    finally:
        ckpts.close()


def merge_params(init, stored, source):
    """`init` with every parameter `stored` also has replaced by the stored one: what
    `init_from` does, so a run may add parameters its source lacks (the Story of Heads' pruning
    run adds gates to a baseline, whose log_a keep their fresh init, C.3). Returns (params, the
    paths kept fresh, the stored paths the model has no use for). A shared path whose shape
    differs is a UserError naming it and `source`."""
    flat_init = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(init)[0]}
    flat_stored = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(stored)[0]}
    for k in sorted(set(flat_init) & set(flat_stored)):
        a, b = tuple(flat_stored[k].shape), tuple(flat_init[k].shape)
        if a != b:
            raise UserError(
                f"init_from {source}: parameter {k} is {a} in the checkpoint, {b} in the "
                "model; init_from needs a checkpoint of the same architecture"
            )
    take = lambda p, x: (
        jax.device_put(flat_stored[_path_str(p)].astype(x.dtype), x.sharding)
        if _path_str(p) in flat_stored
        else x
    )  # each stored array laid out as the run's own (replicated or split)
    merged = jax.tree_util.tree_map_with_path(take, init)
    fresh = sorted(set(flat_init) - set(flat_stored))
    unused = sorted(set(flat_stored) - set(flat_init))
    return merged, fresh, unused


def upgrade_meta(meta):
    """`meta` in the current layout: pre-seam checkpoints kept the best validation bpc as
    `best_valid_bpc` (inf before any validation); it is loss / ln 2, so the best loss is
    bpc · ln 2."""
    if "best" not in meta and "best_valid_bpc" in meta:
        bpc = meta["best_valid_bpc"]
        value = None if bpc is None or math.isinf(bpc) else bpc * math.log(2)
        meta = dict(meta, best={"metric": "loss", "value": value})
    return meta


def _params_target(mngr, params, step, *, as_stored=False):
    """A TrainState-shaped restore target: `params` as given (or, `as_stored`, as the
    checkpoint has them), the other leaves as stored."""
    stored = mngr.item_metadata(step)["state"]
    stored = getattr(stored, "tree", stored)
    # Replicated on the target's mesh: the stored shapes need not fit a split of the target's
    # (train.param_sharding=fsdp splits every array its own way).
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shaped = lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)
    target = {k: jax.tree.map(shaped, v, is_leaf=_is_array_like) for k, v in stored.items()}
    if not as_stored:
        target["params"] = params
    return target


def _path_str(path):
    """A tree path as 'params/layer_0/kernel', the same for a TrainState, the dicts and lists
    orbax stores it as, and its metadata."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def _is_array_like(x):
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _leaf_specs(tree):
    """{path: (shape, dtype name)} of a tree of arrays, ShapeDtypeStructs or ArrayMetadata."""
    tree = getattr(tree, "tree", tree)
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_like)
    return {
        _path_str(p): (tuple(x.shape), jax.numpy.dtype(x.dtype).name)
        for p, x in leaves
        if _is_array_like(x)
    }


def checksums(tree):
    """{path: crc32} of every array this process holds whole (replicated, or all its shards):
    recorded in meta at save time, verified after restore, so corrupted bytes are caught even
    where the file format would decode them. Under several processes a batch-sharded carry is
    not held whole by any process and has no checksum."""
    out = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, x in leaves:
        if isinstance(x, jax.Array):
            if x.is_fully_addressable:
                x = np.asarray(x)
            elif x.is_fully_replicated:
                x = np.asarray(x.addressable_data(0))
            else:
                continue
        data = np.ascontiguousarray(np.asarray(x))
        out[_path_str(path)] = f"{zlib.crc32(data.view(np.uint8).reshape(-1)):08x}"
    return out


def _verify(restored, recorded):
    """The first path whose checksum differs from the one recorded at save time, or None."""
    if not recorded:
        return None  # written before checksums were recorded
    now = checksums(restored)
    for path, crc in recorded.items():
        if path in now and now[path] != crc:
            return path
    return None


def _flat_config(tree, prefix=""):
    out = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_config(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


# Fields that never change what a checkpoint holds: a re-run may change them freely.
_HARMLESS = ("train.num_steps", "train.log_every", "train.eval_every", "train.eval_steps")
_HARMLESS += ("train.checkpoint_every", "train.keep_checkpoints", "init_from", "eval.")


def _config_diff(stored, current):
    """'optim.name is 'lamb' in the run's config, 'adam' now; ...' for fields that can matter."""
    a, b = _flat_config(stored), _flat_config(current)
    diffs = [
        f"{k} is {a.get(k, 'absent')!r} in the run's config, {b.get(k, 'absent')!r} now"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not k.startswith(_HARMLESS)
    ]
    return "; ".join(diffs)


def _check_fits(mngr, step, state, carry, config):
    """Raises a UserError (touching nothing) if the stored arrays do not fit the targets: the
    checkpoint is intact but belongs to another config. Reading its metadata may fail: that is
    an unreadable checkpoint, for the caller to handle."""
    path = os.path.join(str(mngr.directory), str(step))
    metadata = mngr.item_metadata(step)
    stored_config = _stored_config(mngr, step) if config else None
    _check_batch_fields(path, stored_config, config)
    pairs = [("state", metadata["state"], state)]
    if carry is not None:
        try:
            stored_carry = metadata["carry"]
        except KeyError:
            stored_carry = None
        pairs.append(("carry", stored_carry, carry))
    for item, stored_md, wanted_tree in pairs:
        stored = _leaf_specs(stored_md) if stored_md is not None else {}
        wanted = _leaf_specs(wanted_tree)
        bad = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
        if not bad:
            continue
        name = bad[0] if item == "state" else f"carry/{bad[0]}"
        detail = (
            f"{name} is {stored.get(bad[0], ('absent',))[0]} in the checkpoint, "
            f"{wanted.get(bad[0], ('absent',))[0]} in the config"
        )
        diff = _config_diff(stored_config, config) if stored_config else ""
        raise UserError(
            f"checkpoint {path} does not match the config: {diff or detail}; use the config it "
            "was trained with or another --workdir (nothing was changed)"
        )


# What a step reads: step s of a run reads the data at s x the global batch (the LM stream's
# windows, the translation batches), so a resumed run with another global batch or window would
# neither continue the run's data order nor its schedule's meaning. Another device or process
# count (elastic resume) and another grad_accum_steps keep them, and are allowed.
_BATCH_FIELDS = ("train.batch_size", "train.seq_len", "train.batch_len")


def _check_batch_fields(path, stored, config):
    if not stored:
        return  # checkpoints written before configs were stored: the shapes decide
    a, b = _flat_config(stored), _flat_config(config)
    for k in _BATCH_FIELDS:
        if k in a and k in b and a[k] != b[k]:
            raise UserError(
                f"checkpoint {path} was trained with {k}={a[k]!r}, the config says {b[k]!r}: a "
                "resumed run keeps its global batch (another device or process count is fine); "
                f"pass --config.{k}={a[k]!r} or start another --workdir (nothing was changed)"
            )


def _stored_config(mngr, step):
    """The config saved in a checkpoint's meta, or None (older checkpoints, unreadable meta)."""
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001 - the diff is a courtesy; the shapes decide
        return None
    return meta.get("config")


def _move_aside(mngr, step, folder):
    """Moves `mngr`'s checkpoint `step` to workdir/<folder>/<manager>-<step>-<time>, out of the
    manager's way, so the next save of that step cannot collide with it: never deleted, never
    silently reused. Returns the new path."""
    directory = str(mngr.directory)
    aside = os.path.join(
        os.path.dirname(directory),
        folder,
        f"{os.path.basename(directory)}-{step}-{int(time.time())}",
    )
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.rename(os.path.join(directory, str(step)), aside)
    mngr.reload()
    return aside


def quarantine(mngr, step, reason, fallback):
    """Moves an unusable checkpoint into workdir/unreadable/ with one warning."""
    path = os.path.join(str(mngr.directory), str(step))
    aside = _move_aside(mngr, step, "unreadable")
    print(
        f"warning: checkpoint {path} is unreadable ({reason}); moved it to {aside} and fell "
        f"back to step {fallback}",
        file=sys.stderr,
    )


@contextlib.contextmanager
def _quiet_reads():
    """While a checkpoint is read, and while the reads of a failed one wind down: orbax reads
    arrays in concurrent coroutines, and when one fails the others' failures reach Python's
    unraisable hook and the asyncio / concurrent.futures loggers as pages of TensorStore specs
    and 'Event loop is closed' tracebacks. The first failure is what the warning reports."""
    loggers = [logging.getLogger(n) for n in ("asyncio", "concurrent.futures")]
    hook, disabled = sys.unraisablehook, [lg.disabled for lg in loggers]
    sys.unraisablehook = lambda unraisable: None
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        gc.collect()  # finalise the failed read's coroutines while their noise is muted
        sys.unraisablehook = hook
        for lg, d in zip(loggers, disabled, strict=True):
            lg.disabled = d


def _restore_newest(mngr, target, carry, config=None):
    """Restores the newest intact step of `mngr`; `target(step)` gives the state target.

    A checkpoint that does not fit the targets raises (it is another config's, not damaged);
    one that cannot be read or whose arrays fail their checksums is quarantined and the one
    before it tried.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        path = os.path.join(str(mngr.directory), str(step))
        try:
            state = target(step)
            _check_fits(mngr, step, state, carry, config)
            items = dict(
                state=ocp.args.StandardRestore(_abstract(state)), meta=ocp.args.JsonRestore()
            )
            if carry is not None:
                items["carry"] = ocp.args.StandardRestore(_abstract(carry))
            with _quiet_reads():
                restored = mngr.restore(step, args=ocp.args.Composite(**items))
            recorded = restored.meta.get("checksums", {})
            bad = _verify(restored.state, recorded.get("state"))
            if bad is None and carry is not None:
                bad = _verify(restored.carry, recorded.get("carry"))
                bad = bad and f"carry/{bad}"
            if bad is not None:
                raise ValueError(f"checksum mismatch in {bad}")
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            first = first.split(" See full TensorStore details")[0][:200]  # pybind11 noise
            reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
            if i + 1 == len(steps):
                raise UserError(
                    f"checkpoint {path} is unreadable ({reason}) and no earlier intact one "
                    "exists; move it aside to start over"
                ) from None
            quarantine(mngr, step, reason, steps[i + 1])
            continue
        meta = upgrade_meta(restored.meta)
        meta.pop("checksums", None)
        return restored.state, (restored.carry if carry is not None else None), meta, path
    return None

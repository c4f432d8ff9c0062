"""Command line: `python -m lmjax.main --config=configs/sha_rnn.py:cpu --workdir=DIR`.

Modes: train (resumes when DIR has checkpoints), eval (best or latest checkpoint on the full
valid and test splits), generate (a sampled continuation of --prompt), translate (the lines of
--input, for translation configs), show_config (the fields and variants of --config). A user
mistake prints one line and exits with status 2; see lmjax/errors.py and lmjax/cli.py.
"""

if __name__ == "__main__":  # as a program: restart with huge pages first (lmjax/machine.py)
    from lmjax import machine

    machine.exec_with_huge_pages()

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import cli
from lmjax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "generate", "translate", "show_config"], "What to do."
)
flags.DEFINE_string("input", None, "translate: a file of source sentences, one a line; - = stdin.")
flags.DEFINE_string("prompt", "", "generate: the text to continue.")
flags.DEFINE_integer("length", 200, "generate: tokens (bytes or words) to sample.")
flags.DEFINE_float("temperature", 1.0, "generate: softmax temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "generate: sample among the k most likely tokens (0 = all).")
flags.DEFINE_integer(
    "num_samples", 1, "generate: continuations of the prompt to sample, decoded as one batch."
)
flags.DEFINE_string(
    "exported", None, "generate: sample from a decoder file of `lmjax.export` (no --config)."
)
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Multi-process start-up: 'auto' joins a job when --coordinator_address is given or when "
    "SLURM or Open MPI launched several tasks (jax.distributed.initialize() reads their "
    "environment); 'on' always calls jax.distributed.initialize() (a Cloud TPU slice, whose "
    "workers JAX finds itself: launch/tpu_vm.sh); 'off' runs alone.",
)


def _cluster_launched():
    """Whether SLURM (srun) or Open MPI (mpirun) started this process as one of several: the
    environment JAX's own cluster detection reads (jax._src.clusters)."""
    env = os.environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
    if all(k in env for k in slurm) and int(env["SLURM_NTASKS"]) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def _initialize_distributed():
    """jax.distributed.initialize as --distributed says (before any other JAX call)."""
    import jax

    if FLAGS.distributed == "off":
        return
    if FLAGS.coordinator_address:
        jax.distributed.initialize(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            initialization_timeout=120,
        )
    elif FLAGS.distributed == "on" or _cluster_launched():
        jax.distributed.initialize(initialization_timeout=300)


def main(argv):
    from lmjax import evaluate, generate, train  # after flag parsing: jax reads XLA_FLAGS here

    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    if FLAGS.config is not None and FLAGS.mode == "show_config":
        return cli.show_config(FLAGS.config)
    if FLAGS.exported is not None:
        if FLAGS.mode != "generate":
            cli.fail(f"--exported is for --mode=generate, not --mode={FLAGS.mode}")
        if FLAGS.num_samples != 1:
            cli.fail(
                f"--num_samples={FLAGS.num_samples}: an exported decoder samples one sequence "
                "(its state has batch 1); sample several from the workdir's checkpoint"
            )
        try:
            generate.run_exported(
                FLAGS.exported, prompt=FLAGS.prompt, length=FLAGS.length,
                temperature=FLAGS.temperature, top_k=FLAGS.top_k,
            )  # fmt: skip
        except UserError as e:
            cli.fail(str(e))
        return
    if FLAGS.config is None or FLAGS.workdir is None:
        cli.fail("--config and --workdir are required")
    config, workdir = FLAGS.config, FLAGS.workdir
    if "://" in workdir:  # gs://, s3://: orbax could, but the locks and logs here are local files
        cli.fail(
            f"--workdir={workdir}: URL workdirs are not supported yet; mount the bucket (e.g. "
            "gcsfuse) or a shared filesystem at one path on every host and pass that path"
        )
    try:
        config = cli.apply_workdir_overrides(config, workdir)  # e.g. a pruned export's
    except UserError as e:
        cli.fail(str(e))
    _initialize_distributed()
    try:
        if FLAGS.mode == "train":
            summary = train.train_and_evaluate(config, workdir)
            if "interrupted" in summary:
                sys.exit(128 + summary["interrupted"])
        elif FLAGS.mode == "eval":
            evaluate.run_eval(config, workdir)
        elif FLAGS.mode == "translate":
            generate.run_translate(config, workdir, input=FLAGS.input)
        else:
            generate.run_generate(
                config,
                workdir,
                prompt=FLAGS.prompt,
                length=FLAGS.length,
                temperature=FLAGS.temperature,
                top_k=FLAGS.top_k,
                num_samples=FLAGS.num_samples,
            )
    except UserError as e:
        cli.fail(str(e))
    except train.TrainingDiverged as e:
        cli.fail(str(e), code=1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)

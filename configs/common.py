"""Shared config pieces: the sections every family has, the `:arg` parser and `make_tiny`.

Every experiment file builds on `base_config()` and overrides what its paper says. Sections:
  data   which corpus and where it lives
  model  the family's own fields, turned into its frozen `<Family>Config` (unknown keys fail)
  optim  optimizer, learning rate schedule, clipping
  train  global batch, window length, step counts, intervals
  eval   evaluation batch, window and protocol (default: full split, state carried)
"""

import ml_collections

DATASETS = ("stdlib", "text", "enwik8", "text8", "wikitext103")


def parse_arg(arg, **defaults):
    """Parses `variant[,key=value,...]` (the part after `:` in --config) into a ConfigDict.

    A bare word sets `variant`; `key=value` sets a field, typed like its default.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            key, value = "variant", part
        else:
            key, value = (s.strip() for s in part.split("=", 1))
        if key not in out:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(out.keys())}")
        default = out[key]
        if isinstance(default, bool):
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        out[key] = value
    return out


def base_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "lm"  # what is learned: lmjax/tasks (data, loss, evaluation, decoding)
    config.model_name = ""  # the family: lmjax/models registry
    config.init_from = ""  # a checkpoint directory to start from when the workdir has none

    config.data = ml_collections.ConfigDict()
    config.data.name = "stdlib"  # one of DATASETS
    config.data.level = "byte"  # byte | word ('text' offers both, wikitext103 only word)
    config.data.path = ""  # enwik8/text8/wikitext103: a local copy (file, .zip or directory)
    config.data.data_dir = ""  # tfds cache; '' means ~/tensorflow_datasets or $TFDS_DATA_DIR
    config.data.train_path = ""  # 'text' dataset: one file per split
    config.data.valid_path = ""  # '' holds out the last valid_fraction of train_path
    config.data.test_path = ""
    config.data.valid_fraction = 0.05

    config.model = ml_collections.ConfigDict()

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # lamb | adam | adamw | adagrad | sgd
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "constant"  # constant | cosine | rsqrt (all after linear warmup)
    config.optim.warmup_steps = 0
    config.optim.decay_steps = 0  # cosine: the step at which lr reaches min_lr_ratio * lr
    config.optim.min_lr_ratio = 0.0  # cosine floor as a fraction of learning_rate
    config.optim.grad_clip = 0.0  # global-norm clip (per-tensor for adagrad); 0 disables
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.min_trust = 0.25  # lamb only
    config.optim.max_weight_norm = 10.0  # lamb only
    # fnmatch patterns over parameter paths ("layer_0/attn/gate/log_a"): only these train, the
    # rest get zero updates and no optimizer state; empty: all train.
    config.optim.trainable = ()
    config.optim.lr_scale = {}  # {fnmatch pattern of parameter paths: learning-rate factor}

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 16  # global, over all devices and hosts
    config.train.seq_len = 256
    config.train.num_steps = 1000
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.eval_steps = 50  # windows per periodic validation; -1 = the whole split
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 3
    config.train.grad_accum_steps = 1
    # replicated: every device holds all parameters and optimizer state; fsdp: split along the
    # data axis (lmjax/sharding.py), 1/n of them a device, the same losses.
    config.train.param_sharding = "replicated"

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8
    config.eval.seq_len = 256
    config.eval.protocol = "carry"  # carry | segments | sliding (lmjax/tasks/lm.py)
    config.eval.sliding_stride = 1  # sliding: score every k-th position (1: all of them)
    return config


def make_cpu(config):
    """The CPU budget every family's `cpu` variant shares, so their numbers compare: the embedded
    stdlib corpus, batch 8 x 256 bytes, 2,000 steps, validation on 50 windows every 500."""
    config.seed = 0
    config.data.name = "stdlib"
    config.data.level = "byte"
    config.data.path = ""
    config.train.batch_size = 8
    config.train.seq_len = 256
    config.train.num_steps = 2000
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.eval_steps = 50
    config.train.checkpoint_every = 500
    config.eval.batch_size = 8
    config.eval.seq_len = 256
    return config


def make_tiny(config):
    """Shrinks sizes only, so the tiny run exercises the experiment's own code paths."""
    config.data.name = "stdlib"
    config.data.level = "byte"
    config.data.path = ""
    config.train.batch_size = 8
    config.train.seq_len = 16
    config.train.num_steps = 2
    config.train.log_every = 1
    config.train.eval_every = 2
    config.train.eval_steps = 2
    config.train.checkpoint_every = 2
    config.optim.warmup_steps = min(config.optim.warmup_steps, 1)
    config.eval.batch_size = 8
    config.eval.seq_len = 16
    return config

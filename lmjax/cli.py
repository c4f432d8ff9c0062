"""Command-line plumbing for main.py and bench.py: flag parsing whose every failure is one line
and exit status 2, --help that exits 0, and --mode=show_config."""

import ast
import json
import os
import sys

from absl import flags

_HELP = """usage: python -m lmjax.main --config=configs/FAMILY.py[:VARIANT] --workdir=DIR
           [--mode=train|eval|generate|translate|show_config] [--config.SECTION.FIELD=VALUE ...]
           [--prompt=TEXT --length=N --temperature=T --top_k=K]      (generate)
           [--input=FILE|-]                                           (translate)

  --mode=show_config prints the config's fields (what --config.SECTION.FIELD can set) and the
  config file's description, which lists its variants. The README has the details.
"""


def fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _config_arg(argv):
    """The value of the last --config (absl's rule), or None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _last_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_flags(argv, flag_values=flags.FLAGS):
    """absl parsing, but a bad flag, config file or override is one line and exit status 2."""
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        print(_HELP + "\nflags:\n" + flag_values.main_module_help())
        sys.exit(0)
    config = _config_arg(argv)
    if config is not None:
        path = config.split(":", 1)[0]
        if not os.path.isfile(path):
            fail(f"--config: no such file {path}")
        # configs/*.py import `configs.common`: make a config given by path from any directory
        # importable, installed or not.
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if os.path.basename(os.path.dirname(os.path.abspath(path))) == "configs":
            sys.path.insert(0, root)
    try:
        return flag_values(argv)
    except flags.Error as e:
        text = str(e)
        if "Error whilst parsing config file" in text:  # the config's own exception, last line
            reason = _last_line(text).split(": ", 1)[-1]
            fail(f"--config={config}: {reason}; list the variants with --mode=show_config")
        fail(text.splitlines()[0])
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        # ml_collections raises these for an override naming no field, or of the wrong type;
        # their args hold the message (str() of a KeyError is its escaped repr).
        message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        for _ in range(3):  # the KeyError's repr nested in another exception's message
            if len(message) < 2 or message[0] not in "'\"" or message[-1] != message[0]:
                break
            try:
                message = ast.literal_eval(message)
            except (ValueError, SyntaxError):
                break
        message = " ".join(message.split()).replace("' Did you mean", "'; did you mean")
        fail(f"bad --config override: {message or type(e).__name__}")


def show_config(config, flag_values=flags.FLAGS):
    """--mode=show_config: the config file's docstring (its variants) and every field."""
    path = flag_values["config"].config_filename.split(":", 1)[0]
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    print(f"# {path}\n{doc}\n\n# fields (override with --config.SECTION.FIELD=VALUE)")
    print(config)


WORKDIR_OVERRIDES = "config_overrides.json"


def apply_workdir_overrides(config, workdir):
    """`config` with the fields a workdir pins (its config_overrides.json, {"model.field":
    value}, written by `lmjax.export --prune`: the layout of the parameters it holds), said on
    stderr; `config` itself if the workdir has none."""
    from lmjax.errors import UserError

    path = os.path.join(os.path.expanduser(workdir), WORKDIR_OVERRIDES)
    if not os.path.isfile(path):
        return config
    try:
        with open(path) as f:
            values = json.load(f)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable ({e}); it names the fields its checkpoint needs"
        ) from None
    config = config.copy_and_resolve_references()
    for key, value in values.items():
        node = config
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                node = node[part]
            current = node[leaf]
        except (KeyError, AttributeError):
            raise UserError(f"{path}: {key} is not a field of this config") from None
        if isinstance(current, tuple):
            value = tuple(value)
        with node.ignore_type():
            node[leaf] = value
    print(f"{path}: set {', '.join(values)} (the layout of this workdir's model)", file=sys.stderr)
    return config

"""Task registry: `config.task` -> a `tasks.base.Task` class (see base.py for the interface).

`register` adds one at run time (a test's toy task, or a user's own outside the package).
"""

from lmjax.errors import UserError
from lmjax.tasks import base, lm, translation

TASKS = {"lm": lm.LMTask, "translation": translation.TranslationTask}


def register(name, cls):
    """Adds task class `cls` (a `base.Task`) under `name`."""
    if not issubclass(cls, base.Task):
        raise TypeError(f"{cls.__name__} must subclass lmjax.tasks.base.Task")
    TASKS[name] = cls


def get_task(config):
    """The task named by `config.task` ("lm" when a config predates the field)."""
    name = config.get("task", "lm")
    if name not in TASKS:
        raise UserError(f"task={name!r} is unknown; known: {sorted(TASKS)}")
    return TASKS[name](config)

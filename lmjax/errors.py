"""User-facing errors.

A `UserError` is a mistake in the command line, config or input files. `lmjax.main` prints its
message on one line and exits with status 2, without a traceback. Everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A user mistake: bad config field, missing file, unusable corpus, incompatible checkpoint."""

    exit_code = 2

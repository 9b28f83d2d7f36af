"""User-facing errors: the CLI prints their message as one line and exits non-zero.

Anything raised as a `VaelabError` is a user mistake or an environment problem (missing data,
a bad flag, an unreadable image, a diverged run), never a bug, so no traceback is shown.
"""


class VaelabError(Exception):
    """Base class for errors the user can fix; the message is the whole explanation."""

    exit_code = 2


class ConfigError(VaelabError):
    """A config value or flag is invalid."""


class DataError(VaelabError):
    """A dataset is missing, corrupt or has the wrong shape."""


class RunError(VaelabError):
    """A run folder is missing, incomplete, or would be overwritten."""


class RunInUseError(RunError):
    """Another vaelab process holds the run folder's one-writer lock (vaelab.runlock)."""

    exit_code = 4


class DivergenceError(VaelabError):
    """Training produced a non-finite loss or gradient."""

    exit_code = 3

"""The one exception family users see.

Every error that a user can cause (a wrong path, a corrupt file, an impossible hyper-parameter) is raised
as a subclass of `ConvscopeError` with a message that says what was wrong, with what value, and what to
do. The CLI turns these into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class ConvscopeError(Exception):
    """Base class for errors caused by input, not by a bug in convscope."""


class DataError(ConvscopeError):
    """A data file or folder is missing, unreadable, corrupt or inconsistent."""


class DownloadError(DataError):
    """A dataset could not be downloaded and verified from any mirror."""


class ConfigError(ConvscopeError, ValueError):
    """A setting has an impossible value (lr <= 0, bs <= 0, unknown dataset, ...)."""


class RunError(ConvscopeError):
    """A run directory cannot be written, read or resumed."""


class ConvscopeWarning(UserWarning):
    """Something was wrong with the input, and convscope carried on without it (the CLI prints one line)."""

"""Exceptions that mean "the user asked for something that cannot be done".

The CLI turns any :class:`UserError` into one clear line on stderr and exit code 2; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: an unknown name, a missing path, an invalid option value."""


class DatasetNotFoundError(UserError):
    """A dataset's files were not found where we looked; the message says where and how to get them."""


class ConfigError(UserError):
    """An unknown configuration key, a value of the wrong type, or an inconsistent combination."""


def first_mismatch(err: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (the first line only says that loading failed)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown error"
    return line if len(line) <= 160 else line[:157] + "..."  # a list of missing keys can run to pages

"""Errors that reach the user.

A :class:`UserError` is a problem with the user's input (a path, an alias, a corpus, a setting)
that the user can fix. Its message is one line that names the fix; the CLI prints it and exits
with status 2, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message names the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class DownloadError(UserError):
    """A package registry could not be reached, or returned something unexpected."""

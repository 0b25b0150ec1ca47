"""Errors the user can fix: the base class `UserError` and the command-line `UsageError`.

The bottom layer: this module imports nothing from ntl, so any module, library or lab, can raise
or subclass these. Every error the user can fix subclasses `UserError` (``MissingDependency`` in
`ntl._optional`, ``CorruptFileError`` in `ntl.lab.file_checks`, ...); its message names the bad
value and says what to do instead. The command line prints a `UserError` as one line and exits
with status 2 (``--debug`` shows the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names the bad value and the fix."""


class UsageError(UserError):
    """A bad value on the command line; the message names it and says what to do instead."""

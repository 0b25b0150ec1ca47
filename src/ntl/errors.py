"""Errors the user can fix. The command line prints them as one line and exits with status 2."""

from __future__ import annotations

from ntl._optional import MissingDependency
from ntl.numbers import TokenizerLoadError, TokenizerNotFound


class UsageError(Exception):
    """A bad value on the command line; the message names it and says what to do instead."""


# What `ntl.cli.main` reports in one line (everything else is a bug and shows its traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, MissingDependency, TokenizerNotFound, TokenizerLoadError,
)

"""Renamed keywords and names: the old spelling keeps working for one release, with a warning."""

from __future__ import annotations

import warnings
from typing import Any

_UNSET: Any = object()


def renamed_keyword(func: str, old: str, new: str, old_value: Any, new_value: Any,
                    default: Any) -> Any:
    """The value of keyword ``new`` when a caller may still pass it as ``old``.

    ``old_value`` is what the caller passed as ``old`` (`UNSET` when not passed); ``new_value``
    what it passed as ``new`` (``default`` when not passed). Warns `FutureWarning` when ``old``
    is used, and raises TypeError when both are given different values.
    """
    if old_value is _UNSET:
        return new_value
    if new_value is not default and new_value != old_value:
        raise TypeError(f"{func}() got {old}={old_value!r} and {new}={new_value!r}; {old}= is the "
                        f"old name of {new}=, pass only {new}={old_value!r}.")
    warnings.warn(f"{func}({old}=...) is deprecated and will be removed in the next release; "
                  f"use {func}({new}={old_value!r}).", FutureWarning, stacklevel=3)
    return old_value


def moved_name(old: str, new: str) -> None:
    """Warn that the name ``old`` (a dotted path) is now ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}.",
                  FutureWarning, stacklevel=3)


UNSET = _UNSET

"""Read the one number in a model's answer text, and write a number back as plain text.

:func:`parse_number` is strict, made for answers that are one plain number (``-12``, ``0.5``,
``3``):

* The text must hold **exactly one number token**; two or more (``3/4``, ``1 2``, ``5 - 3``,
  ``1, 2``) is invalid, and so is a digit that is not part of a well-formed number (``12abc``,
  ``x2``, ``3.5.1``).
* A number token is an optional sign (``-``, ``+``, or the unicode minus ``−``) **attached** to the
  digits, an integer part, an optional fraction (``3.50``, ``.5``, ``5.``) and an optional exponent
  (``1e-05``, ``2E+3``). Scientific notation is read as such: ``1e-05`` is 1e-05.
* A sign separated from the digits by whitespace (``- 12``) is invalid: it is either an expression
  or a tokenizer that decodes with spaces between pieces, and both should show up as invalid
  rather than be silently repaired.
* Thousands separators are accepted only in strict groups of three: ``1,000`` and ``12,345.5`` are
  1000 and 12345.5; ``1,00``, ``1, 000`` and the decimal comma ``3,5`` are invalid.
* Text around the number is allowed (``The answer is -12.`` is -12), except an arithmetic operator
  (``+ - * / ^ × ÷ %``) right next to it, ignoring spaces (``x-3``, ``- 12``, ``12/``, ``50%``).
* Values that overflow float (``1e400``) are invalid.

:func:`number_parts` returns the pieces of that same number (sign, integer and fraction digits,
exponent), which the place-by-place decoding of :mod:`ntl.decoding` needs. :func:`format_number`
writes a float as positional text that :func:`parse_number` reads back to the same float.
Needs only the standard library and numpy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["NumberParts", "format_number", "number_parts", "parse_number"]

_NUMBER_RE = re.compile(
    r"""
    (?<![\w.,+\-])                         # not glued to a word, a number or another sign
    (?P<sign>[-+])?
    (?P<body>
        (?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?   # 12, 1,000, 3.50, 5.
      | \.\d+                                  # .5
    )
    (?P<exp>[eE][-+]?\d+)?
    (?![\w])                               # not followed by letters or digits (12abc, 1e)
    """,
    re.VERBOSE,
)
_OPERATORS = frozenset("+-*/^×÷%")
_DIGIT_RE = re.compile(r"\d")


@dataclass(frozen=True)
class NumberParts:
    """The pieces of the one number in a text (see :func:`number_parts`).

    Attributes:
        sign: ``-1.0`` or ``1.0``.
        int_digits: the digits before the point, thousands separators removed (``"1000"``; ``""``
            for ``.5``).
        frac_digits: the digits after the point (``""`` when there are none).
        exponent: the power of ten written after ``e`` (0 when there is none).
        value: the number as a finite float.
    """

    sign: float
    int_digits: str
    frac_digits: str
    exponent: int
    value: float


def number_parts(text: str | None) -> NumberParts | None:
    """The pieces of the single number in ``text``; ``None`` when :func:`parse_number` is ``None``.

    Every digit character of a valid text belongs to the number, in the order
    ``int_digits``, ``frac_digits``, then the exponent's digits.

    Raises:
        TypeError: ``text`` is neither a str nor ``None``.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"parse_number expects a str, got {type(text).__name__}: {text!r}")
    text = text.replace("\u2212", "-").strip()
    matches = list(_NUMBER_RE.finditer(text))
    if len(matches) != 1:
        return None
    m = matches[0]
    before, after = text[: m.start()], text[m.end() :]
    if _DIGIT_RE.search(before) or _DIGIT_RE.search(after):
        return None  # a digit outside the number: 12abc 3, 3.5.1, x2 ...
    before, after = before.rstrip(), after.lstrip()
    if (before and before[-1] in _OPERATORS) or (after and after[0] in _OPERATORS):
        return None  # an expression: x-3, - 12, 12/, 50%
    body = m.group("body").replace(",", "")
    literal = (m.group("sign") or "") + body + (m.group("exp") or "")
    value = float(literal)
    if not math.isfinite(value):
        return None
    int_digits, _, frac_digits = body.partition(".")
    exp = m.group("exp")
    return NumberParts(
        sign=-1.0 if m.group("sign") == "-" else 1.0,
        int_digits=int_digits,
        frac_digits=frac_digits,
        exponent=int(exp[1:]) if exp else 0,
        value=value,
    )


def parse_number(text: str | None) -> float | None:
    """Parse the single number in ``text``; ``None`` when the text is not exactly one number.

    See the module docstring for the full rules. Examples::

        parse_number("-12")                 -> -12.0
        parse_number(" 3.50 ")              -> 3.5
        parse_number("1e-05")               -> 1e-05
        parse_number("The answer is -12.")  -> -12.0
        parse_number("1,000")               -> 1000.0
        parse_number("3/4")                 -> None   (two numbers)
        parse_number("- 12")                -> None   (detached sign)
        parse_number("abc")                 -> None

    Args:
        text: generated text (or a target answer). ``None`` gives ``None``.

    Returns:
        The value as a finite Python float, or ``None`` for an invalid answer.

    Raises:
        TypeError: ``text`` is neither a str nor ``None``.
    """
    parts = number_parts(text)
    return None if parts is None else parts.value


def format_number(value: float) -> str:
    """``value`` as positional text without exponent (``326.0`` -> ``"326"``, ``1e-05`` ->
    ``"0.00001"``), the shortest digits that :func:`parse_number` reads back to the same float.

    Positional, because readers that do not understand exponents (a last-number scan) would
    misread ``1e-05``.

    Raises:
        ValueError: ``value`` is NaN or infinite.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"format_number needs a finite float, got {value!r}")
    if value == 0.0:
        return "0"  # -0.0 too
    return np.format_float_positional(value, unique=True, trim="-")

"""Exact decimals: the numbers a user types (thresholds, bounds, ``fire_above``) parsed into
exact fractions, and exact values shown back as decimals."""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from .errors import BadThreshold


def decimal_text(value: Fraction) -> str:
    """``value`` as an exact decimal when it has one (``0.1``, ``1e-05`` as ``0.00001``), else
    as a ratio (``1/3``): how nact shows exact values in messages."""
    rest = value.denominator
    for p in (2, 5):
        while rest % p == 0:
            rest //= p
    if rest != 1:
        return str(value)
    with localcontext() as context:
        context.prec = 2 * (MAX_DIGITS + MAX_EXPONENT)
        exact = Decimal(value.numerator) / Decimal(value.denominator)
    return f"{exact:g}" if abs(exact.adjusted()) > 20 else format(exact.normalize(), "f")


def as_fraction(value: str | Fraction | int, what: str) -> Fraction:
    """``value`` exactly: a decimal string as typed, or a number."""
    return parse_decimal(value, what) if isinstance(value, str) else Fraction(value)


Portion = str | float | int | Fraction  # a portion as the library takes one (see as_portion)


def as_portion(value: Portion, what: str) -> Fraction:
    """A portion (a dead threshold, a ``fail_above`` limit) exactly as given, as the CLI takes it:
    text as typed (``1e-6``, ``1/3``, or a percentage ``0.1%``), a float as the decimal it prints
    as (``1e-5`` is exactly 1/100000, not the binary float nearest to it), an int or a Fraction.
    ``what`` is the option's library name, for the error; the range is the caller's to check."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.endswith("%"):
            return parse_decimal(stripped[:-1], what) / 100
        return parse_decimal(value, what)
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise BadThreshold(what, repr(value), "is not a number: give a float or text such as 1e-6 or 0.1%")
    if isinstance(value, (int, np.integer)):
        return Fraction(int(value))
    # str(), not repr(): a numpy float prints as the shortest decimal of its own precision
    return parse_decimal(str(value) if isinstance(value, np.floating) else repr(float(value)), what)


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_RATIO = re.compile(r"[+-]?\d+/\d+")
MAX_DIGITS = 400  # digits of a decimal or of a ratio's terms
MAX_EXPONENT = 400  # |exponent| of a decimal: far past every float format's range


def parse_decimal(text: str, what: str) -> Fraction:
    """The exact value of a decimal the user typed (``1e-6``, ``0.05``) or a ratio (``1/3``).

    Exponents and digits are bounded, so that no input makes an exact value of huge size.
    ``what`` is the option's library name, for the error.
    """
    stripped = text.strip()
    decimal = _DECIMAL.fullmatch(stripped)
    if decimal is None and _RATIO.fullmatch(stripped) is None:
        try:
            special = float(stripped)
        except ValueError:
            special = 0.0
        problem = "must be finite" if math.isinf(special) else "is not a number"
        raise BadThreshold(what, text, problem)
    if len(stripped) > MAX_DIGITS + 10 or (
        decimal and decimal.group(2) and abs(int(decimal.group(2)[1:])) > MAX_EXPONENT
    ):
        raise BadThreshold(
            what, text, f"is out of range (at most {MAX_DIGITS} digits and exponents within +-{MAX_EXPONENT})"
        )
    try:
        return Fraction(stripped)
    except ZeroDivisionError:
        raise BadThreshold(what, text, "is not a number") from None

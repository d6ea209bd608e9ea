"""Exact decimal text -> integer ticks / lots, never through binary floating point.

Runs in the feed process on the hot path (plain Python called once per price or quantity).
A decimal string ``s`` with ``k`` fractional digits is ``D * 10**-k`` where ``D`` is the integer
written by its digits; a step size of ``mant * 10**-exp`` turns it into
``D * 10**(exp - k) / mant`` units. The multiplier and divisor for every ``k`` are computed once
per instrument, so the common case costs one ``str.find``, one slice join and one ``int()``.

Errors are return codes, not exceptions: ``units()`` returns ``BAD`` (-1) for text that is not a
plain non-negative decimal (signs, exponents, spaces, underscores, non-ASCII digits, empty), for
more than ``MAX_FRAC_DIGITS`` fractional digits, for a value that is not a whole number of steps,
and for a result that does not fit a signed 64-bit record field.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from shm.instruments import decimal_to_mant_exp

BAD = -1
MAX_FRAC_DIGITS = 18
MAX_DIGITS = 36             # longer digit strings cannot fit int64 after scaling anyway
INT64_MAX = (1 << 63) - 1
CACHE_MAX = 8192            # text -> units memo per scale; prices near the touch repeat a lot


class Scale:
    """Decimal text <-> integer units of ``step`` (a tick size or a lot size)."""

    __slots__ = ("step", "mant", "exp", "_mul", "_div", "cache")

    def __init__(self, step: str | Decimal):
        try:
            d = Decimal(str(step))
        except InvalidOperation:
            raise ValueError(f"step size {step!r} is not a decimal") from None
        if not d.is_finite() or d <= 0:
            raise ValueError(f"step size {step!r} must be a positive decimal")
        self.step = d
        self.mant, self.exp = decimal_to_mant_exp(d)
        mul, div = [], []
        for k in range(MAX_FRAC_DIGITS + 1):
            if self.exp >= k:
                mul.append(10 ** (self.exp - k))
                div.append(self.mant)
            else:
                mul.append(1)
                div.append(self.mant * 10 ** (k - self.exp))
        self._mul = tuple(mul)
        self._div = tuple(div)
        # Handlers look a text up here before calling units(): a dict hit costs ~40 ns
        # against ~400 ns for the conversion. Only valid results are stored, and only while
        # the memo is below CACHE_MAX entries (bounded memory, no eviction work).
        self.cache: dict[str, int] = {}

    def units(self, s: str) -> int:
        """Exact integer units of ``s``, or BAD (-1)."""
        d = s.find(".")
        if d < 0:
            digits = s
            k = 0
        else:
            digits = s[:d] + s[d + 1:]
            k = len(s) - d - 1
            if k > MAX_FRAC_DIGITS:
                return BAD
        # isdigit() alone accepts superscripts and other scripts' digits; isascii() rules them out
        if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_DIGITS:
            return BAD
        v = int(digits) * self._mul[k]
        dv = self._div[k]
        if dv != 1:
            q, r = divmod(v, dv)
            if r:
                return BAD
            v = q
        return v if v <= INT64_MAX else BAD

    def units_cached(self, s: str) -> int:
        v = self.cache.get(s)
        if v is None:
            v = self.units(s)
            if v >= 0 and len(self.cache) < CACHE_MAX:
                self.cache[s] = v
        return v

    def text(self, units: int) -> str:
        """Units back to a canonical decimal string (cold path: tests, reports)."""
        return str(self.step * units)

    def __repr__(self) -> str:
        return f"Scale({str(self.step)!r})"


def frac_digits(s: str) -> int:
    """Significant fractional digits of a decimal string (trailing zeros do not count)."""
    d = s.find(".")
    if d < 0:
        return 0
    return len(s[d + 1:].rstrip("0"))


def step_for_digits(n: int) -> Decimal:
    """10**-n as an exact Decimal (the finest step that writes n fractional digits)."""
    return Decimal("0." + "0" * (n - 1) + "1") if n > 0 else Decimal(1)


def checksum_fragment(s: str) -> str:
    """Kraken checksum text of one number: the decimal point removed, leading zeros stripped."""
    return s.replace(".", "").lstrip("0")

"""Exact decimal text -> integer ticks / lots in numba, for the Binance fast path.

Feed process, HOT PATH: @njit, no allocation, results are return codes (-1: decline).

Same acceptance rules as feeds/decimal.Scale.units (digits and at most one dot, 1..36 digits,
at most 18 fractional digits, a whole number of steps, fits int64), from a per-scale table of
19 multipliers and 19 divisors (k fractional digits -> ``D * mul[k] / div[k]``, see
``scale_table``). Where the integer arithmetic would overflow int64 (or a table entry does not
fit), it declines rather than guess: the exact Python path then decides. ``levels_raw`` reads a
depth array of [price, qty] string pairs while validating it, so a depth frame is read once.
"""
from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = (1 << 63) - 1
MAX_FRAC = 18
SCALE_WORDS = 2 * (MAX_FRAC + 1)     # mul[0..18], div[0..18]


@njit(cache=True, _nrt=False, inline="always")
def ws(b, i, n):
    """Index of the first non-whitespace byte at or after i (n if none)."""
    while i < n:
        c = b[i]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        i += 1
    return i


@njit(cache=True, _nrt=False)
def dec_string(b, i, n):
    """The JSON string at b[i] ('"') read as decimal text in one pass: (index of the closing
    quote or -1 if the string itself is refused, digits value or -1, fractional digit count or
    -1). The value is -1 for anything but digits and at most one dot, 0 or more than 36 digits,
    more than 18 fractional digits, or digits beyond int64."""
    j = i + 1
    d = 0
    nd = 0
    dot = -1
    bad = False
    while j < n:
        c = b[j]
        if 48 <= c <= 57:
            if d > 922337203685477579:          # d*10 + 9 could pass INT64_MAX
                bad = True
            else:
                d = d * 10 + (c - 48)
            nd += 1
        elif c == 34:
            break
        elif c == 46 and dot < 0:
            dot = j
        elif c == 92 or c < 32 or c >= 128:
            return -1, -1, -1
        else:
            bad = True
        j += 1
    if j >= n:
        return -1, -1, -1
    k = 0 if dot < 0 else j - dot - 1
    if bad or nd == 0 or nd > 36 or k > MAX_FRAC:
        return j, -1, -1
    return j, d, k


@njit(cache=True, _nrt=False)
def scale_raw(d, k, A, tab):
    """Digits value d with k fractional digits -> exact units with the scale table at A[tab:],
    or -1 (inexact, beyond int64, or already refused by dec_string)."""
    if d < 0 or k < 0:
        return -1
    mul = A[tab + k]
    div = A[tab + MAX_FRAC + 1 + k]
    if mul <= 0 or div <= 0:
        return -1
    if mul > 1:
        if d > INT64_MAX // mul:
            return -1
        d *= mul
    if div > 1:
        if d % div != 0:
            return -1
        d //= div
    return d


@njit(cache=True, _nrt=False)
def units(b, s, e, A, tab):
    """Exact integer units of the decimal text b[s:e] (the content of a string whose closing
    quote is b[e]), or -1 (the caller declines)."""
    j, d, k = dec_string(b, s - 1, e + 1)
    if j != e:
        return -1
    return scale_raw(d, k, A, tab)


@njit(cache=True, _nrt=False)
def levels_raw(b, i, n, A, out, maxn):
    """The array of [price, qty] string pairs at b[i] ('['), validated and read in one pass:
    A[out + 4j : out + 4j + 4] = price digits, price fraction digits, qty digits, qty fraction
    digits (dec_string's values, -1 where refused). Returns (index after the array, count), or
    (-1, 0) for any other shape (the caller then validates it generically and declines)."""
    i = ws(b, i + 1, n)
    if i < n and b[i] == 93:
        return i + 1, 0
    m = 0
    while True:
        if i >= n or b[i] != 91 or m >= maxn:
            return -1, 0
        i = ws(b, i + 1, n)
        if i >= n or b[i] != 34:
            return -1, 0
        e, dp, kp = dec_string(b, i, n)
        if e < 0:
            return -1, 0
        i = ws(b, e + 1, n)
        if i >= n or b[i] != 44:
            return -1, 0
        i = ws(b, i + 1, n)
        if i >= n or b[i] != 34:
            return -1, 0
        e, dq, kq = dec_string(b, i, n)
        if e < 0:
            return -1, 0
        i = ws(b, e + 1, n)
        if i >= n or b[i] != 93:
            return -1, 0
        o = out + 4 * m
        A[o] = dp
        A[o + 1] = kp
        A[o + 2] = dq
        A[o + 3] = kq
        m += 1
        i = ws(b, i + 1, n)
        if i >= n:
            return -1, 0
        if b[i] == 44:
            i = ws(b, i + 1, n)
            continue
        if b[i] == 93:
            return i + 1, m
        return -1, 0


def scale_table(scale) -> np.ndarray:
    """feeds.decimal.Scale -> the 38-word table ``units`` reads (0 where a factor does not fit
    int64, so that digit count declines to the exact Python path)."""
    t = np.zeros(SCALE_WORDS, dtype=np.int64)
    for k in range(MAX_FRAC + 1):
        mul, div = scale._mul[k], scale._div[k]
        if mul <= INT64_MAX and div <= INT64_MAX:
            t[k] = mul
            t[MAX_FRAC + 1 + k] = div
    return t

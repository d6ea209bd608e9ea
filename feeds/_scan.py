"""Raw-bytes JSON scanning in numba, for the Binance fast path.

Feed process, HOT PATH: every function is @njit, allocates nothing and reports by return code.

The scanner is deliberately narrower than JSON. It accepts a frame only when it is *certain*
orjson would read it the same way, and otherwise declines (returns a negative value) so the
caller hands the frame to the exact Python path, which then decides (parse error, ignored, ...).
It declines: backslash escapes, bytes >= 0x80 or control bytes inside strings, numbers with a
fraction or an exponent or more than 18 digits, nesting deeper than 62, and a tracked key that
occurs twice in one object (orjson keeps the last one; declining is simpler than mimicking it).
Everything it accepts is strictly valid JSON, so an accepted frame never hides a syntax error.

``scan_object`` records, for the keys the Binance messages use, where each value lies, in
``FIELD_WORDS`` int64 words per key inside a caller-supplied int64 array ``A`` (the handler's
arena): [generation, type, start, end]. A slot counts as present only when its generation equals
the current one, so slots never need clearing between frames.

Decimal text is read by feeds/_numtext.py (exact ticks and lots, never float).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from feeds._numtext import levels_raw, ws

# value types recorded per key
T_STR, T_NUM, T_OBJ, T_ARR, T_TRUE, T_FALSE, T_NULL = 1, 2, 3, 4, 5, 6, 7
FIELD_WORDS = 4

# tracked keys -> slot numbers
SL_DATA, SL_STREAM, SL_E, SL_EE, SL_S, SL_UU, SL_U, SL_B, SL_A = 0, 1, 2, 3, 4, 5, 6, 7, 8
SL_P, SL_Q, SL_TT, SL_M, SL_T, SL_BB, SL_AA, SL_LAST, SL_BIDS, SL_ASKS = \
    9, 10, 11, 12, 13, 14, 15, 16, 17, 18
N_SLOTS = 19

_KEY1 = np.full(128, -1, dtype=np.int64)
for _c, _s in (("e", SL_E), ("E", SL_EE), ("s", SL_S), ("U", SL_UU), ("u", SL_U), ("b", SL_B),
               ("a", SL_A), ("p", SL_P), ("q", SL_Q), ("T", SL_TT), ("m", SL_M), ("t", SL_T),
               ("B", SL_BB), ("A", SL_AA)):
    _KEY1[ord(_c)] = _s
_K_DATA = np.frombuffer(b"data", dtype=np.uint8).copy()
_K_BIDS = np.frombuffer(b"bids", dtype=np.uint8).copy()
_K_ASKS = np.frombuffer(b"asks", dtype=np.uint8).copy()
_K_STREAM = np.frombuffer(b"stream", dtype=np.uint8).copy()
_K_LAST = np.frombuffer(b"lastUpdateId", dtype=np.uint8).copy()


@njit(cache=True, _nrt=False)
def eq(b, s, e, lit):
    """b[s:e] == lit (a uint8 array)."""
    if e - s != len(lit):
        return False
    for j in range(e - s):
        if b[s + j] != lit[j]:
            return False
    return True


@njit(cache=True, _nrt=False)
def string_end(b, i, n):
    """b[i] is an opening quote: index of the closing quote, or -1 (escape, control or
    non-ASCII byte, or no closing quote)."""
    i += 1
    while i < n:
        c = b[i]
        if c == 34:
            return i
        if c == 92 or c < 32 or c >= 128:
            return -1
        i += 1
    return -1


@njit(cache=True, _nrt=False)
def int_end(b, i, n):
    """A JSON integer at b[i] (optional '-', no leading zeros, <= 18 digits): index after it;
    -1 for anything else, fractions and exponents included."""
    if i < n and b[i] == 45:
        i += 1
    s = i
    while i < n and 48 <= b[i] <= 57:
        i += 1
    nd = i - s
    if nd == 0 or nd > 18 or (nd > 1 and b[s] == 48):
        return -1
    if i < n and (b[i] == 46 or b[i] == 101 or b[i] == 69):
        return -1
    return i


@njit(cache=True, _nrt=False)
def uint_value(b, s, e):
    """Value of a non-negative integer token b[s:e] already checked by int_end, or -1."""
    if e <= s or b[s] == 45:
        return -1
    v = 0
    for j in range(s, e):
        v = v * 10 + (b[j] - 48)
    return v


@njit(cache=True, _nrt=False)
def _literal_end(b, i, n):
    """End of true / false / null at b[i], or -1 (bytes compared inline: cheaper here than
    comparing against constant arrays)."""
    c = b[i]
    if c == 116:
        if i + 4 <= n and b[i + 1] == 114 and b[i + 2] == 117 and b[i + 3] == 101:
            return i + 4
    elif c == 102:
        if i + 5 <= n and b[i + 1] == 97 and b[i + 2] == 108 and b[i + 3] == 115 \
                and b[i + 4] == 101:
            return i + 5
    elif c == 110:
        if i + 4 <= n and b[i + 1] == 117 and b[i + 2] == 108 and b[i + 3] == 108:
            return i + 4
    return -1


@njit(cache=True, _nrt=False)
def _key_colon(b, i, n):
    """At a key: checks `"key" :` and returns the index after the colon, or -1."""
    if i >= n or b[i] != 34:
        return -1
    e = string_end(b, i, n)
    if e < 0:
        return -1
    i = ws(b, e + 1, n)
    if i >= n or b[i] != 58:
        return -1
    return i + 1


@njit(cache=True, _nrt=False)
def _scalar_end(b, i, n):
    """End of a string, integer or literal starting at b[i], or -1."""
    c = b[i]
    if c == 34:
        e = string_end(b, i, n)
        return e + 1 if e >= 0 else -1
    if c == 45 or 48 <= c <= 57:
        return int_end(b, i, n)
    return _literal_end(b, i, n)


@njit(cache=True, _nrt=False)
def skip_value(b, i, n):
    """Validate the JSON value at b[i] (any nesting, iteratively: one bit per open container
    says object or array); index after it, or -1."""
    depth = 0
    stack = 0
    while True:
        i = ws(b, i, n)
        if i >= n:
            return -1
        c = b[i]
        if c == 123 or c == 91:
            if depth >= 62:
                return -1
            is_obj = 1 if c == 123 else 0
            stack = (stack << 1) | is_obj
            depth += 1
            i = ws(b, i + 1, n)
            if i >= n:
                return -1
            if b[i] == (125 if is_obj else 93):
                i += 1
                depth -= 1
                stack >>= 1
            else:
                if is_obj:
                    i = _key_colon(b, i, n)
                    if i < 0:
                        return -1
                continue
        else:
            i = _scalar_end(b, i, n)
            if i < 0:
                return -1
        # after a complete value: close containers or move to the next member
        while True:
            if depth == 0:
                return i
            i = ws(b, i, n)
            if i >= n:
                return -1
            c = b[i]
            if c == 44:
                i += 1
                if stack & 1:
                    i = _key_colon(b, ws(b, i, n), n)
                    if i < 0:
                        return -1
                break
            if c == (125 if stack & 1 else 93):
                i += 1
                depth -= 1
                stack >>= 1
                continue
            return -1


@njit(cache=True, _nrt=False)
def key_slot(b, s, e):
    """Slot number of the key text b[s:e], or -1 if the key is not tracked."""
    ln = e - s
    if ln == 1:
        c = b[s]
        return _KEY1[c] if c < 128 else -1
    if ln == 4:
        if eq(b, s, e, _K_DATA):
            return SL_DATA
        if eq(b, s, e, _K_BIDS):
            return SL_BIDS
        if eq(b, s, e, _K_ASKS):
            return SL_ASKS
        return -1
    if ln == 6 and eq(b, s, e, _K_STREAM):
        return SL_STREAM
    if ln == 12 and eq(b, s, e, _K_LAST):
        return SL_LAST
    return -1


@njit(cache=True, _nrt=False)
def scan_object(b, i, n, A, fbase, gen, dbase, raw, rawcap):
    """Validate the object at b[i] ('{'); record tracked keys at A[fbase + slot*4 ...] as
    [gen, type, start, end] (a string's start/end exclude its quotes; others span the token).
    With dbase >= 0, the members of an object under the key "data" (the combined-stream
    wrapper) are recorded at dbase in the same single pass, and "data" itself at fbase.
    With raw >= 0, "b" and "a" arrays of [price, qty] pairs are read by levels_raw as they are
    validated (no second pass): side s (0 b, 1 a) gets A[raw + 3s : raw + 3s + 3] = [gen, base
    of the object it belongs to, count] and its levels at raw + 8 + s * 4 * rawcap.
    Returns the index after the object, or -1."""
    cur = fbase
    level = 0
    dstart = 0
    i = ws(b, i + 1, n)
    if i < n and b[i] == 125:
        return i + 1
    while True:
        if i >= n or b[i] != 34:
            return -1
        ke = string_end(b, i, n)
        if ke < 0:
            return -1
        slot = key_slot(b, i + 1, ke)
        i = ws(b, ke + 1, n)
        if i >= n or b[i] != 58:
            return -1
        i = ws(b, i + 1, n)
        if i >= n:
            return -1
        vs = i
        c = b[i]
        if level == 0 and slot == SL_DATA and c == 123 and dbase >= 0:
            if A[fbase + SL_DATA * FIELD_WORDS] == gen:
                return -1
            dstart = i
            i = ws(b, i + 1, n)
            if i >= n:
                return -1
            if b[i] != 125:
                level = 1                      # descend: members of "data" come next
                cur = dbase
                continue
            i += 1                             # "data":{} - recorded below as closed
            o = fbase + SL_DATA * FIELD_WORDS
            A[o] = gen
            A[o + 1] = T_OBJ
            A[o + 2] = dstart
            A[o + 3] = i
        else:
            if c == 34:
                typ = T_STR
                e = string_end(b, i, n)
                if e < 0:
                    return -1
                i = e + 1
                vs += 1
            else:
                if c == 123:
                    typ = T_OBJ
                    i = skip_value(b, i, n)
                elif c == 91:
                    typ = T_ARR
                    side = 0 if slot == SL_B else (1 if slot == SL_A else -1)
                    if raw >= 0 and side >= 0:
                        e, cnt = levels_raw(b, i, n, A, raw + 8 + side * 4 * rawcap, rawcap)
                        if e >= 0:
                            r = raw + 3 * side
                            A[r] = gen
                            A[r + 1] = cur
                            A[r + 2] = cnt
                            i = e
                        else:
                            i = skip_value(b, i, n)
                    else:
                        i = skip_value(b, i, n)
                else:
                    typ = T_NUM if (c == 45 or 48 <= c <= 57) else \
                        (T_TRUE if c == 116 else (T_FALSE if c == 102 else T_NULL))
                    i = _scalar_end(b, i, n)
                if i < 0:
                    return -1
                e = i
            if slot >= 0:
                o = cur + slot * FIELD_WORDS
                if A[o] == gen:
                    return -1                  # duplicate tracked key: orjson keeps the last
                A[o] = gen
                A[o + 1] = typ
                A[o + 2] = vs
                A[o + 3] = e
        # after a member: next member, or close this object (and maybe "data")
        while True:
            i = ws(b, i, n)
            if i >= n:
                return -1
            if b[i] == 44:
                i = ws(b, i + 1, n)
                break
            if b[i] != 125:
                return -1
            i += 1
            if level == 0:
                return i
            level = 0
            cur = fbase
            o = fbase + SL_DATA * FIELD_WORDS
            A[o] = gen
            A[o + 1] = T_OBJ
            A[o + 2] = dstart
            A[o + 3] = i


@njit(cache=True, _nrt=False)
def symbol_hash(b, s, e):
    """FNV-1a over b[s:e] (wrapping int64 arithmetic), folded to a non-negative value."""
    h = 1469598103934665603
    for j in range(s, e):
        h = (h ^ b[j]) * 1099511628211
    return (h ^ (h >> 29)) & 0x3FFFFFFFFFFFFFFF

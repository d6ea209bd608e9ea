"""The Binance fast-path kernel: one raw frame in, records and book changes out, in one @njit
call. Feed process, HOT PATH (no allocation, no exceptions: return codes and counters).

Everything lives in one int64 "arena" (one argument to unbox per call: a numba call costs about
1 us here plus ~0.3 us per extra array argument). Layout, from ``H_OFF_*`` header words:

    header     HEADER words: sizes, offsets, the frame generation, results of a declined frame
    counters   N_CNT words, folded into FeedStats by the handler (CNT_FIELDS order)
    fields     2 x N_SLOTS x 4: key positions of the outer object and of ``data``
    instr      IW words per instrument: id, mode, update id, fresh, last rx, level counts,
               ticker queue head/count, dirty, symbol bytes, price and qty scale tables
    hash       HSIZE words: symbol hash -> instrument index + 1 (open addressing, 0 empty)
    book       per instrument and side: CAP keys then CAP quantities; key = -px*sign i.e. px for
               bids, -px for asks, ascending, so the best level is the LAST one and the usual
               near-the-top insert or delete moves few words
    tickers    per instrument QCAP x 5 (u, bid px, bid qty, ask px, ask qty), a ring
    raw        8 + 4 x out capacity: "b" and "a" levels as read by the scanner (digits and
               fraction digits of each number), half the out capacity per side
    scratch    2 x out capacity: a diff's levels in ticks and lots, all converted and checked
               before any is applied
    out        the MARKET_DTYPE records (8 words each); the handler's ``out`` is a view of it

Return value: n >= 0 records written (the frame is fully handled and counted), or
``-(code + 8 * (k + 1))`` with k the instrument index (-1 if unknown) and code DECLINE (nothing
was changed or counted: the exact Python path handles the frame), ADOPT (a depth or ticker
message for an instrument whose book the kernel does not hold) or CROSSED (the diff was applied
and counted, ``H_RES_N`` records written, and the book is now crossed: the handler invalidates
it as the exact path does).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from feeds._numtext import MAX_FRAC, SCALE_WORDS, scale_raw, units, ws
from feeds._scan import (FIELD_WORDS, N_SLOTS, SL_A, SL_AA, SL_B, SL_BB, SL_DATA, SL_E, SL_EE,
                         SL_LAST, SL_M, SL_P, SL_Q, SL_S, SL_T, SL_TT, SL_U, SL_UU, T_ARR,
                         T_FALSE, T_NULL, T_NUM, T_OBJ, T_STR, T_TRUE, eq, scan_object,
                         symbol_hash, uint_value)
from feeds.handler import MS_MAX
from shm.records import MFLAG_LAST_IN_BATCH, MSG_LEVEL, MSG_TOP, MSG_TRADE

DECLINE, ADOPT, CROSSED = 1, 2, 3
MODE_SLOW, MODE_FAST = 0, 1

(H_NINST, H_CAP, H_QCAP, H_OUTCAP, H_BASEFL, H_EMIT_TOPS, H_HMASK, H_GEN, H_COMPLETE,
 H_RES_N, H_RES_EXCH, H_OFF_CNT, H_OFF_FIELDS, H_OFF_INST, H_OFF_HASH, H_OFF_BOOK, H_OFF_TQ,
 H_OFF_SCR, H_OFF_OUT, H_OFF_RAW, H_RAWCAP) = range(21)
HEADER = 32

CNT_FIELDS = ("messages", "book_updates", "trades", "tops", "ignored", "unknown_symbol",
              "dropped_stale_diffs", "oracle_match", "oracle_mismatch", "oracle_skipped",
              "records")
(C_MSG, C_UPD, C_TRADES, C_TOPS, C_IGN, C_UNK, C_STALE, C_OK, C_BAD, C_SKIP, C_REC) = range(11)
C_FAST = 11                 # frames handled entirely in the kernel (not a FeedStats field)
N_CNT = 16

(I_IID, I_MODE, I_UID, I_FRESH, I_LASTRX, I_NB, I_NA, I_QHEAD, I_QCOUNT, I_DIRTY,
 I_SYMLEN) = range(11)
I_SYM = 11                  # 4 words: up to 32 symbol bytes
SYM_MAX = 32
I_PX = 16                   # price scale table (SCALE_WORDS), then the qty table
I_QTY = I_PX + SCALE_WORDS
IW = I_QTY + SCALE_WORDS

_DEPTH = np.frombuffer(b"depthUpdate", dtype=np.uint8).copy()
_TRADE = np.frombuffer(b"trade", dtype=np.uint8).copy()
_AGG = np.frombuffer(b"aggTrade", dtype=np.uint8).copy()
_FLAG_LAST_SHIFTED = MFLAG_LAST_IN_BATCH << 16
assert MAX_FRAC == 18


@njit(cache=True, _nrt=False, inline="always")
def _code(code, k):
    return -(code + 8 * (k + 1))


@njit(cache=True, _nrt=False, inline="always")
def _put(A, o, kind, side, flags, iid, exch, recv, px, qty, aux0, aux1):
    """One MARKET_DTYPE record at A[o:o+8] (little endian: kind, side, flags, id share word 1)."""
    A[o] = 0
    A[o + 1] = kind | (side << 8) | (flags << 16) | (iid << 32)
    A[o + 2] = exch
    A[o + 3] = recv
    A[o + 4] = px
    A[o + 5] = qty
    A[o + 6] = aux0
    A[o + 7] = aux1


@njit(cache=True, _nrt=False, inline="always")
def _present(A, F, slot, gen):
    return A[F + slot * FIELD_WORDS] == gen


@njit(cache=True, _nrt=False, inline="always")
def _type(A, F, slot, gen):
    o = F + slot * FIELD_WORDS
    return A[o + 1] if A[o] == gen else 0


@njit(cache=True, _nrt=False)
def _int_field(b, A, F, slot, gen):
    o = F + slot * FIELD_WORDS
    if A[o] != gen or A[o + 1] != T_NUM:
        return -1
    return uint_value(b, A[o + 2], A[o + 3])


@njit(cache=True, _nrt=False)
def _units_field(b, A, F, slot, gen, tab):
    o = F + slot * FIELD_WORDS
    if A[o] != gen or A[o + 1] != T_STR:
        return -1
    return units(b, A[o + 2], A[o + 3], A, tab)


@njit(cache=True, _nrt=False)
def lookup_symbol(b, s, e, A):
    """Instrument index of the symbol text b[s:e], or -1."""
    mask = A[H_HMASK]
    hb = A[H_OFF_HASH]
    ib = A[H_OFF_INST]
    ln = e - s
    h = symbol_hash(b, s, e) & mask
    while True:
        k = A[hb + h] - 1
        if k < 0:
            return -1
        I = ib + k * IW
        if A[I + I_SYMLEN] == ln:
            same = True
            for j in range(ln):
                if ((A[I + I_SYM + (j >> 3)] >> ((j & 7) << 3)) & 255) != b[s + j]:
                    same = False
                    break
            if same:
                return k
        h = (h + 1) & mask


@njit(cache=True, _nrt=False)
def _set_level(A, kb, cap, I, ncount, v, qty):
    """Set the level with key v to qty (0 removes); 1 if the book changed. Capacity for an
    insert was checked by the caller."""
    n = A[I + ncount]
    qb = kb + cap
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if A[kb + mid] < v:
            lo = mid + 1
        else:
            hi = mid
    if lo < n and A[kb + lo] == v:
        if qty == 0:
            for j in range(lo, n - 1):
                A[kb + j] = A[kb + j + 1]
                A[qb + j] = A[qb + j + 1]
            A[I + ncount] = n - 1
            return 1
        if A[qb + lo] == qty:
            return 0
        A[qb + lo] = qty
        return 1
    if qty == 0:
        return 0                  # removing a level we do not have is normal (Binance docs)
    for j in range(n, lo, -1):
        A[kb + j] = A[kb + j - 1]
        A[qb + j] = A[qb + j - 1]
    A[kb + lo] = v
    A[qb + lo] = qty
    A[I + ncount] = n + 1
    return 1


@njit(cache=True, _nrt=False)
def _oracle(A, k, I, bp, bq, ap, aq):
    """bookTicker (bp, bq, ap, aq) against the local best bid/ask (-1, 0 for an empty side)."""
    cap = A[H_CAP]
    kb = A[H_OFF_BOOK] + k * 4 * cap
    ka = kb + 2 * cap
    nb = A[I + I_NB]
    na = A[I + I_NA]
    lbp, lbq, lap, laq = -1, 0, -1, 0
    if nb > 0:
        lbp = A[kb + nb - 1]
        lbq = A[kb + cap + nb - 1]
    if na > 0:
        lap = -A[ka + na - 1]
        laq = A[ka + cap + na - 1]
    c = A[H_OFF_CNT]
    if lbp == bp and lbq == bq and lap == ap and laq == aq:
        A[c + C_OK] += 1
    else:
        A[c + C_BAD] += 1


@njit(cache=True, _nrt=False)
def _check_waiting_tickers(A, k, I):
    qcap = A[H_QCAP]
    tq = A[H_OFF_TQ] + k * qcap * 5
    uid = A[I + I_UID]
    while A[I + I_QCOUNT] > 0:
        h = A[I + I_QHEAD]
        o = tq + h * 5
        if A[o] > uid:
            break
        A[I + I_QHEAD] = (h + 1) % qcap
        A[I + I_QCOUNT] -= 1
        if A[o] == uid:
            _oracle(A, k, I, A[o + 1], A[o + 2], A[o + 3], A[o + 4])
        else:
            A[A[H_OFF_CNT] + C_SKIP] += 1


@njit(cache=True, _nrt=False)
def _diff(b, A, F, gen, k, recv):
    I = A[H_OFF_INST] + k * IW
    U = _int_field(b, A, F, SL_UU, gen)
    u = _int_field(b, A, F, SL_U, gen)
    E = _int_field(b, A, F, SL_EE, gen)
    if U < 0 or u < U or E < 0 or E > MS_MAX or _type(A, F, SL_B, gen) != T_ARR \
            or _type(A, F, SL_A, gen) != T_ARR:
        return _code(DECLINE, k)
    raw = A[H_OFF_RAW]
    if A[raw] != gen or A[raw + 1] != F or A[raw + 3] != gen or A[raw + 4] != F:
        return _code(DECLINE, k)           # "b" / "a" not plain [price, qty] string pairs
    nb = A[raw + 2]
    na = A[raw + 5]
    if nb + na > A[H_OUTCAP] - 8:
        return _code(DECLINE, k)
    scr = A[H_OFF_SCR]
    pt = I + I_PX
    qt = I + I_QTY
    rawcap = A[H_RAWCAP]
    for j in range(nb + na):
        o = raw + 8 + (4 * j if j < nb else 4 * (rawcap + j - nb))
        px = scale_raw(A[o], A[o + 1], A, pt)
        qty = scale_raw(A[o + 2], A[o + 3], A, qt)
        if px < 0 or qty < 0:
            return _code(DECLINE, k)
        A[scr + 2 * j] = px
        A[scr + 2 * j + 1] = qty
    if A[I + I_MODE] != MODE_FAST:
        return _code(ADOPT, k)
    c = A[H_OFF_CNT]
    uid = A[I + I_UID]
    if u <= uid:
        A[c + C_MSG] += 1
        A[c + C_STALE] += 1
        return 0
    if A[I + I_FRESH]:
        ok = U <= uid + 1
    else:
        ok = U == uid + 1
    cap = A[H_CAP]
    if not ok or A[I + I_NB] + nb > cap or A[I + I_NA] + na > cap:
        return _code(DECLINE, k)       # a gap (or a book too deep): the exact path decides
    A[I + I_FRESH] = 0
    kb = A[H_OFF_BOOK] + k * 4 * cap
    out = A[H_OFF_OUT]
    head = MSG_LEVEL | (A[H_BASEFL] << 16) | (A[I + I_IID] << 32)
    exch = E * 1_000_000
    r = 0
    for j in range(nb + na):
        px = A[scr + 2 * j]
        qty = A[scr + 2 * j + 1]
        if j < nb:
            changed = _set_level(A, kb, cap, I, I_NB, px, qty)
            side = 1
        else:
            changed = _set_level(A, kb + 2 * cap, cap, I, I_NA, -px, qty)
            side = 2
        if changed:
            o = out + r * 8
            A[o] = 0
            A[o + 1] = head | (side << 8)
            A[o + 2] = exch
            A[o + 3] = recv
            A[o + 4] = px
            A[o + 5] = qty
            A[o + 6] = u
            A[o + 7] = -1
            r += 1
    A[I + I_UID] = u
    A[I + I_LASTRX] = recv
    if r:
        A[I + I_DIRTY] = 1
        A[out + (r - 1) * 8 + 1] |= _FLAG_LAST_SHIFTED
    A[c + C_MSG] += 1
    A[c + C_UPD] += r
    A[c + C_REC] += r
    nbk = A[I + I_NB]
    nak = A[I + I_NA]
    if nbk > 0 and nak > 0 and A[kb + nbk - 1] >= -A[kb + 2 * cap + nak - 1]:
        A[H_RES_N] = r
        A[H_RES_EXCH] = exch
        return _code(CROSSED, k)
    if A[I + I_QCOUNT] > 0:
        _check_waiting_tickers(A, k, I)
    return r


@njit(cache=True, _nrt=False)
def _trade(b, A, F, gen, k, id_slot, recv):
    if k < 0:
        return _code(DECLINE, k)
    I = A[H_OFF_INST] + k * IW
    px = _units_field(b, A, F, SL_P, gen, I + I_PX)
    qty = _units_field(b, A, F, SL_Q, gen, I + I_QTY)
    t = _int_field(b, A, F, SL_TT, gen)
    tid = _int_field(b, A, F, id_slot, gen)
    m = _type(A, F, SL_M, gen)
    if px < 0 or qty < 0 or t < 0 or t > MS_MAX or tid < 0 or (m != T_TRUE and m != T_FALSE):
        return _code(DECLINE, k)
    _put(A, A[H_OFF_OUT], MSG_TRADE, 2 if m == T_TRUE else 1, MFLAG_LAST_IN_BATCH | A[H_BASEFL],
         A[I + I_IID], t * 1_000_000, recv, px, qty, tid, 0)
    c = A[H_OFF_CNT]
    A[c + C_MSG] += 1
    A[c + C_TRADES] += 1
    A[c + C_REC] += 1
    return 1


@njit(cache=True, _nrt=False)
def _book_ticker(b, A, F, gen, k, recv):
    I = A[H_OFF_INST] + k * IW
    u = _int_field(b, A, F, SL_U, gen)
    bp = _units_field(b, A, F, SL_B, gen, I + I_PX)
    bq = _units_field(b, A, F, SL_BB, gen, I + I_QTY)
    ap = _units_field(b, A, F, SL_A, gen, I + I_PX)
    aq = _units_field(b, A, F, SL_AA, gen, I + I_QTY)
    if u < 0 or bp < 0 or bq < 0 or ap < 0 or aq < 0:
        return _code(DECLINE, k)
    if A[I + I_MODE] != MODE_FAST:
        return _code(ADOPT, k)
    c = A[H_OFF_CNT]
    r = 0
    if A[H_EMIT_TOPS]:
        _put(A, A[H_OFF_OUT], MSG_TOP, 0, MFLAG_LAST_IN_BATCH | A[H_BASEFL], A[I + I_IID], 0,
             recv, bp, bq, ap, aq)
        r = 1
    A[c + C_MSG] += 1
    A[c + C_TOPS] += 1
    A[c + C_REC] += r
    uid = A[I + I_UID]
    if uid == u:
        _oracle(A, k, I, bp, bq, ap, aq)
    elif uid > u:
        A[c + C_SKIP] += 1
    else:
        qcap = A[H_QCAP]
        if A[I + I_QCOUNT] >= qcap:
            A[I + I_QHEAD] = (A[I + I_QHEAD] + 1) % qcap
            A[I + I_QCOUNT] -= 1
            A[c + C_SKIP] += 1
        o = A[H_OFF_TQ] + (k * qcap + (A[I + I_QHEAD] + A[I + I_QCOUNT]) % qcap) * 5
        A[o] = u
        A[o + 1] = bp
        A[o + 2] = bq
        A[o + 3] = ap
        A[o + 4] = aq
        A[I + I_QCOUNT] += 1
    return r


@njit(cache=True, _nrt=False)
def feed_kernel(b, A, recv):
    """One websocket frame (bytes) -> records in the arena's out area; see the module doc."""
    n = len(b)
    gen = A[H_GEN] + 1
    A[H_GEN] = gen
    FT = A[H_OFF_FIELDS]
    i = ws(b, 0, n)
    if i >= n or b[i] != 123:
        return _code(DECLINE, -1)
    FD = FT + N_SLOTS * FIELD_WORDS
    end = scan_object(b, i, n, A, FT, gen, FD, A[H_OFF_RAW], A[H_RAWCAP])
    if end < 0 or ws(b, end, n) != n:
        return _code(DECLINE, -1)
    F = FT
    td = _type(A, FT, SL_DATA, gen)
    if td == T_OBJ:
        F = FD
    elif td != 0 and td != T_NULL:
        return _code(DECLINE, -1)          # "data" that is not an object: a parse error
    te = _type(A, F, SL_E, gen)
    kind = 0                               # 1 depth, 2 trade, 3 aggTrade, 4 bookTicker
    if te == T_STR:
        o = F + SL_E * FIELD_WORDS
        s, e = A[o + 2], A[o + 3]
        if eq(b, s, e, _DEPTH):
            kind = 1
        elif eq(b, s, e, _TRADE):
            kind = 2
        elif eq(b, s, e, _AGG):
            kind = 3
    elif te == 0 or te == T_NULL:
        if _present(A, F, SL_BB, gen) and _present(A, F, SL_U, gen):
            kind = 4
        elif _present(A, F, SL_LAST, gen):
            return _code(DECLINE, -1)      # a REST body or partial depth: the exact path
    c = A[H_OFF_CNT]
    if kind == 0:
        A[c + C_MSG] += 1
        A[c + C_IGN] += 1
        A[c + C_FAST] += 1
        return 0
    if (kind == 2 and not _present(A, F, SL_T, gen)) or \
            (kind == 3 and not _present(A, F, SL_A, gen)) or _type(A, F, SL_S, gen) != T_STR:
        return _code(DECLINE, -1)
    o = F + SL_S * FIELD_WORDS
    k = lookup_symbol(b, A[o + 2], A[o + 3], A)
    if k < 0:
        if not A[H_COMPLETE]:
            return _code(DECLINE, -1)
        A[c + C_MSG] += 1
        A[c + C_UNK] += 1
        A[c + C_FAST] += 1
        return 0
    if kind == 1:
        r = _diff(b, A, F, gen, k, recv)
    elif kind == 4:
        r = _book_ticker(b, A, F, gen, k, recv)
    else:
        r = _trade(b, A, F, gen, k, SL_T if kind == 2 else SL_A, recv)
    if r >= 0:
        A[c + C_FAST] += 1
    return r

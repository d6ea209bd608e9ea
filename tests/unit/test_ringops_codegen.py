"""The ring kernels compile without reference-count traffic.

numba counts references on array arguments with atomic read-modify-writes and prunes the pairs
it can match; where it cannot (a loop with ``break`` over array arguments is enough), every call
pays them: ~55 ns for an empty poll instead of ~1 ns, and most of a one-way hand-over. Each
kernel is compiled afresh (the disk cache hides the IR) and its LLVM IR is searched for calls
into NRT_incref / NRT_decref outside numba's Python wrappers.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit, types

from shm import ringops as ops

I64 = types.int64
ARR1 = types.int64[::1]
ARR2 = types.int64[:, ::1]

KERNELS = {
    # address-level cores (stage kernels reach them through the shims, Python through ring.py)
    "spsc_publish_at": (I64, I64, I64),
    "spsc_poll_at": (I64, I64, I64),
    "spsc_peek_at": (I64, I64, I64),
    "spsc_commit_at": (I64, I64),
    "spsc_free_at": (I64,),
    "spsc_available_at": (I64,),
    "bcast_publish_at": (I64, I64, I64),
    "bcast_poll_at": (I64, I64, I64),
    "bcast_available_at": (I64,),
    "set_parked_at": (I64, I64),
    "spsc_poll_into": (I64, I64, I64),
    "bcast_poll_into": (I64, I64, I64),
    "spsc_publish_from": (I64, I64, I64, I64),
    "bcast_publish_from": (I64, I64, I64, I64),
    # the array shims stage kernels call
    "spsc_publish": (ARR1, ARR2, ARR2, I64),
    "spsc_poll": (ARR1, ARR2, ARR2, I64),
    "spsc_peek": (ARR1, ARR2, ARR2, I64),
    "spsc_commit": (ARR1, I64),
    "spsc_free": (ARR1,),
    "spsc_available": (ARR1, ARR2),
    "bcast_publish": (ARR1, ARR2, ARR2, I64),
    "bcast_poll": (ARR1, ARR2, ARR2, I64),
    "bcast_available": (ARR1, ARR2),
    "set_parked": (ARR1, I64),
}

_DEFINE = re.compile(r"^define [^@]*@\"?([^\"(]+)\"?\(", re.M)


def _refcount_calls(ir: str) -> dict[str, int]:
    """Calls to the reference counter per function defined in ``ir``, skipping numba's
    cpython / cfunc wrappers (they box and unbox for the interpreter, outside the hot path)."""
    starts = [(m.start(), m.group(1)) for m in _DEFINE.finditer(ir)]
    found = {}
    for i, (pos, name) in enumerate(starts):
        if name.startswith(("cpython.", "cfunc.", "_ZN7cpython")):
            continue
        body = ir[pos: starts[i + 1][0] if i + 1 < len(starts) else len(ir)]
        n = len(re.findall(r"call [^\n]*@NRT_(?:incref|decref)\(", body))
        if n:
            found[name] = n
    return found


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_ring_kernel_has_no_reference_counting(name):
    fresh = njit(getattr(ops, name).py_func)
    fresh.compile(KERNELS[name])
    ir = fresh.inspect_llvm(KERNELS[name])
    assert _DEFINE.search(ir), "no function definitions found in the IR"
    assert _refcount_calls(ir) == {}


def test_the_check_finds_reference_counting_where_numba_leaves_it():
    # the pattern the kernels avoid: a loop with break over array arguments
    def poll_like(st, slots, dst, max_n):
        n = 0
        while n < max_n:
            if slots[n, 0] != st[0] + n + 1:
                break
            for w in range(1, slots.shape[1]):
                dst[n, w] = slots[n, w]
            n += 1
        if n > 0:
            st[0] += n
        return n

    sig = (ARR1, ARR2, ARR2, I64)
    fresh = njit(poll_like)
    fresh.compile(sig)
    assert _refcount_calls(fresh.inspect_llvm(sig))
    st, slots = np.zeros(4, np.int64), np.zeros((4, 8), np.int64)
    slots[:, 0] = np.arange(1, 5)
    assert fresh(st, slots, np.zeros((4, 8), np.int64), 4) == 4

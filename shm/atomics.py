"""Memory-ordering primitives for numba code: acquire loads, release stores, fences, CAS.

Hot path; used from @njit kernels in every process that touches a ring or a status block.

Why intrinsics and not plain array reads: a plain load or store in numba is a plain LLVM
load/store, which the compiler may reorder, hoist out of a polling loop, or merge. An LLVM
``load atomic ... acquire`` / ``store atomic ... release`` is not moved across, so
  - the writer's payload stores become visible before its release store of the commit word, and
  - the reader's payload loads happen after its acquire load of the commit word.
On x86-64 (TSO) both compile to plain MOVs: the cost is only lost compiler freedom. On AArch64
they become LDAR/STLR. ``fence_seq_cst`` is the StoreLoad barrier (MFENCE / DMB ISH) that the
blocking idle strategy's "is a reader parked?" handshake needs.

All addresses are raw integers (``array.ctypes.data + byte_offset``), 8-byte aligned.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)


def _ptr(builder, addr):
    return builder.inttoptr(addr, _I64.as_pointer())


@intrinsic
def load_acquire(typingctx, addr):
    """int64 load with acquire ordering from the 8-byte aligned address ``addr``."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_ptr(builder, args[0]), "acquire", 8)

    return types.int64(addr), codegen


@intrinsic
def load_relaxed(typingctx, addr):
    """int64 atomic load, no ordering: a fresh read every time (not hoisted out of loops)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_ptr(builder, args[0]), "monotonic", 8)

    return types.int64(addr), codegen


@intrinsic
def store_release(typingctx, addr, value):
    """int64 store with release ordering: every earlier store is visible before this one."""
    if not isinstance(addr, types.Integer) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[1], sig.args[1], types.int64)
        builder.store_atomic(val, _ptr(builder, args[0]), "release", 8)
        return context.get_dummy_value()

    return types.void(addr, value), codegen


@intrinsic
def store_relaxed(typingctx, addr, value):
    """int64 atomic store, no ordering (a counter only its owner writes, read by monitors)."""
    if not isinstance(addr, types.Integer) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[1], sig.args[1], types.int64)
        builder.store_atomic(val, _ptr(builder, args[0]), "monotonic", 8)
        return context.get_dummy_value()

    return types.void(addr, value), codegen


@intrinsic
def peek(typingctx, base, index):
    """Plain int64 load of word ``index`` at address ``base`` (process-private state only:
    the compiler may keep it in a register, so never use it on a word another process
    writes)."""
    if not isinstance(base, types.Integer) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.int64)
        addr = builder.add(args[0], builder.mul(i, ir.Constant(_I64, 8)))
        return builder.load(_ptr(builder, addr), align=8)

    return types.int64(base, index), codegen


@intrinsic
def poke(typingctx, base, index, value):
    """Plain int64 store to word ``index`` at address ``base`` (process-private state, or a
    payload word that a later store_release publishes)."""
    if not all(isinstance(a, types.Integer) for a in (base, index, value)):
        return None

    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.int64)
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        addr = builder.add(args[0], builder.mul(i, ir.Constant(_I64, 8)))
        builder.store(val, _ptr(builder, addr), align=8)
        return context.get_dummy_value()

    return types.void(base, index, value), codegen


def _copy(nbytes):
    @intrinsic
    def copy(typingctx, dst, src):
        if not isinstance(dst, types.Integer) or not isinstance(src, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            i8p = ir.IntType(8).as_pointer()
            d = builder.inttoptr(args[0], i8p)
            s = builder.inttoptr(args[1], i8p)
            # a constant-size memcpy is expanded inline into a few vector moves
            cgutils.raw_memcpy(builder, d, s, ir.Constant(_I64, nbytes), 1, align=8)
            return context.get_dummy_value()

        return types.void(dst, src), codegen

    copy.__doc__ = f"Copy {nbytes} bytes between two 8-byte aligned addresses (plain moves)."
    return copy


copy_56 = _copy(56)   # a 64-byte record's payload after its commit word
copy_64 = _copy(64)   # each further cache line of a larger record


def _fence(ordering):
    @intrinsic
    def fence(typingctx):
        def codegen(context, builder, sig, args):
            builder.fence(ordering)
            return context.get_dummy_value()

        return types.void(), codegen

    return fence


fence_acquire = _fence("acquire")
fence_release = _fence("release")
fence_seq_cst = _fence("seq_cst")


@intrinsic
def cas(typingctx, addr, expected, desired):
    """Compare-and-swap (seq_cst). Returns the value found; success iff it equals ``expected``."""
    if not all(isinstance(a, types.Integer) for a in (addr, expected, desired)):
        return None

    def codegen(context, builder, sig, args):
        exp = context.cast(builder, args[1], sig.args[1], types.int64)
        des = context.cast(builder, args[2], sig.args[2], types.int64)
        pair = builder.cmpxchg(_ptr(builder, args[0]), exp, des, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.int64(addr, expected, desired), codegen


@intrinsic
def fetch_add(typingctx, addr, delta):
    """Atomic add (seq_cst); returns the previous value."""
    if not isinstance(addr, types.Integer) or not isinstance(delta, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        d = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.atomic_rmw("add", _ptr(builder, args[0]), d, "seq_cst")

    return types.int64(addr, delta), codegen


@intrinsic
def cpu_relax(typingctx):
    """The x86 PAUSE hint inside spin loops (saves power, frees the sibling hyperthread)."""

    def codegen(context, builder, sig, args):
        import platform

        # numba's JIT has no inline-asm parser, so call the LLVM intrinsic for PAUSE instead.
        if platform.machine() in ("x86_64", "AMD64"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def sched_yield(typingctx):
    """sched_yield(2) from @njit code: a spinning loop gives its core away without returning
    to Python (~0.8 us). Declared as the external libc symbol by name (not a ctypes pointer),
    so functions using it stay cacheable on disk."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sched_yield")
        return builder.call(fn, [])

    return types.int32(), codegen


__all__ = [
    "sched_yield", "peek", "poke", "copy_56", "copy_64",
    "load_acquire", "load_relaxed", "store_release", "store_relaxed", "fence_acquire",
    "fence_release", "fence_seq_cst", "cas", "fetch_add", "cpu_relax", "cgutils",
]

"""CPU atomics on uint64 array elements, as Numba intrinsics.

Numba has no atomic operations for CPU code, and the dirty bitmap needs them:

* A writer sets a page's bit with a read-modify-write. Two writers setting
  different bits of the same 64-bit word with a plain load/OR/store can lose
  one of the bits (both load the old word, each stores its own OR).
* The sender harvests a word by reading it and clearing it. Done as a plain
  load then a plain store of 0, a bit set by a writer between the two is wiped
  out and its page is never resent: the destination silently keeps a stale
  page. An atomic exchange reads and clears in one indivisible step.
* Ordering: on x86 a later load may pass an earlier store to another address,
  and LLVM may reorder or merge non-atomic accesses (or keep a word in a
  register across a loop). Sequentially consistent read-modify-writes are
  full barriers on both levels, so "write page bytes, then set bit" in the
  writer and "clear bit, then copy page bytes" in the sender stay in that
  order as observed by the other thread.

Each intrinsic takes a C-contiguous uint64 array, an index and (for the RMWs)
a value, and emits one LLVM atomic instruction on that element.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _element_pointer(context, builder, array_type, array_value, index_type, index_value):
    array = context.make_array(array_type)(context, builder, array_value)
    index = context.cast(builder, index_value, index_type, types.intp)
    return cgutils.get_item_pointer(context, builder, array_type, array, [index])


def _check_uint64_array(array_type):
    if not (isinstance(array_type, types.Array) and array_type.dtype == types.uint64 and array_type.ndim == 1):
        raise TypeError(f"atomics need a 1-d uint64 array, got {array_type}")


def _rmw_intrinsic(operation):
    def typer(typingctx, array, index, value):
        _check_uint64_array(array)

        def codegen(context, builder, signature, args):
            array_value, index_value, value_value = args
            pointer = _element_pointer(
                context, builder, signature.args[0], array_value, signature.args[1], index_value
            )
            operand = context.cast(builder, value_value, signature.args[2], types.uint64)
            return builder.atomic_rmw(operation, pointer, operand, "seq_cst")

        return types.uint64(array, index, value), codegen

    return intrinsic(typer)


atomic_or = _rmw_intrinsic("or")
atomic_or.__doc__ = "atomic_or(array, index, value) -> old value: array[index] |= value, atomically."

atomic_and = _rmw_intrinsic("and")
atomic_and.__doc__ = "atomic_and(array, index, value) -> old value: array[index] &= value, atomically."

atomic_xchg = _rmw_intrinsic("xchg")
atomic_xchg.__doc__ = "atomic_xchg(array, index, value) -> old value: array[index] = value, atomically."


@intrinsic
def atomic_load(typingctx, array, index):
    """atomic_load(array, index) -> array[index], read with an atomic (acquire) load."""
    _check_uint64_array(array)

    def codegen(context, builder, signature, args):
        array_value, index_value = args
        pointer = _element_pointer(context, builder, signature.args[0], array_value, signature.args[1], index_value)
        return builder.load_atomic(pointer, "acquire", 8)

    return types.uint64(array, index), codegen

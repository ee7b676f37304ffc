"""A byte copy between uint8 arrays that compiles to the C library's memcpy.

A Numba slice assignment of one 4 KiB page runs a byte loop that is several
times slower than memcpy; `llvm.memcpy` with a run-time length lowers to a call
of the platform memcpy, which uses the widest vector moves the CPU has.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def copy_bytes(typingctx, dst, dst_offset, src, src_offset, nbytes):
    """copy_bytes(dst, dst_offset, src, src_offset, nbytes): dst[dst_offset:+n] = src[src_offset:+n].

    Both arrays are 1-d C-contiguous uint8; the caller guarantees the ranges are
    in bounds and do not overlap.
    """
    for array in (dst, src):
        if not (isinstance(array, types.Array) and array.dtype == types.uint8 and array.ndim == 1):
            raise TypeError(f"copy_bytes needs 1-d uint8 arrays, got {array}")

    def codegen(context, builder, signature, args):
        dst_value, dst_offset_value, src_value, src_offset_value, nbytes_value = args
        dst_type, dst_offset_type, src_type, src_offset_type, nbytes_type = signature.args

        def pointer(array_type, array_value, offset_type, offset_value):
            array = context.make_array(array_type)(context, builder, array_value)
            offset = context.cast(builder, offset_value, offset_type, types.intp)
            return cgutils.get_item_pointer(context, builder, array_type, array, [offset])

        count = context.cast(builder, nbytes_value, nbytes_type, types.intp)
        cgutils.raw_memcpy(
            builder,
            pointer(dst_type, dst_value, dst_offset_type, dst_offset_value),
            pointer(src_type, src_value, src_offset_type, src_offset_value),
            count,
            1,
        )
        return context.get_dummy_value()

    return types.none(dst, dst_offset, src, src_offset, nbytes), codegen

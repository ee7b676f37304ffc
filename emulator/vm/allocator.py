"""Keep freed buffers in the process instead of returning them to the kernel.

Every received ZeroMQ message, LZ4 output and decompressed batch is a fresh
buffer of about 1 MiB. With glibc's defaults such a buffer is either mmap'ed
or carved from the heap top and trimmed back on free, so each one costs a
page fault per 4 KiB when it is first written: 256 faults per MiB, which on
a VM made LZ4 decompression run at a quarter of its speed here. Raising the
mmap and trim thresholds lets glibc reuse the same memory for the next
message. Guest memory itself (gigabytes) is still mmap'ed on its own.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30

_tuned = False


def keep_freed_buffers():
    """Tune glibc's malloc once per process; a no-op elsewhere. Returns True if tuned."""
    global _tuned
    if _tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _tuned

"""Argument checks shared by the public kernel wrappers.

Kernels run with bounds checks off, so a wrapper must reject anything a kernel
could read or write out of bounds through: wrong dtype, wrong rank, a
non-contiguous view, or an index outside the array.
"""

import numpy as np


def require_array(name, array, dtype, ndim=1, writable=False):
    """Return `array` if it is a C-contiguous ndarray of `dtype` and rank `ndim`, else raise."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (got a strided view)")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return array


def require_page_size(page_size):
    """Return `page_size` if it is a power of two of at least 64 bytes, else raise.

    Page kernels read pages as 8-word (64-byte) blocks, hence the minimum.
    """
    if not isinstance(page_size, (int, np.integer)) or page_size < 64 or page_size & (page_size - 1):
        raise ValueError(f"page size must be a power of two >= 64 bytes, got {page_size!r}")
    return int(page_size)


def require_memory(name, memory, page_size):
    """Check a flat uint8 guest memory whose length is a whole number of pages; return its page count."""
    require_array(name, memory, np.uint8)
    if memory.size % page_size:
        raise ValueError(f"{name} holds {memory.size} bytes, not a whole number of {page_size}-byte pages")
    return memory.size // page_size


def require_pages_in_range(name, pages, n_pages):
    """Check that every page number in `pages` is in [0, n_pages)."""
    if pages.size and (pages.min() < 0 or pages.max() >= n_pages):
        raise IndexError(f"{name} holds page numbers outside [0, {n_pages}): min {pages.min()}, max {pages.max()}")

"""CPU helpers for the fast PyTorch paths.

Large outputs on Linux are allocated with transparent-huge-page advice: ``torch.empty`` reserves
address space without touching it, and ``madvise(MADV_HUGEPAGE)`` on the 2 MiB-aligned part asks the
kernel to back it with 2 MiB pages on first write. A 64 MiB output then takes ~32 page faults
instead of ~16k, which at long sequence lengths is a large part of a memory-bound scan's time
(PyTorch's own allocator does the same when ``THP_MEM_ALLOC_ENABLE=1`` is set before it starts).
It changes only how memory is mapped, never values. ``KERNELS_HUGEPAGES=0`` turns it off; it is a
no-op where ``madvise`` is unavailable or the system's THP mode is ``never``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["empty_cpu", "HUGEPAGE_MIN_BYTES"]

#: Outputs at least this large get huge-page advice (smaller ones come from malloc's free lists).
HUGEPAGE_MIN_BYTES = 8 << 20
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None
_checked = False


def _get_madvise():
    global _madvise, _checked
    if _checked:
        return _madvise
    _checked = True
    if not sys.platform.startswith("linux") or os.environ.get("KERNELS_HUGEPAGES", "1") == "0":
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise = fn
    except (OSError, AttributeError):
        _madvise = None
    return _madvise


def empty_cpu(shape, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(shape, dtype, device)``; on the CPU, large buffers get huge-page advice."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type != "cpu":
        return out
    nbytes = out.numel() * out.element_size()
    if nbytes < HUGEPAGE_MIN_BYTES:
        return out
    madvise = _get_madvise()
    if madvise is None:
        return out
    ptr = out.data_ptr()
    start = -(-ptr // _HUGE) * _HUGE
    end = (ptr + nbytes) // _HUGE * _HUGE
    if end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return out

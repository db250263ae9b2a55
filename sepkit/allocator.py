"""Keep freed CPU memory in the process for reuse, instead of handing it back to the kernel.

PyTorch allocates CPU tensors with ``malloc``. glibc's malloc serves a request above its
mmap threshold (adjusted at run time, at most 32 MiB) with fresh pages that ``free``
unmaps at once, and trims the top of its heap whenever more than its trim threshold lies
free there. A training step frees and re-requests the same large buffers every time
(activations saved for backward, LSTM workspaces), so each step hands them back and then
page-faults every 4 KiB page in again, zero-filled by the kernel. Measured on DPRNN's
training step (``bench/step_time.py``'s ks16 model, batch ``[2, 32000]``, 2 threads, on
the 2-core development machine): about 450,000 minor page faults and 0.9 s of kernel
time in a 1.9 s step; with freed memory kept, about 300 faults and 1.35 s.

:func:`keep_freed_memory` raises both thresholds, so that buffers up to
``MMAP_THRESHOLD_BYTES`` come from the heap and the heap is trimmed only above
``TRIM_THRESHOLD_BYTES``: after the first steps the process reuses its own pages. The
cost is that memory freed after the peak stays with the process until it exits, which
is what a training run wants. ``sepkit train`` calls it; ``SEPKIT_KEEP_FREED_MEMORY=0``
turns it off. Other C libraries (musl, macOS, Windows) are left alone.

Inference wants the opposite: :func:`unmap_large_buffers` (``sepkit separate``) gives
every buffer of ``LARGE_BUFFER_BYTES`` or more its own mapping, returned to the kernel
when freed, so the resident memory of a long separation follows its live tensors. With
glibc's run-time threshold such buffers (a chunk's activations, 8-16 MiB each for the
paper Conv-TasNet on 4 s) come from the heap, and the small allocations made between
chunks pin them there: measured on a 10-minute file, a peak of 349-357 MiB against
320-324 MiB with it, for about 3 million page faults (2-3 s of a 40 s run). The heap
keeps up to ``INFERENCE_TRIM_THRESHOLD_BYTES`` free at its top, so the smaller buffers
every block asks for again are reused instead of faulted in again.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
LARGE_BUFFER_BYTES = 4 << 20
INFERENCE_TRIM_THRESHOLD_BYTES = 64 << 20
OPT_OUT_VARIABLE = "SEPKIT_KEEP_FREED_MEMORY"


def _glibc_function(name: str) -> ctypes._CFuncPtr | None:
    """``name`` from the process's C library when that is glibc on Linux, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Set glibc malloc's mmap and trim thresholds (see the module docstring); returns
    whether they are now set. False without glibc, when ``SEPKIT_KEEP_FREED_MEMORY=0``, or
    when glibc refuses a value."""
    return _set_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)


def unmap_large_buffers() -> bool:
    """Set glibc malloc's thresholds for inference (see the module docstring): buffers of
    ``LARGE_BUFFER_BYTES`` or more are mapped on their own and unmapped when freed.
    Returns whether they are now set; False without glibc, when
    ``SEPKIT_KEEP_FREED_MEMORY=0`` (which leaves malloc alone here too), or when glibc
    refuses a value."""
    return _set_thresholds(LARGE_BUFFER_BYTES, INFERENCE_TRIM_THRESHOLD_BYTES)


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    if os.environ.get(OPT_OUT_VARIABLE, "").strip() == "0":
        return False
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, since setting either one
    # switches off glibc's run-time adjustment of both.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def release_freed_memory() -> bool:
    """Return the free memory at the top and inside glibc's heap to the kernel
    (``malloc_trim(0)``), e.g. after a one-off large computation such as a memory probe,
    so that the process's resident memory does not keep its high-water mark; returns
    whether anything was released. False without glibc."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))

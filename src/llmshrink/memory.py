"""Keep a long block-by-block job's resident memory near what it really holds.

glibc's allocator keeps freed memory for reuse, and it raises its mmap threshold each time a
large block is freed, so the multi-megabyte tensors of a block-by-block job end up in the heap;
small long-lived tensors between them (packed weights) then pin freed pages, and resident memory
creeps up block after block while what the job holds stays flat. :func:`release_freed` hands
the heap's free pages back to the kernel (``malloc_trim``); it does nothing where the C library
is not glibc. :func:`heap_kept` does the opposite for a training loop, which frees and
allocates the same large tensors every step. :func:`available_memory` says how much a job may
still take, :func:`short_of` whether long-lived data (caches, calibration activations) would
take too much of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed() -> bool:
    """Return the allocator's free pages to the kernel; True if it could (glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


@contextlib.contextmanager
def heap_kept() -> Iterator[None]:
    """Within, glibc serves even large allocations from its heap and keeps what is freed there
    (no mmap, no trimming). A training step allocates and frees the same tensors every time
    (vocabulary-sized logits, a block's activations); served by mmap, their pages are faulted in
    afresh each step: 0.8 s of a 4.8 s distillation step on a 2-core machine. The heap settles
    at a few copies of a step's large tensors (posix_memalign asks a little more than the chunk
    last freed). On leaving, glibc's default limits come back and the free pages are returned.
    Elsewhere: nothing."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        release_freed()


def available_memory(device: str) -> int | None:
    """Bytes free for a model on ``device`` (CUDA: free device memory; CPU: the kernel's
    MemAvailable), or None where it cannot be read."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


HOLD_SHARE = 0.5  # the most of the free memory a job's long-lived data may take


def short_of(need: int, device: str, share: float = HOLD_SHARE) -> int | None:
    """The bytes free on ``device`` when ``need`` is more than ``share`` of them; None when it
    fits (or the free memory cannot be read)."""
    free = available_memory(device)
    return free if free is not None and need > share * free else None

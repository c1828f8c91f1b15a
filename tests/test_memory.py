import subprocess
import sys

import pytest
import torch

from llmshrink import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_heap_pages_go_back_to_the_kernel():
    def rss_mib():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

    # small tensors come from the heap; one allocated after them stays, so free() cannot shrink
    # the heap's top and the freed pages stay resident until they are trimmed
    freed = [torch.ones(16 * 1024) for _ in range(8000)]  # 8000 x 64 KiB = 500 MiB
    top = torch.ones(16 * 1024)
    del freed
    resident = rss_mib()
    assert memory.release_freed()
    after = rss_mib()
    assert resident - after > 300, (resident, after)
    del top


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.release_freed() is False


_HEAP_KEPT = """
import torch
from llmshrink import memory

def rss_mib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

def step():  # what a training step does: large tensors allocated, then freed
    big, other = torch.ones(64 * 2**20), torch.ones(16 * 2**20)  # 256 + 64 MiB, above glibc's mmap limit
    del big, other

start = rss_mib()
step()  # by default they are mmap'd, and unmapped when freed
assert rss_mib() - start < 100
with memory.heap_kept():
    seen = []
    for _ in range(14):
        step()
        seen.append(rss_mib())
    assert seen[0] - start > 200, (start, seen)  # freed, but the pages stay in the heap
    # reused: after a few steps (posix_memalign asks a little more than the chunk last freed)
    # the heap stops growing
    assert seen[-1] - seen[-5] < 50, seen
assert rss_mib() - start < 100  # handed back on leaving
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_within_heap_kept_freed_large_tensors_stay_for_reuse_and_go_back_on_leaving():
    # a fresh interpreter: in a long test process earlier allocations decide where large ones land
    run = subprocess.run([sys.executable, "-c", _HEAP_KEPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_heap_kept_without_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    with memory.heap_kept():
        assert torch.ones(4).sum() == 4

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

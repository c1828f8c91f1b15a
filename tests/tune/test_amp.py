import logging

import pytest
import torch

from llmshrink.tune import amp as amp_mod


class _Text:
    def __init__(self, text):
        self.text = text

    def read_text(self):
        if self.text is None:
            raise OSError("no /proc")
        return self.text


@pytest.mark.parametrize(("cpuinfo", "native"), [
    ("flags : fpu avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("flags : fpu avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ("Features : fp asimd bf16 i8mm", True),  # Arm
    ("flags : fpu avx2 avx512f avx512bw avx512vl", False),  # AVX-512 without BF16: emulated
    (None, False),  # no /proc/cpuinfo
])
def test_native_bf16_reads_the_cpu_flags(monkeypatch, cpuinfo, native):
    monkeypatch.setattr(amp_mod, "Path", lambda _: _Text(cpuinfo))
    assert amp_mod.native_bf16("cpu") is native
    assert amp_mod.native_bf16("cuda:0") is True  # GPUs: whatever the CPU


@pytest.mark.parametrize(("setting", "native", "on", "warned"), [
    ("off", True, False, False), ("auto", True, True, False), ("auto", False, False, False),
    ("on", True, True, False), ("on", False, True, True),
])
def test_use_amp_follows_the_setting_and_warns_when_bf16_is_emulated(monkeypatch, caplog, setting, native, on,
                                                                      warned):
    monkeypatch.setattr(amp_mod, "native_bf16", lambda device: native)
    with caplog.at_level(logging.INFO, logger=amp_mod.__name__):
        assert amp_mod.use_amp(setting, "cpu") is on
    assert any(r.levelno == logging.WARNING and "emulated" in r.message for r in caplog.records) is warned
    with amp_mod.amp("cpu", on):
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == (torch.bfloat16 if on else torch.float32)

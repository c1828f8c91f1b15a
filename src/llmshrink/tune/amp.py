"""bfloat16 autocast for tail fine-tuning (``--amp``): where it is native, and the context.

Under autocast the matrix products run in bfloat16 while the parameters, the optimizer state and
the loss stay float32. On a CPU with AVX512-BF16 (or AMX, or Arm's BF16) oneDNN's bfloat16 GEMMs
run about twice as fast as float32 ones; without them bfloat16 is emulated and slower, which
``--amp auto`` avoids.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def amp(device: str, on: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` (its type: cpu, cuda) when ``on`` (``--amp``)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=on)


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: a GPU, or a CPU whose flags (Linux's
    /proc/cpuinfo) name AVX512-BF16, AMX-BF16 or Arm's BF16. Elsewhere bfloat16 is emulated and
    autocast makes steps slower, not faster."""
    if torch.device(device).type != "cpu":
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def use_amp(setting: str, device: str) -> bool:
    """Whether ``--amp SETTING`` autocasts on ``device``: on, off, or auto (where bfloat16 is native)."""
    native = native_bf16(device)
    if setting == "on" and not native:
        log.warning("--amp on: this CPU has no native bfloat16 arithmetic (AVX512-BF16, AMX or Arm BF16), so bfloat16 "
                    "products are emulated and the steps get slower, not faster: --amp auto or off")
    on = setting == "on" or (setting == "auto" and native)
    if setting != "off":
        log.info("bfloat16 autocast %s (--amp %s)", "on" if on else "off: not native on this CPU", setting)
    return on

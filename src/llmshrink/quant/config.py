"""Settings of the weight quantizers (GPTQ, RTN): the grid and the solve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Config
from .grid import GRID_KINDS

# method -> what it is; every method but rtn calibrates and runs the GPTQ solve
QUANT_METHODS = {
    "gptq": "error-compensating solve on the quantized model's layer inputs",
    "gptaq": "GPTQ solved against the original model's outputs: also corrects the drift between the quantized "
             "and the original model's layer inputs (GPTQModel's v2)",
    "recon": "gptaq, then each block's rounding and scales tuned to the original block's outputs (as AutoRound "
             "does; --recon-steps)",
    "rtn": "round to nearest, no calibration",
}
GRID_METHODS = ("gptq", "gptaq", "rtn")  # the methods for every grid (recon: the GPTQ checkpoint's only)
SOLVE_DTYPES = ("auto", "float64", "float32")
WIDE = 8192  # solve_dtype auto: input columns from which the inverse Hessian is factorised in float32
AUTO_GROUP = "auto"  # ``group_size: auto``: the job picks the largest standard size dividing every width


def _group_size(text: str) -> int | str:
    return AUTO_GROUP if text.strip().lower() == AUTO_GROUP else int(text)


@dataclass
class QuantConfig(Config):
    """Weight quantization: the grid and the GPTQ solve."""

    kind: ClassVar[str] = "quantize"
    method: str = field(default="gptq", metadata={"help": "; ".join(f"{k}: {v}" for k, v in QUANT_METHODS.items()),
                                                  "choices": tuple(QUANT_METHODS)})
    bits: int = field(default=4, metadata={"help": "bits per weight: 2, 3, 4 or 8"})
    group_size: int | str = field(default=128, metadata={"help": "input columns per scale/zero group; -1 for one "
                                                           "group per row; auto: the largest of 128, 64, 32 that "
                                                           "divides every quantized layer's width (what GPTQ "
                                                           "kernels need)", "parse": _group_size})
    sym: bool = field(default=True, metadata={"help": "symmetric grid (zero point fixed mid-range); --asym: "
                                                      "fitted zero point", "negative": "asym"})
    act_order: bool = field(default=True, metadata={"help": "quantize columns in order of decreasing Hessian "
                                                            "diagonal"})
    static_groups: bool = field(default=False, metadata={"help": "fix group grids before the solve (with "
                                                                 "act_order)"})
    damp: float = field(default=0.01, metadata={"help": "damping as a fraction of the mean Hessian diagonal"})
    solve_dtype: str = field(default="auto", metadata={
        "help": f"precision of the inverse Hessian's factorisations: float64, float32 (GPTQ's reference), or "
                f"auto: float64 below {WIDE} input columns, float32 from there (a 7B model's 11008-wide "
                "down_proj: half the memory)", "choices": SOLVE_DTYPES})
    alpha: float = field(default=0.25, metadata={"help": "gptaq: the share of the input drift's correction "
                                                         "applied (GPTQModel's default 0.25)"})
    drift_solve: str = field(default="target", metadata={
        "help": "gptaq: target (GPTQ on the least-squares target W + alpha W dX X~^T H^-1) or columns (the "
                "GPTAQ paper's column-by-column update, GPTQModel's v2)", "choices": ("target", "columns")})
    recon_steps: int = field(default=100, metadata={"help": "recon: signed-gradient steps per block (one "
                                                            "calibration batch each)"})
    recon_lr: float = field(default=0.005, metadata={"help": "recon: the rounding offsets' first signed step, in grid "
                                                          "units, decaying linearly (AutoRound's 1 / its 200 steps)"})
    block_size: int = field(default=128, metadata={"help": "columns per lazy-update block", "cli": False})
    mse: bool = field(default=True, metadata={"help": "search shrunk ranges for the lowest (Hessian-weighted, "
                                                      "for GPTQ) error per group; --no-mse: plain min/max ranges"})
    grid: str = field(default="zero", metadata={"help": "zero (HF GPTQ: scale and zero point), signed (GGUF "
                                                        "Q4_0/Q5_0/Q8_0), min (GGUF Q4_1/Q5_1: scale and fp16 "
                                                        "minimum), a two-level K-quant grid (k_min4, k_min6, "
                                                        "k_signed6, k_signed8), nl4 (IQ4_NL's table) or k_nl4 (IQ4_XS)",
                                                "choices": tuple(GRID_KINDS), "cli": False})

    def __post_init__(self) -> None:
        self.one_of("method", QUANT_METHODS, "method")
        self.one_of("grid", GRID_KINDS, "grid")
        self.one_of("solve_dtype", SOLVE_DTYPES, "solve dtype")
        if self.grid == "zero":  # what GPTQ checkpoints pack; GGML grids also take 5 and 6
            self.check(self.bits in (2, 3, 4, 8), "bits", f"must be 2, 3, 4 or 8, got {self.bits!r}")
        else:
            self.check(self.bits in range(2, 9), "bits", f"must be 2 to 8 on a {self.grid} grid, got {self.bits!r}")
        gs = self.group_size
        self.check(gs == AUTO_GROUP or (isinstance(gs, int) and not isinstance(gs, bool) and (gs == -1 or gs >= 1)),
                   "group_size", f"must be -1 (one group per row), auto or >= 1, got {gs!r}")
        self.check(0 < self.damp < 1, "damp", f"must be in (0, 1), got {self.damp!r}")
        self.check(0 <= self.alpha <= 1, "alpha", f"must be in [0, 1], got {self.alpha!r}")
        self.positive("block_size")
        self.positive("recon_steps")
        self.one_of("drift_solve", ("target", "columns"), "drift solve")
        self.check(self.recon_lr > 0, "recon_lr", f"must be > 0, got {self.recon_lr!r}")
        self.check(self.method != "recon" or self.grid == "zero", "method",
                   f"recon tunes GPTQ checkpoints' grids only, not {self.grid}: use gptaq")
        base = GRID_KINDS[self.grid].base
        symmetric = base in ("signed", "table")
        self.check(not ((symmetric and not self.sym) or (base == "min" and self.sym)), "sym",
                   f"must be {symmetric} on a {self.grid} grid ({'symmetric' if symmetric else 'asymmetric'})")
        sup = GRID_KINDS[self.grid].super_cols
        self.check(not sup or (not self.per_row and gs != AUTO_GROUP and sup % gs == 0), "group_size",
                   f"must divide {sup} on a {self.grid} grid, got {self.group_size}")
        self.check(self.grid == "zero" or not self.act_order or self.static_groups or self.per_row, "static_groups",
                   f"must be on with act_order: a {self.grid} grid stores one scale per block of consecutive columns")

    def solve_precision(self, cols: int) -> str:
        """``float64`` or ``float32``: the precision the inverse Hessian of a layer of ``cols``
        input columns is factorised in."""
        if self.solve_dtype != "auto":
            return self.solve_dtype
        return "float64" if cols < WIDE else "float32"

    @property
    def solves(self) -> bool:
        """Calibrated and solved with GPTQ's column-by-column error compensation (not RTN)."""
        return self.method != "rtn"

    @property
    def drifts(self) -> bool:
        """The solve needs the original model's layer inputs beside the quantized model's (GPTAQ)."""
        return self.method in ("gptaq", "recon")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    @property
    def permuted_groups(self) -> bool:
        """Groups follow the act-order solve (a non-trivial ``g_idx``: GPTQ's ``desc_act``), rather
        than consecutive columns (static groups, per-row, RTN)."""
        return self.solves and self.act_order and not self.static_groups and not self.per_row

    @property
    def per_row(self) -> bool:
        """One group spans each whole row (``group_size = -1``)."""
        return self.group_size == -1

    def group_columns(self, cols: int) -> int:
        """Columns per group in a layer of ``cols`` input columns (the one place -1 is read)."""
        if self.group_size == AUTO_GROUP:
            raise ValueError("group_size auto is settled per model before quantizing: "
                             "llmshrink.exporters.gptq_compat.resolve_group_size")
        return cols if self.per_row or self.group_size >= cols else self.group_size

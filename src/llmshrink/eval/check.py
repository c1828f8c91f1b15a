"""``llmshrink check``: does an output run in the tools people use, and compute what llmshrink does?

For a folder or GGUF file, every registered consumer (:mod:`.consumers`) that handles its kind is
tried: loaded as its documentation says, run on a fixed prompt, its logits compared with
llmshrink's own, and its greedy continuation with llmshrink's. A consumer not installed here is
reported with what to install; a consumer that fails says why (the exception's first line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .consumers import CONSUMERS, kind_of

log = logging.getLogger(__name__)

PROMPT = "The king said to his son: my kingdom is"
NEW_TOKENS = 8


@dataclass
class CheckResult:
    consumer: str
    status: str  # "ok", "failed", "not installed", "not applicable"
    loads: bool = False
    runs: bool = False
    max_logit_diff: float | None = None
    same_greedy: bool | None = None
    tokens: list[int] = field(default_factory=list)
    why: str = ""
    seconds: float = 0.0


@dataclass
class CheckReport:
    path: str
    kind: str
    prompt_tokens: int
    reference: list[int]  # llmshrink's own greedy continuation
    results: list[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [asdict(r) for r in self.results]}


def _greedy(logits_of, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """The logits of ``ids`` and the greedy continuation of ``n`` tokens (full recomputation each
    step: no cache, so every consumer is driven the same way)."""
    out: list[int] = []
    first = None
    with torch.no_grad():
        for _ in range(n):
            logits = logits_of(ids)
            first = logits if first is None else first
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return first, out


@contextlib.contextmanager
def _stdout_to_stderr():
    """Everything written to stdout meanwhile goes to stderr, at the file-descriptor level, so the
    processes a tool starts (vLLM's engine) print there too, for as long as they live."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _try(name: str, path: Path, kind: str, ids: torch.Tensor, ref_logits: torch.Tensor,
         ref_tokens: list[int]) -> CheckResult:
    consumer = CONSUMERS[name]
    if kind not in consumer.kinds:
        return CheckResult(name, "not applicable", why=f"{name} does not load {kind} outputs")
    if consumer.missing(kind):
        return CheckResult(name, "not installed", why=consumer.how_to_install(kind))
    res = CheckResult(name, "failed")
    t0 = time.perf_counter()
    try:
        with _stdout_to_stderr():  # a tool's banners must not mix into --json
            logits_of = consumer.load(path, kind)
            res.loads = True
            logits, res.tokens = _greedy(logits_of, ids, NEW_TOKENS)
        res.runs = True
        if logits.shape != ref_logits.shape:
            res.why = f"logits of shape {tuple(logits.shape)}, llmshrink's {tuple(ref_logits.shape)}"
        else:
            res.max_logit_diff = float((logits - ref_logits).abs().max())
            res.same_greedy = res.tokens == ref_tokens
            res.status = "ok"
    except Exception as exc:  # a consumer's failure is the finding, reported with its reason
        log.debug("%s on %s", name, path, exc_info=True)
        res.why = _first_line(exc)
    res.seconds = time.perf_counter() - t0
    return res


def _reference(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The prompt's ids by llmshrink's tokenizer, llmshrink's logits and greedy continuation (the
    model is freed on return, before any consumer loads its own copy)."""
    from ..models.load import load_model

    lm = load_model(str(path))
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    logits, tokens = _greedy(lambda x: lm.model(x).logits, ids, NEW_TOKENS)
    return ids, logits, tokens


def check_output(path: str | Path, consumers: list[str] | None = None) -> CheckReport:
    """Run ``path`` (an output folder or .gguf file) in each consumer and compare with llmshrink."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file or folder: {path}: give an output folder or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: give a model folder or a .gguf file")
    unknown = sorted(set(consumers or ()) - set(CONSUMERS))
    if unknown:
        raise UserError(f"unknown consumer {unknown[0]!r}: choose from {', '.join(CONSUMERS)}")
    kind = kind_of(path)
    ids, ref_logits, ref_tokens = _reference(path)
    results = [_try(n, path, kind, ids, ref_logits, ref_tokens) for n in (consumers or list(CONSUMERS))]
    return CheckReport(str(path), kind, int(ids.shape[1]), ref_tokens, results)


def format_report(report: CheckReport) -> str:
    head = f"{report.path} ({report.kind}); llmshrink's greedy continuation: {report.reference}"
    rows = [("consumer", "status", "loads", "runs", "max |Δlogit|", "same greedy", "why")]
    for r in report.results:
        diff = "" if r.max_logit_diff is None else f"{r.max_logit_diff:.3g}"
        same = "" if r.same_greedy is None else ("yes" if r.same_greedy else "no")
        tried = r.status in ("ok", "failed")
        rows.append((r.consumer, r.status, "yes" if r.loads else ("no" if tried else ""),
                     "yes" if r.runs else ("no" if tried else ""), diff, same, r.why))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:6], widths, strict=True)) + "  " + row[6] for row in rows]
    return "\n".join([head, *lines])

"""Zero-shot accuracy through lm-evaluation-harness, on any model llmshrink loads.

The loaded model (plain, packed GPTQ or partially quantized) goes to lm-eval's own ``HFLM`` as a
model instance, so the harness does the request building, batching and scoring. Built-in tasks
(:mod:`.tasks`) are handed over as task configs over local JSONL files; any other name is looked
up in lm-eval's task registry (hellaswag, piqa, arc_easy, ...), whose data come from the Hugging
Face hub: when that is unreachable the error names the dataset that is missing.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import Config
from ..data.corpora import load_corpus
from ..errors import UserError
from ..paths import cache_subdir
from ..quant.qlinear import dequantized
from .tasks import BUILTIN_TASKS, TaskParams, check_task_file, write_task_file

log = logging.getLogger(__name__)


@dataclass
class TaskRequest(Config):
    """Zero-shot tasks through lm-eval."""

    kind: ClassVar[str] = "tasks"
    tasks: tuple[str, ...] = field(default=(), metadata={
        "help": "zero-shot tasks through lm-eval, comma-separated: built-in lastword, cloze4, your own items as "
                "KIND=FILE.jsonl (e.g. cloze4=items.jsonl), or lm-eval task names (hellaswag, piqa, ...)"})
    data: str = field(default="shakespeare:eval", metadata={"help": "corpus the built-in tasks are made from"})
    limit: int | None = field(default=None, metadata={"help": "items per task (the first N of the shuffled set; "
                                                              "default: all)"})
    batch_size: int = field(default=8, metadata={"help": "items per forward pass"})
    params: TaskParams = field(default_factory=TaskParams, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.check(bool(self.tasks), "tasks", "no tasks given: --tasks lastword,cloze4 (or lm-eval task names)")
        self.positive("limit", allow_none=True)
        self.positive("batch_size")


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UserError("zero-shot tasks need lm-evaluation-harness: pip install 'llmshrink[lmeval]'") from exc
    return lm_eval, HFLM, TaskManager


@functools.cache
def _task_manager():
    """lm-eval's task index (it reads every task YAML it ships: seconds), built once per process."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(verbosity="ERROR")


def _file_task(spec: str) -> tuple[str, str, Path] | None:
    """``KIND=FILE.jsonl`` -> (task name, kind, path), checked; None for a plain task name."""
    kind, sep, file = spec.partition("=")
    if not sep:
        return None
    if kind not in BUILTIN_TASKS:
        raise UserError(f"task file {spec!r}: the item format must be one of {', '.join(BUILTIN_TASKS)} "
                        f"(e.g. cloze4={file})")
    path = Path(file)
    if not path.is_file():
        raise UserError(f"task file {file} does not exist: give the path of a JSONL file of {kind} items")
    stem = re.sub(r"\W+", "_", path.stem).strip("_") or "items"
    return f"{kind}_{stem}", kind, path


def check_tasks(req: TaskRequest) -> None:
    """Refuse an unknown task name or a bad task file before the model loads (lm-eval's names
    only when a name is neither built in nor a file)."""
    for spec in req.tasks:
        filed = _file_task(spec)
        if filed is not None:
            check_task_file(filed[1], filed[2])
        elif spec not in BUILTIN_TASKS and spec not in _task_manager().all_tasks:
            raise _unknown_task(spec)


def _unknown_task(spec: str) -> UserError:
    return UserError(f"unknown task {spec!r}: built-in tasks are {', '.join(BUILTIN_TASKS)} "
                     "(or KIND=FILE.jsonl for your own items); other names must be lm-eval tasks "
                     "(lm-eval ls tasks)")


def task_configs(req: TaskRequest, task_manager) -> tuple[list, dict[str, tuple[str | None, int | None]]]:
    """lm-eval task entries (config dicts for built-in tasks and task files, names for the
    registry's) and, per task name, its headline metric (None: lm-eval's) and item count."""
    entries: list = []
    info: dict[str, tuple[str | None, int | None]] = {}
    corpus = None
    for spec in req.tasks:
        filed = _file_task(spec)
        if filed is not None:
            name, kind, path = filed
            n = check_task_file(kind, path)
            entries.append(BUILTIN_TASKS[kind].config(name, path.resolve()))
            info[name] = (BUILTIN_TASKS[kind].main_metric, n)
        elif spec in BUILTIN_TASKS:
            corpus = corpus or load_corpus(req.data)
            path, n = write_task_file(spec, corpus, req.params, cache_subdir("tasks"))
            entries.append(BUILTIN_TASKS[spec].config(spec, path))
            info[spec] = (BUILTIN_TASKS[spec].main_metric, n)
        elif spec in task_manager.all_tasks:
            entries.append(spec)
            info[spec] = (None, None)
        else:
            raise _unknown_task(spec)
    return entries, info


def _hub_error(exc: Exception, tasks: tuple[str, ...]) -> UserError:
    hub = ", ".join(t for t in tasks if t not in BUILTIN_TASKS and "=" not in t)
    return UserError(f"could not load the data of task(s) {hub} "
                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the Hugging Face hub is "
                     "probably unreachable: download the dataset into the HF cache on a connected machine, "
                     "or use the built-in tasks (lastword, cloze4)")


def harness_model(lm, batch_size: int):
    """lm-eval's ``HFLM`` around a :class:`~llmshrink.models.load.LoadedModel`'s model and tokenizer."""
    _, HFLM, _ = _lm_eval()
    return HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)


def run_tasks(lm, req: TaskRequest) -> dict:
    """Run ``req.tasks`` on a :class:`~llmshrink.models.load.LoadedModel`; one JSON-ready record."""
    with dequantized(lm.model):  # each packed layer dequantized once for the whole run
        return {"model": lm.name, **evaluate(harness_model(lm, req.batch_size), req)}


def evaluate(model, req: TaskRequest) -> dict:
    """Run ``req.tasks`` through lm-eval's ``simple_evaluate`` on an lm-eval ``LM``."""
    lm_eval, _, _ = _lm_eval()
    t0 = time.perf_counter()
    tm = _task_manager()
    entries, info = task_configs(req, tm)
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=entries, limit=req.limit, task_manager=tm,
                                      log_samples=False, bootstrap_iters=1000, verbosity="ERROR")
    except (ConnectionError, OSError) as exc:
        raise _hub_error(exc, req.tasks) from exc
    except Exception as exc:
        if any(w in str(exc).lower() for w in ("offline", "connect", "hub")):
            raise _hub_error(exc, req.tasks) from exc
        raise
    counts = out.get("n-samples", {})
    results = {}
    for name, (main, n) in info.items():
        r = out["results"].get(name, {})
        metrics = {k.split(",")[0]: float(v) for k, v in r.items()
                   if k not in ("alias", "sample_len") and isinstance(v, int | float)}
        main = main or ("acc_norm" if "acc_norm" in metrics else "acc")
        results[name] = {"metrics": metrics, "main_metric": main, "score": metrics.get(main),
                         "items": counts.get(name, {}).get("effective"),
                         "available": n if n is not None else counts.get(name, {}).get("original")}
    return {"data": req.data, "limit": req.limit, "tasks": results,
            "lm_eval_version": getattr(lm_eval, "__version__", None), "seconds": time.perf_counter() - t0}

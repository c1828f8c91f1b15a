"""The public API: one call per job, each taking a MODEL (alias, folder, ``.gguf`` file, or a
:class:`~llmshrink.models.load.LoadedModel`) and the job's configs, and writing its output.

.. code-block:: python

    import llmshrink as ls

    ls.quantize("smollm2-135m", "out/q4", ls.QuantConfig(bits=4, group_size=128))
    ls.evaluate("out/q4", ls.EvalConfig(data="shakespeare:eval"))["perplexity"]
    ls.export("out/q4", "out/q4.gguf", ls.GGUFConfig(type="q4_0"))
    ls.prune("smollm2-135m", "out/pruned", ls.PruneConfig(remove=6), heal=ls.HealConfig(method="lora"))
    ls.finetune("out/q4-partial", "out/tuned", ls.FinetuneConfig(train="last:4", distill_from="smollm2-135m"))
"""

from __future__ import annotations

from pathlib import Path

from .data.calib import CalibConfig
from .eval.config import EvalConfig
from .exporters.config import GGUFConfig
from .jobs.finetune import FinetuneResult
from .models.load import LoadedModel, load_model
from .pruning.config import HealConfig, PruneConfig
from .quant.config import QuantConfig
from .quant.driver import QuantizeReport
from .quant.mix import MixConfig
from .tune.config import FinetuneConfig

Model = str | Path | LoadedModel


def _loaded(model: Model, **kw) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(str(model), **kw)


def quantize(model: Model, out: str | Path, config: QuantConfig | None = None, *, calib: CalibConfig | None = None,
             blocks: str | None = None, lm_head: bool = False, mix: MixConfig | None = None, overwrite: bool = False,
             progress=None) -> QuantizeReport:
    """Quantize ``model``'s decoder blocks (``blocks``, an ``A:B`` range, default all; ``lm_head``
    too if asked) with GPTQ or RTN and write a Hugging Face GPTQ checkpoint to the folder ``out``.
    A model given by name is read block by block (memory holds one block in float). An existing
    ``out`` is replaced only with ``overwrite`` (as for every job). ``mix``: mixed precision
    (``MixConfig(target_bpw=3.5)``: each layer's width chosen under the budget)."""
    from .jobs.quantize import run_quantize

    report, _ = run_quantize(_loaded(model, lazy_blocks=True), config or QuantConfig(), calib or CalibConfig(),
                             Path(out), blocks=blocks, lm_head=lm_head, mix=mix, overwrite=overwrite, progress=progress)
    return report


def finetune(model: Model, out: str | Path, config: FinetuneConfig | None = None, *, resume: bool = False,
             overwrite: bool = False, progress=None) -> FinetuneResult:
    """Train the last blocks (and lm_head) of a plain or partially quantized ``model`` with the front
    frozen, evaluate it and write it to ``out`` (checkpointed; ``resume`` continues a killed run)."""
    from .jobs.finetune import finetune as run

    return run(_loaded(model), config or FinetuneConfig(), Path(out), resume=resume, overwrite=overwrite,
               progress=progress)


def prune(model: Model, out: str | Path, config: PruneConfig | None = None, *, heal: HealConfig | None = None,
          score_only: bool = False, overwrite: bool = False, progress=None) -> dict:
    """Score ``model``'s decoder blocks, remove the least important (``config.remove`` or
    ``ratio``), heal with LoRA if ``heal`` says so, and write the plain smaller model to ``out``
    (``score_only``: only the scores). Returns the run's record (scores, removed blocks, ...)."""
    from .jobs.prune import run_prune

    return run_prune(_loaded(model), config or PruneConfig(), Path(out), heal=heal, score_only=score_only,
                     overwrite=overwrite, progress=progress)


def export(model: Model, out: str | Path, config: GGUFConfig | None = None, *, format: str = "gguf",
           calib: CalibConfig | None = None, ladder=None, overwrite: bool = False, progress=None):
    """Write ``model`` in ``format``: ``gguf`` (a file for llama.cpp; block types GPTQ-solved on
    their grid, calibrated on ``calib``) or ``hf-gptq`` (a Hugging Face GPTQ folder of a model that is
    quantized already). Returns the exporter's report (GGUF) or the folder (hf-gptq). With a
    :class:`~llmshrink.jobs.ladder.LadderConfig`, every GGUF file it names goes into the folder
    ``out`` with a table of them (returns the ladder's report)."""
    from .jobs.export import run_export

    cfg = (config or GGUFConfig()) if format == "gguf" else config
    load = (lambda: load_model(str(model))) if not isinstance(model, LoadedModel) else None
    return run_export(_loaded(model), format, cfg, Path(out), calib=calib, progress=progress, ladder=ladder,
                      load=load, overwrite=overwrite)


def evaluate(model: Model, config: EvalConfig | None = None, *, tasks: tuple[str, ...] = (),
             limit: int | None = None, backend: str = "auto", progress=None) -> dict:
    """Perplexity of ``model`` on ``config.data`` (and, given ``tasks``, zero-shot accuracy through
    lm-eval): one JSON-ready record, as ``llmshrink eval --json`` prints it. ``backend`` ``auto``
    scores a ``.gguf`` file with llama.cpp (its tokenizer, its logits) and anything else with
    transformers; ``transformers`` converts a GGUF file instead."""
    from .eval.config import eval_backend
    from .eval.run import evaluate_perplexity

    cfg = config or EvalConfig()
    if eval_backend(model, backend) == "llama.cpp":
        from .eval.llamacpp import load_llamacpp

        if tasks:
            raise ValueError("zero-shot tasks run through transformers: pass backend='transformers'")
        rec = evaluate_perplexity(load_llamacpp(model, n_ctx=cfg.seqlen), cfg, progress=progress)
        return {**rec, "backend": "llama.cpp"}
    lm = _loaded(model)
    rec = {**evaluate_perplexity(lm, cfg, progress=progress), "backend": "transformers"}
    if tasks:
        from .eval.harness import TaskRequest, run_tasks

        req = TaskRequest(tuple(tasks), data=cfg.data, limit=limit, batch_size=cfg.batch_size)
        rec["tasks"] = run_tasks(lm, req)["tasks"]
    return rec

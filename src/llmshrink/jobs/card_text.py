"""The words of a model card (:mod:`llmshrink.jobs.card`): metadata, what was done, the measured
table, files, usage, data and the commands that reproduce the folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.corpora import NAMED
from ..data.mix import parse_mix
from ..errors import UserError


@dataclass
class Source:
    """What a card carries from the model the first step read."""

    name: str
    base_model: str | None = None
    license: str | None = None
    languages: list[str] = field(default_factory=list)

RELATION = {"quantize": "quantized", "finetune": "finetune", "prune": "finetune"}


def metadata(name: str, records: dict, source: Source, evals: list, qc: dict | None):
    from huggingface_hub import EvalResult, ModelCardData

    steps = list(records)
    tags = ["llmshrink"] + [t for step, t in (("prune", "depth-pruned"), ("finetune", "tail-finetuned"))
                            if step in steps]
    if qc is not None:
        mixed = any("bits" in (v or {}) for v in (qc.get("dynamic") or {}).values())
        tags += ["gptq", "mixed-precision" if mixed else f"{qc.get('bits')}-bit"]
    results = [EvalResult(task_type="text-generation", dataset_type=m["data"], dataset_name=m["data"],
                          metric_type="perplexity", metric_value=round(m["perplexity"], 4),
                          metric_name=f"perplexity ({m['tokens']:,} tokens)") for m in measured(records, evals)]
    relation = RELATION[steps[-1]] if steps else None
    if qc is not None and steps and steps[-1] != "quantize":
        relation = "quantized"  # a tuned quantized model is still stored quantized
    return ModelCardData(
        base_model=source.base_model, base_model_relation=relation if source.base_model else None,
        license=source.license, language=source.languages or None, library_name="transformers",
        pipeline_tag="text-generation", tags=tags, quantized_by="llmshrink" if qc is not None else None,
        model_name=name if results else None, eval_results=results or None)


def measured(records: dict, evals: list) -> list[dict]:
    """Every perplexity the folder's records hold for this model: the fine-tune's scores after
    training, and ``llmshrink eval``'s."""
    out = []
    ev = records.get("finetune", {}).get("evaluation", {})
    for key in ("held_out", "out_of_domain"):
        if key in ev:
            out.append({"data": ev[key]["data"], "tokens": ev[key]["tokens"], **ev[key]["after"],
                        "before": ev[key].get("before", {}).get("perplexity"), "source": "finetune"})
    for e in evals:
        out.append({"data": e["data"], "tokens": e["tokens"], "perplexity": e["perplexity"],
                    "kl": e.get("kl"), "original_perplexity": e.get("reference_perplexity"), "source": "eval"})
    return out


def body(folder: Path, name: str, records: dict, source: Source, evals: list, config: dict,
         checks: dict | None = None, release: dict | None = None) -> str:
    """The card's text below the metadata; ``config`` is the folder's ``config.json``, ``checks``
    the last ``llmshrink check`` of the folder, ``release`` a release folder's record (its
    ``recipe`` file, and the ``ladder`` record of its GGUF files)."""
    release = release or {}
    base = f" ([{source.base_model}](https://huggingface.co/{source.base_model}))" if source.base_model else ""
    parts = [f"# {name}", "",
             f"`{source.name}`{base}, {summary(records)}, made with llmshrink.",
             "", "## What was done", ""]
    parts += [f"- {line}" for step, rec in records.items() for line in DONE[step](rec)]
    parts += ["", "## Measured", "", *table(records, evals), "", "## Files", "", *files(folder), "",
              "## Use", "", *usage(name, config, checks), ""]
    parts += [*gguf_files(release["ladder"]), ""] if release.get("ladder") else []
    parts += ["## Data", ""]
    parts += [f"- {corpus_line(c)}" for c in data_of(records)] or ["- none (no calibration or training data)"]
    commands = [rec["command"] for rec in records.values() if rec.get("command")]
    if release.get("recipe"):
        commands.append(f"llmshrink run {release['recipe']}  # the release, from the recipe in this folder")
    if commands:
        parts += ["", "## Reproduce", "", "```bash", *commands, "```"]
    return "\n".join(parts) + "\n"


def summary(records: dict) -> str:
    words = []
    if "prune" in records:
        p = records["prune"]
        words.append(f"{p['blocks_before'] - p['blocks_after']} of {p['blocks_before']} blocks removed")
    if "quantize" in records:
        q = records["quantize"]
        c = q["config"]
        words.append(f"{c['method'].upper()} {_width(q)} g{c['group_size']} on blocks {q['blocks'][0]}:{q['blocks'][1]}")
    if "finetune" in records:
        f = records["finetune"]
        words.append(f"blocks {f['blocks'][0]}:{f['blocks'][1]} fine-tuned ({f['config']['loss']})")
    return ", ".join(words) or "unchanged"


def _width(q: dict) -> str:
    """``4-bit``, or a mixed run's ``3.50 bits/weight (widths 3, 4)``."""
    mixed = q.get("mixed_precision")
    if mixed is None:
        return f"{q['config']['bits']}-bit"
    return f"{mixed['bpw']:.2f} bits/weight (widths {', '.join(mixed['widths'])})"


def _quantize(q: dict) -> list[str]:
    c, cal = q["config"], q.get("calibration")
    how = [("symmetric" if c["sym"] else "asymmetric") + " grid"]
    if c["method"] != "rtn":
        if c["method"] in ("gptaq", "recon"):
            how += [f"solved against the original model's outputs (GPTAQ, alpha {c.get('alpha', 0.25)})"]
        if c["method"] == "recon":
            how += [f"then each block's rounding and scales tuned to the original block's outputs "
                    f"({c.get('recon_steps')} signed-gradient steps)"]
        how += ["act-order" if c["act_order"] else "columns in order", f"damping {c['damp']}"]
        how += ["Hessian-weighted scale search"] if c.get("mse") else []
    lines = [f"{c['method'].upper()} {_width(q)}, group size {c['group_size']} ({', '.join(how)}), decoder "
             f"blocks {q['blocks'][0]}:{q['blocks'][1]}; lm_head {'quantized' if q['lm_head'] else 'in full precision'}; "
             "stored in the GPTQ format (`quant_method: gptq`)."]
    mixed = q.get("mixed_precision")
    if mixed is not None:
        counts = ", ".join(f"{n} layers at {b} bits" for b, n in mixed["widths"].items())
        lines.append(f"Mixed precision (`--target-bpw {q['mix']['target_bpw']}`): {counts}, chosen by each layer's "
                     "measured sensitivity; `quantization_config.dynamic` gives each layer's width (GPTQModel, vLLM "
                     "and SGLang read it; `quantize_layers.jsonl` lists them).")
    if cal:
        lines.append(f"Calibration: {cal['nsamples']} windows of {cal['seqlen']} tokens of `{cal['data']}` "
                     f"(seed {cal['seed']}).")
    return lines


def _finetune(f: dict) -> list[str]:
    c = f["config"]
    head = " and lm_head" if c.get("lm_head") else ""
    data = f"{c['nsamples']} windows of `{c['data']}`" if c.get("nsamples") else f"`{c['data']}`"
    gen = f" and {c['generated']} windows written by the original model" if c.get("generated") else ""
    teacher = f", teacher `{c['distill_from']}`" if c.get("distill_from") and "kd" in c["loss"] else ""
    if c.get("tune_scales"):
        head += (", with the quantized blocks' GPTQ scales and every block's norms trained end to end (codes "
                 f"and zero points unchanged; scale learning rate {c['scale_lr']})")
    return [f"Fine-tuned blocks {f['blocks'][0]}:{f['blocks'][1]}{head} ({c['method']}, "
            f"{f['trainable_parameters']:,} parameters) for {f['steps']} steps ({f['tokens']:,} tokens) on {data}{gen}, "
            f"loss `{c['loss']}`{teacher}, learning rate {c['lr']}, batch {c['batch_size']} x {c['seqlen']} tokens."]


def _prune(p: dict) -> list[str]:
    c = p["config"]
    lines = [f"Removed decoder blocks {p['removed']} of {p['blocks_before']} ({c['criterion']} importance"
             f"{', re-scored after each removal' if c.get('iterative') else ''}, on {c['nsamples']} windows of "
             f"{c['seqlen']} tokens of `{c['data']}`): {p['parameters_before']:,} -> {p['parameters_after']:,} parameters."]
    heal = p.get("heal")
    if heal:
        h = heal["config"]
        lines.append(f"Healed with LoRA (rank {h.get('rank')}) for {heal['steps']} steps on `{h.get('data')}`, loss "
                     f"`{h.get('loss')}` ({heal['loss_first']:.3f} -> {heal['loss_last']:.3f}); merged.")
    return lines


DONE = {"prune": _prune, "quantize": _quantize, "finetune": _finetune}


def table(records: dict, evals: list) -> list[str]:
    rows = measured(records, evals)
    if not rows:
        return ["Not measured yet: `llmshrink eval DIR --data CORPUS` keeps its score here (`llmshrink card DIR` "
                "writes this card again)."]
    out = ["| data | tokens | perplexity | before | original | KL from the original | measured by |",
           "|---|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        out.append(f"| `{r['data']}` | {r['tokens']:,} | {fmt(r['perplexity'])} | {fmt(r.get('before'))} | "
                   f"{fmt(r.get('original_perplexity'))} | {fmt(r.get('kl'), 4)} | {r['source']} |")
    return out


def files(folder: Path) -> list[str]:
    sizes = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and p.name != "README.md")
    total = sum(s for _, s in sizes)
    weights = sum(s for n, s in sizes if n.endswith(".safetensors"))
    return [f"{total / 1e6:,.1f} MB in {len(sizes)} files; weights (safetensors) {weights / 1e6:,.1f} MB."]


def usage(name: str, config: dict, checks: dict | None) -> list[str]:
    """llmshrink's own commands, then a snippet for each consumer ``llmshrink check`` ran the folder
    in, and what it found where one failed; without a check, the tools are named, not promised."""
    from ..eval.consumers import CONSUMERS

    kind = "gptq" if (config.get("quantization_config") or {}).get("quant_method") == "gptq" else "plain"
    lines = ["With llmshrink, which loads every folder it writes:", "", "```bash",
             f"llmshrink generate {name} \"Write a haiku about the sea.\" --max-new-tokens 32",
             f"llmshrink eval {name} --data shakespeare:eval", "```"]
    results = (checks or {}).get("results", [])
    for r in results:
        consumer = CONSUMERS.get(r["consumer"])
        if r["status"] == "ok" and consumer is not None:
            same = "the same" if r.get("same_greedy") else "a different"
            lines += ["", f"In {r['consumer']}: verified by `llmshrink check` (max |logit difference| from "
                          f"llmshrink's {r['max_logit_diff']:.3g}, {same} greedy continuation):", "",
                      "```python" if r["consumer"] != "llama.cpp" else "```bash",
                      consumer.snippet(name, kind), "```"]
        elif r["status"] == "failed":
            lines += ["", f"In {r['consumer']}: does not run this folder (`llmshrink check`: {r['why']})."]
    if kind == "plain" and not any(r["consumer"] == "transformers" for r in results):
        lines += ["", "A plain transformers checkpoint (llmshrink loads it with transformers too):", "",
                  "```python", CONSUMERS["transformers"].snippet(name, kind), "```"]
    elif not any(r["status"] in ("ok", "failed") for r in results):
        lines += ["", "Other loaders (GPTQModel, transformers with gptqmodel, vLLM) are not verified for this folder "
                      f"yet: `llmshrink check {name}` runs it in each one installed and compares the logits with "
                      "llmshrink's."]
    return lines


def gguf_files(ladder: dict) -> list[str]:
    """A release's GGUF section: its files (in ``gguf/``) with their measured rows, and how to run one."""
    pick = example_file(ladder["rows"], prefer="q4_k_m")
    return ["## GGUF files", "", "For llama.cpp, Ollama, LM Studio and llama-cpp-python, in `gguf/` (made from "
            "this checkpoint: its packed layers carried exactly where their grid is the file type's and rounded again "
            "to it otherwise, its full-precision layers solved by GPTQ on the type's grid). Perplexity is "
            "llama.cpp's own.", "", ladder_table(ladder), "",
            "```bash", f"llama-cli -m gguf/{pick} -p \"The king said\" -n 32", "```"]


def example_file(rows: dict, prefer: str | None = None) -> str:
    """The GGUF file a usage line names: ``prefer``'s if the ladder has it, else the first that is
    not F16 (F16 itself in a ladder of F16 alone)."""
    if prefer in rows:
        return rows[prefer]["file"]
    return next((r["file"] for t, r in rows.items() if t != "f16"), next(iter(rows.values()), {}).get("file", "FILE"))


def data_of(records: dict) -> list[str]:
    specs = []
    q, f, p = records.get("quantize", {}), records.get("finetune", {}), records.get("prune", {})
    if q.get("calibration"):
        specs.append(q["calibration"]["data"])
    if f:
        specs.append(f["config"]["data"])
    if p:
        specs.append(p["config"]["data"])
        if p.get("heal"):
            specs.append(p["heal"]["config"].get("data", ""))
    seen: list[str] = []
    for spec in specs:
        for c in corpora_of(spec):
            if c and c not in seen:
                seen.append(c)
    return seen


def corpora_of(spec: str) -> list[str]:
    """The corpora a data setting reads (each part of a mix)."""
    try:
        return [p.data for p in parse_mix(spec)]
    except UserError:
        return [spec]


def corpus_line(spec: str) -> str:
    named = NAMED.get(spec.partition(":")[0])
    if named is None:
        return f"`{spec}`: the user's own text"
    return f"`{spec}`: {named.description}; licence: {named.licence}"


def ladder_table(rec: dict) -> str:
    """The Markdown table of a ladder record."""
    rows = rec["rows"]
    base = rows.get("f16", {}).get("perplexity")
    s = rec["settings"]
    lines = [f"GGUF ladder of {s['model']}: calibration {s['calib']['nsamples']} x {s['calib']['seqlen']} tokens of "
             f"{s['calib']['data']}" + (f"; perplexity through llama.cpp on {s['eval']['data']}"
                                        + (f" (first {s['eval']['max_tokens']} tokens)" if s['eval']['max_tokens']
                                           else "") if s["eval"] else ""),
             "", "| type | made by | size MB | bits/weight | perplexity | increase over F16 |",
             "|---|---|---:|---:|---:|---:|"]
    for t, r in rows.items():
        ppl = r.get("perplexity")
        inc = f"{ppl - base:+.3f}" if ppl is not None and base is not None else ""
        lines.append(f"| {t.upper()} | {r['made_by']} | {r['size'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | "
                     f"{'' if ppl is None else f'{ppl:.3f}'} | {inc} |")
    return "\n".join(lines)

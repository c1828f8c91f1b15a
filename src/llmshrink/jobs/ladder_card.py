"""The model card of a GGUF ladder folder: what a GGUF release on the hub carries (metadata,
the files with their sizes and measured perplexity, how to run them, the calibration data)."""

from __future__ import annotations

from .card import source_of
from .card_text import corpora_of, corpus_line, example_file, ladder_table


def render_ladder_card(rec: dict, name: str) -> str:
    """The README.md of a ladder folder called ``name`` from its record (``ladder.json``)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    s, rows = rec["settings"], rec["rows"]
    source = source_of(str(s["model"]))
    ev = s.get("eval") or {}
    results = [EvalResult(task_type="text-generation", dataset_type=ev["data"], dataset_name=ev["data"],
                          metric_type="perplexity", metric_value=round(r["perplexity"], 4),
                          metric_name=f"perplexity of {t.upper()} (llama.cpp, {r['tokens']:,} tokens)")
               for t, r in rows.items() if r.get("perplexity") is not None]
    data = ModelCardData(
        base_model=source.base_model, base_model_relation="quantized" if source.base_model else None,
        license=source.license, language=source.languages or None, library_name="gguf",
        pipeline_tag="text-generation", tags=["llmshrink", "gguf", "gptq"], quantized_by="llmshrink",
        model_name=name if results else None, eval_results=results or None)
    base = f" ([{source.base_model}](https://huggingface.co/{source.base_model}))" if source.base_model else ""
    first = example_file(rows)
    lines = [f"# {name}", "", f"GGUF files of `{s['model']}`{base} for llama.cpp (and Ollama, LM Studio, "
             "llama-cpp-python), made with llmshrink: each type GPTQ can target solved by GPTQ on the type's "
             "own grid and written into its blocks with no second rounding; the others made by llama.cpp's "
             "quantizer with llmshrink's importance matrix (`imatrix.gguf`).", "",
             "## Files", "", ladder_table(rec), "", "## Use", "", "```bash",
             f"llama-cli -m {first} -p \"The king said\" -n 32",
             f"llmshrink eval {name}/{first} --data {ev.get('data', 'shakespeare:eval')}", "```", "",
             "## Data", ""]
    lines += [f"- {corpus_line(c)}" for c in corpora_of(s["calib"]["data"])]
    if ev.get("data"):
        lines += [f"- evaluation: {corpus_line(c)}" for c in corpora_of(ev["data"])]
    if rec.get("command"):
        lines += ["", "## Reproduce", "", "```bash", rec["command"], "```"]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    ModelCard(text)  # parsed back as the hub parses it
    return text

"""``llmshrink report``: one Markdown table and PNG plots from the JSON the other commands write.

Each run folder may hold ``eval.json`` (``llmshrink eval --out``: perplexity, size, parameters,
zero-shot tasks), ``bench.json`` (``llmshrink bench --out``: latency, bandwidth, memory) and
block scores (``block_scores.json`` from ``prune --score-only``, ``llmshrink_prune.json`` from a
prune). A folder with none of them is an error; missing pieces are blank cells. Plots (matplotlib,
Agg backend): perplexity against bits per weight, accuracy per task, and block importance when
present, written beside the Markdown file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..paths import atomic_file

SOURCES = ("eval.json", "bench.json", "block_scores.json", "llmshrink_prune.json")


@dataclass
class Run:
    name: str
    folder: Path
    eval: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    scores: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int | None:
        return self.eval.get("size_on_disk") or self.bench.get("size_on_disk")

    @property
    def parameters(self) -> int | None:
        return self.eval.get("parameters") or self.bench.get("parameters")

    @property
    def bits_per_weight(self) -> float | None:
        return self.size * 8 / self.parameters if self.size and self.parameters else None

    def task_score(self, task: str) -> float | None:
        return self.eval.get("tasks", {}).get(task, {}).get("score")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun the command "
                        "that wrote it") from exc


def load_runs(folders: list[str | Path]) -> list[Run]:
    runs, names = [], set()
    for f in map(Path, folders):
        if not f.is_dir():
            raise UserError(f"run folder {f} does not exist")
        if not any((f / s).is_file() for s in SOURCES):
            raise UserError(f"{f} holds none of {', '.join(SOURCES)}: write them with llmshrink eval --out, "
                            "bench --out or prune")
        name = f.name if f.name not in names else str(f)
        names.add(name)
        run = Run(name, f)
        if (f / "eval.json").is_file():
            run.eval = _read(f / "eval.json")
        if (f / "bench.json").is_file():
            run.bench = _read(f / "bench.json")
        for s in ("block_scores.json", "llmshrink_prune.json"):
            if (f / s).is_file():
                run.scores = _read(f / s).get("scores", [])[:1]
        runs.append(run)
    return runs


def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def tasks_of(runs: list[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        seen.update(dict.fromkeys(r.eval.get("tasks", {})))
    return list(seen)


def markdown_table(runs: list[Run]) -> str:
    tasks = tasks_of(runs)
    metric = {t: next((r.eval["tasks"][t]["main_metric"] for r in runs if t in r.eval.get("tasks", {})), "")
              for t in tasks}
    head = ["run", "parameters", "size MB", "bits/weight", "perplexity",
            *[f"{t} {metric[t]}" for t in tasks], "prefill ms", "decode ms/token", "tokens/s",
            "GB/s (of machine)", "peak memory MiB"]
    rows = []
    for r in runs:
        e, b = r.eval, r.bench
        gbs = (f"{b['achieved_gb_per_s']:.1f} ({b['bandwidth_fraction']:.0%})"
               if b.get("achieved_gb_per_s") is not None else "")
        rows.append([
            r.name, _fmt(r.parameters, ","), _fmt(r.size / 1e6 if r.size else None, ".1f"), _fmt(r.bits_per_weight, ".2f"),
            _fmt(e.get("perplexity"), ".3f"), *[_fmt(r.task_score(t), ".3f") for t in tasks],
            _fmt(b.get("prefill_ms"), ".1f"), _fmt(b.get("decode_ms_per_token"), ".2f"),
            _fmt(b.get("tokens_per_second"), ".1f"), gbs,
            _fmt(b["peak_memory_bytes"] / 2**20 if b.get("peak_memory_bytes") else None, ",.0f"),
        ])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _notes(runs: list[Run]) -> list[str]:
    notes = []
    for r in runs:
        e = r.eval
        bits = [f"{r.name}: model {e.get('model') or r.bench.get('model')}"]
        if e.get("data"):
            bits.append(f"perplexity on {e['data']} ({e.get('tokens', '?')} tokens, {e.get('seqlen', '?')}-token windows)")
        for t, rec in e.get("tasks", {}).items():
            bits.append(f"{t}: {rec.get('items')} items")
        if r.bench:
            c = r.bench.get("config", {})
            bits.append(f"bench: {c.get('prompt_tokens')}-token prompt, {c.get('new_tokens')} new tokens, batch "
                        f"{c.get('batch_size')}, {r.bench.get('threads')} threads, {r.bench.get('device')}")
        notes.append("- " + "; ".join(bits))
    return notes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_bits(runs: list[Run], path: Path) -> bool:
    pts = [(r.bits_per_weight, r.eval["perplexity"], r.name) for r in runs
           if r.bits_per_weight and r.eval.get("perplexity")]
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for x, y, name in pts:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("bits per weight (size on disk x 8 / parameters)")
    ax.set_ylabel("perplexity")
    ax.set_title("perplexity vs size", fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_tasks(runs: list[Run], path: Path) -> bool:
    tasks = tasks_of(runs)
    if not tasks:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(runs)) / 2), 4), dpi=120)
    width = 0.8 / len(runs)
    for k, r in enumerate(runs):
        xs = [i + k * width for i in range(len(tasks))]
        ax.bar(xs, [r.task_score(t) or 0.0 for t in tasks], width=width, label=r.name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("zero-shot accuracy per task (lm-eval)", fontsize=10)
    _save(fig, path)
    return True


def plot_blocks(runs: list[Run], path: Path) -> bool:
    with_scores = [r for r in runs if r.scores]
    if not with_scores:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for r in with_scores:
        s = r.scores[0]
        ax.plot(range(len(s["scores"])), s["scores"], marker="o", ms=3, label=f"{r.name} ({s['criterion']})")
        if s["criterion"] == "ppl":
            ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("importance score (lower = less important)")
    ax.legend(fontsize=8)
    ax.set_title("block importance", fontsize=10)
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png")
    plt.close(fig)


PLOTS = {"ppl_vs_bits": plot_ppl_bits, "tasks": plot_tasks, "blocks": plot_blocks}


def write_report(folders: list[str | Path], out: str | Path) -> dict:
    """Write ``out`` (Markdown) and its PNGs (``<out stem>_<plot>.png``); return what was written."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"the folder {out.parent} does not exist: create it or choose another --out")
    runs = load_runs(folders)
    pngs = {}
    for key, plot in PLOTS.items():
        path = out.with_name(f"{out.stem}_{key}.png")
        if plot(runs, path):
            pngs[key] = path
    parts = ["# llmshrink report", "", markdown_table(runs), "", *_notes(runs), ""]
    parts += [f"![{key}]({p.name})" for key, p in pngs.items()]
    with atomic_file(out) as tmp:
        tmp.write_text("\n".join(parts) + "\n")
    return {"markdown": str(out), "plots": {k: str(p) for k, p in pngs.items()}, "runs": [r.name for r in runs]}

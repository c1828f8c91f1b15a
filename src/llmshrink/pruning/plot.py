"""Bar chart of block importance scores (PNG, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

from .scores import BlockScores

YLABEL = {
    "ppl": "perplexity without the block (log)",
    "taylor": "Taylor+ sum |w * dL/dw|",
    "magnitude": "sum |w| of the block's linears",
    "angular": "angular distance in -> out (/pi)",
}


def plot_scores(scores: BlockScores, path: Path, *, removed: list[int] | None = None, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed = set(removed or [])
    n = len(scores.scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 3.6), dpi=120)
    colors = ["#d62728" if i in removed else "#1f77b4" for i in range(n)]
    ax.bar(range(n), scores.scores, color=colors)
    if scores.criterion == "ppl":
        ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel(YLABEL.get(scores.criterion, scores.criterion))
    ax.set_xticks(range(n))
    ax.tick_params(axis="x", labelsize=7)
    label = f"{scores.criterion}: lower = less important"
    if removed:
        label += f"; red = removed ({len(removed)})"
    ax.set_title(f"{title}\n{label}" if title else label, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path

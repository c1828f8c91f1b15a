"""A small instruction set built from the Shakespeare corpus, for tests and bench/finetune_recovery.py:
"Which play is this line from?" (alpaca format), answers the play's title."""

from __future__ import annotations

import json
import random
from pathlib import Path


def build_play_questions(out: Path, *, n: int = 300, split: str = "calib", seed: int = 0) -> Path:
    from llmshrink.data.corpora import load_corpus

    rng = random.Random(seed)
    plays = []
    for doc in load_corpus(f"shakespeare:{split}").documents:
        lines = [ln.strip() for ln in doc.text.splitlines() if 40 <= len(ln.strip()) <= 90 and not ln.isupper()]
        if len(lines) >= 20:  # plays (the short poems have too few long lines)
            plays.append((doc.text.strip().splitlines()[0].strip().title(), lines))
    rows = []
    for k in range(n):
        title, lines = plays[k % len(plays)]
        rows.append({"instruction": "Which play by Shakespeare is this line from?", "input": rng.choice(lines),
                     "output": f"It is from {title}."})
    rng.shuffle(rows)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out

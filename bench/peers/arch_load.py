"""Does GPTQModel load llmshrink's GPTQ checkpoints of every architecture llmshrink claims?

Runs inside the peers' environment (``bash bench/peers/setup.sh``: GPTQModel and llmshrink side
by side), from the repository root:

    bench/peers/.venv/bin/python bench/peers/arch_load.py --out runs/arch-load [--layout gptqmodel]

For each architecture of ``tests/archs.py``: a tiny random model (the tests' own), quantized by
``llmshrink quantize`` (4-bit, group 16, every block; with ``--layout gptqmodel`` then written by
``llmshrink export --format hf-gptq --layout gptqmodel``), then loaded by GPTQModel (``gptq_torch``
backend) and by llmshrink. Prints one JSON line per architecture: whether GPTQModel loaded it, and
how far its logits on a prompt are from llmshrink's, relative to their spread.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(model_type: str, root: Path, layout: str) -> dict:
    import torch
    from gptqmodel import BACKEND, GPTQModel
    from tests.archs import make_arch_model
    from tests.conftest import TEXT, make_tokenizer, save_model_dir

    from llmshrink.cli import main
    from llmshrink.models.load import load_model

    tok = make_tokenizer()
    plain = save_model_dir(root / model_type / "plain", make_arch_model(model_type, len(tok), layers=2), tok)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 8)
    q = root / model_type / "q"
    if not q.exists():
        assert main(["-q", "quantize", str(plain), "--out", str(q), "--bits", "4", "--group-size", "16",
                     "--calib", str(corpus), "--nsamples", "8", "--seqlen", "32"]) == 0
    if layout != "transformers":
        out = root / model_type / f"q-{layout}"
        assert main(["-q", "export", str(q), "--format", "hf-gptq", "--layout", layout, "--out", str(out),
                     "--overwrite"]) == 0
        q = out
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"][:7]])
    with torch.no_grad():
        ours = load_model(q).model(ids).logits[0].float()
    row = {"arch": model_type, "layout": layout}
    try:
        peer = GPTQModel.load(str(q), backend=BACKEND.TORCH, device="cpu")
        with torch.no_grad():
            theirs = peer.model(ids).logits[0].float()
    except Exception as exc:  # a refusal is the measurement
        row.update(loaded=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        traceback.print_exc(file=sys.stderr)
        return row
    spread = (ours - ours.mean(-1, keepdim=True)).abs().mean()
    row.update(loaded=True, mean_diff=float((theirs - ours).abs().mean() / spread),
               max_diff=float((theirs - ours).abs().max() / spread),
               same_argmax=float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/arch-load")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--layout", default="transformers", help="llmshrink export --layout of the checkpoint GPTQModel loads")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.archs import ARCHS

    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for model_type in ARCHS:
        if not args.only or model_type in args.only:
            print(json.dumps(check(model_type, root, args.layout)), flush=True)


if __name__ == "__main__":
    main()

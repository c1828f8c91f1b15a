"""Side-by-side measurements of a few models: perplexity, size, decode speed, one answer each."""

from __future__ import annotations

from .config import EvalConfig


def compare_models(models: list[tuple[str, str]], *, data: str, max_tokens: int | None, instruction: str,
                   device: str = "cpu", new_tokens: int = 32, max_new_tokens: int = 64, progress=None) -> list[dict]:
    """One row per ``(name, MODEL)``: each model is loaded, measured and freed in turn."""
    import gc

    from ..generation import GenerateConfig, generate
    from ..models.load import load_model
    from .run import evaluate_perplexity
    from .speed import decode_speed

    rows = []
    for name, spec in models:
        lm = load_model(spec, device=device)
        rec = evaluate_perplexity(  # then decode from the packed weights, as deployed
            lm, EvalConfig(data=data, max_tokens=max_tokens), progress=progress)
        speed = decode_speed(lm.model, len(lm.tokenizer), prompt_tokens=64, new_tokens=new_tokens, repeats=3)
        answer = generate(lm.model, lm.tokenizer, instruction, GenerateConfig(max_new_tokens=max_new_tokens))
        rows.append({"name": name, "model": spec, "perplexity": rec["perplexity"], "tokens": rec["tokens"],
                     "size_on_disk": rec["size_on_disk"], "parameters": rec["parameters"],
                     "ms_per_token": speed.decode_ms_per_token, "load_seconds": lm.seconds,
                     "answer": answer.text.strip()})
        del lm
        gc.collect()
    return rows

"""End-to-end on the real default model (SmolLM2-135M-Instruct from its Q4_1 GGUF)."""

import pytest
import torch

from llmshrink.models.load import load_model
from llmshrink.models.zoo import DEFAULT_MODEL, get_alias
from tests.conftest import library_perplexity

pytestmark = pytest.mark.e2e

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York."


@pytest.fixture(scope="module")
def cached():
    load_model(DEFAULT_MODEL)  # converts once if the cache is empty
    return load_model(DEFAULT_MODEL)  # the second load: from the safetensors cache


def test_second_load_is_fast_and_shapes_are_right(cached):
    print(f"\nsecond load of {DEFAULT_MODEL}: {cached.seconds:.2f} s")
    assert cached.seconds < 5.0
    cfg = cached.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.model_type) == (30, 576, "llama")
    assert not hasattr(cfg, "quantization_config")
    assert cached.num_parameters == 134_515_008
    assert len(cached.arch.blocks(cached.model)) == 30


def test_conversion_preserves_logits_and_tokenizer(cached):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = get_alias(DEFAULT_MODEL).gguf_path()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = ref_tok(TEXT, return_tensors="pt").input_ids
    assert cached.tokenizer(TEXT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert cached.tokenizer.chat_template == ref_tok.chat_template and "<|im_start|>" in ref_tok.chat_template
    with torch.no_grad():
        a = ref(ids).logits
        b = cached.model(ids).logits
    diff = (a - b).abs().max().item()
    print(f"\nGGUF vs cached safetensors: max |logit diff| = {diff:.3g} over {ids.numel()} tokens")
    assert diff <= 1e-5


def test_cli_eval_json(capsys):
    import json

    from llmshrink.cli import main

    assert main(["eval", DEFAULT_MODEL, "--data", "shakespeare:eval", "--max-tokens", "2048", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    print(f"\nperplexity on the first 2048 tokens of shakespeare:eval: {rec['perplexity']:.3f}")
    ppl, tokens = library_perplexity(DEFAULT_MODEL, "shakespeare:eval", 512, max_tokens=2048)
    assert rec["perplexity"] == pytest.approx(ppl, rel=1e-9) and rec["tokens"] == tokens == 4 * 511
    assert abs(rec["perplexity"] / 33.999 - 1) < 0.25  # near the whole corpus' 33.999 (BENCHMARKS.md)


@pytest.mark.slow  # five minutes of the default tier's fifteen: CI runs it in its slow step
def test_cli_demo_quantizes_tunes_generates_and_exports(capsys, tmp_path):
    import json

    from llmshrink.cli import main

    assert main(["demo", "--max-tokens", "1024", "--steps", "3", "--calib-samples", "4",
                 "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"original", "quantized + tail-tuned"} <= set(rows)
    for name in ("original", "quantized + tail-tuned"):
        answer = out.split(f"[{name}] > Write one sentence about the sea.\n", 1)[1].split("\n[", 1)[0]
        assert len(answer.split()) >= 3  # both models answer with words
    tuned = tmp_path / "demo" / "1-finetune"
    cfg = json.loads((tuned / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == 4 and cfg["num_hidden_layers"] == 30
    # the mixed checkpoint reloads in a fresh process and generates
    import subprocess
    import sys

    gen = subprocess.run([sys.executable, "-m", "llmshrink", "-q", "generate", str(tuned), "Name a colour.",
                          "--max-new-tokens", "8"], capture_output=True, text=True, check=True)
    assert gen.stdout.strip()
    # and exports to GGUF (round-to-nearest keeps this test short; GPTQ export is tested on tiny models)
    assert main(["-q", "export", str(tuned), "--type", "q8_0", "--method", "rtn", "--out",
                 str(tmp_path / "tuned.gguf")]) == 0
    assert (tmp_path / "tuned.gguf").stat().st_size > 100e6


def test_second_load_in_a_fresh_process_reads_the_cache_not_the_gguf(cached):
    """A fresh process loads the cached safetensors copy: the load itself (weights and tokenizer,
    with transformers' modules already imported) takes a fraction of the ~20 s GGUF conversion.
    Imports are timed apart: on a busy 2-core machine they alone vary from 3 to 6 s."""
    import subprocess
    import sys

    code = (
        "import time; t = time.perf_counter(); from llmshrink import load_model; "
        "from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM; "
        "imports = time.perf_counter() - t; "
        "lm = load_model('smollm2-135m'); print(imports, lm.seconds)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imports, load = map(float, out.split())
    print(f"\nfresh process: imports {imports:.2f} s, load_model {load:.2f} s")
    assert load < 3.0
    assert imports + load < 15.0

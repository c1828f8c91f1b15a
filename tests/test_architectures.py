"""Every command on every architecture llmshrink claims, on tiny random models built from each
architecture's transformers config class (``tests.archs``): the README's architecture table
names these tests.

Per architecture, one module-scoped run of the CLI: quantize (GPTQ, blocks 0:2 of 3), then
finetune the float tail, prune, export to GGUF and Hugging Face GPTQ, eval, generate, bench.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmshrink.blockwise import capture_block_inputs
from llmshrink.cli import main
from llmshrink.models.arch import ARCHITECTURES, arch_of, logit_cap, soft_cap
from llmshrink.models.gptq_rules import packed_per_config
from llmshrink.models.load import load_model
from tests.archs import ARCHS, make_arch_model
from tests.conftest import TEXT, make_sentencepiece_tokenizer, make_tiny_model, make_tokenizer, save_model_dir

NAMES = sorted(ARCHS)
# 7 tokens: within the tiny models' 8-token sliding window, where llama.cpp (which slides no
# window for llama/qwen2, and its own pattern for Gemma) and transformers compute the same thing
SHORT = "To be, or"


def test_every_claimed_architecture_has_a_tiny_model():
    assert sorted(ARCHITECTURES) == NAMES


@pytest.fixture(scope="module", params=NAMES)
def run(request, tmp_path_factory):
    """A tiny model of the architecture, quantized by the CLI (blocks 0:2 of 3, GPTQ 4-bit g16)."""
    model_type = request.param
    root = tmp_path_factory.mktemp(model_type)
    tok = make_tokenizer()
    plain = save_model_dir(root / "plain", make_arch_model(model_type, len(tok), layers=3), tok)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 8)
    rc = main(["-q", "quantize", str(plain), "--out", str(root / "q"), "--bits", "4", "--group-size", "16",
               "--blocks", "0:2", "--calib", str(corpus), "--nsamples", "8", "--seqlen", "24"])
    assert rc == 0
    return {"type": model_type, "root": root, "plain": plain, "q": root / "q", "corpus": corpus}


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_blocks_receive_their_own_arguments_and_the_walk_is_the_model(run):
    """Sliding-window and full-attention layers (Qwen2's upper layers, Gemma's alternation) get
    their own mask and RoPE from the capture; running block by block is the model's forward."""
    lm = load_model(run["plain"])
    arch = arch_of(lm.model)
    ids = torch.tensor([lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:24]])
    inputs = capture_block_inputs(lm.model, arch, [ids])
    mixed = len(set(getattr(lm.model.config, "layer_types", None) or ["one"])) > 1
    assert (inputs.layers is not None) == mixed
    h = inputs.hidden[0]
    with torch.no_grad():
        for i, block in enumerate(arch.blocks(lm.model)):
            out = block(h, **inputs.at(i).kwargs[0])
            h = out[0] if isinstance(out, tuple) else out
        logits = soft_cap(lm.model.get_submodule(arch.lm_head)(lm.model.get_submodule(arch.norm)(h)),
                          logit_cap(lm.model))
        torch.testing.assert_close(logits, lm.model(ids).logits, rtol=0, atol=1e-5)


def test_quantize_saves_what_it_computed_and_gptq_beats_rtn(run):
    layers = [json.loads(line) for line in (run["q"] / "quantize_layers.jsonl").read_text().splitlines()]
    arch = arch_of(load_model(run["plain"]).model)  # a mixture of experts: its experts' linears too
    assert len(layers) == 2 * len(arch.linear_names)
    assert {r["name"].split(".", 3)[3] for r in layers} == set(arch.linear_names)  # fused names kept (Phi-3)
    assert sum(r["loss"] for r in layers) < sum(r["rtn_loss"] for r in layers)
    # the checkpoint reloads as the quantized model: same logits as the in-memory one the job scored
    q = load_model(run["q"])
    assert type(arch.blocks(q.model)[0].get_submodule(arch.linear_names[0])).__name__ == "QuantLinear"
    assert type(arch.blocks(q.model)[2].get_submodule(arch.linear_names[0])).__name__ == "Linear"
    ids = q.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:20]
    plain = load_model(run["plain"])
    assert not torch.equal(_logits(q.model, ids), _logits(plain.model, ids))
    # each packed layer is where the checkpoint names it: its 4-bit weight within 4-bit error of the float one
    for i in range(2):
        for name in arch.linear_names:
            w = arch.blocks(q.model)[i].get_submodule(name).dequantized_weight()
            w0 = arch.blocks(plain.model)[i].get_submodule(name).weight
            assert (w - w0).norm() < 0.25 * w0.norm(), name


def test_the_saved_checkpoint_computes_what_the_quantized_model_did(run, tmp_path):
    """quantize -> save -> reload: the same logits as the model the job quantized in memory (its
    float weights saved as float32, so nothing is rounded on the way)."""
    from llmshrink.data.calib import CalibConfig
    from llmshrink.jobs.quantize import run_quantize
    from llmshrink.quant.config import QuantConfig

    lm = load_model(run["plain"])
    _, out = run_quantize(lm, QuantConfig(bits=4, group_size=16), CalibConfig(str(run["corpus"]), 4, 16, batch_size=2),
                          tmp_path / "q", blocks="0:2", save_dtype="float32")
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:20]
    torch.testing.assert_close(_logits(load_model(out).model, ids), _logits(lm.model, ids), rtol=0, atol=1e-5)


def test_blocks_spilled_to_disk_save_the_same_checkpoint(run, tmp_path):
    """The CLI reads blocks one at a time and frees each finished packed block, saving it from its
    resume file; a model held whole keeps its blocks: the two checkpoints are the same bytes."""
    from llmshrink.data.calib import CalibConfig
    from llmshrink.jobs.quantize import run_quantize
    from llmshrink.quant.config import QuantConfig

    calib = CalibConfig(str(run["corpus"]), nsamples=8, seqlen=24)
    lm = load_model(run["plain"])
    assert lm.blocks is None  # held whole: nothing spilled
    _, out = run_quantize(lm, QuantConfig(bits=4, group_size=16), calib, tmp_path / "q", blocks="0:2")
    files = sorted(p.name for p in run["q"].glob("*.safetensors"))
    assert files == sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert (out / files[0]).read_bytes() == (run["q"] / files[0]).read_bytes()


def test_finetune_trains_the_float_tail_of_the_mixed_checkpoint(run):
    out = run["root"] / "ft"
    rc = main(["-q", "finetune", str(run["q"]), "--out", str(out), "--train", "last:1", "--data", str(run["corpus"]),
               "--seqlen", "16", "--batch-size", "2", "--steps", "3", "--lr", "1e-2", "--eval-data", "none",
               "--ood-data", "none"])
    assert rc == 0
    before, after = load_model(run["q"]), load_model(out)
    arch = arch_of(after.model)
    last = arch.linear_names[-1]
    w0 = arch.blocks(before.model)[2].get_submodule(last).weight
    w1 = arch.blocks(after.model)[2].get_submodule(last).weight
    assert not torch.equal(w0.float(), w1.float())
    q0, q1 = (arch.blocks(m.model)[0].get_submodule(last) for m in (before, after))
    assert type(q1).__name__ == "QuantLinear" and torch.equal(q0.qweight, q1.qweight)


@pytest.mark.parametrize("criterion", ["ppl", "taylor", "magnitude", "angular"])
def test_prune_removes_a_block_and_the_model_runs_in_plain_transformers(run, criterion):
    from transformers import AutoModelForCausalLM

    out = run["root"] / f"pruned-{criterion}"
    rc = main(["-q", "prune", str(run["plain"]), "--out", str(out), "--criterion", criterion, "--remove", "1",
               "--data", str(run["corpus"]), "--nsamples", "4", "--seqlen", "16"])
    assert rc == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    cfg = model.config
    assert cfg.num_hidden_layers == 2 and len(model.model.layers) == 2
    if getattr(cfg, "layer_types", None) is not None:
        assert len(cfg.layer_types) == 2
    ids = torch.tensor([make_tokenizer()(TEXT, add_special_tokens=False)["input_ids"][:10]])
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=2)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=2)
    assert torch.equal(cached, uncached)


def test_gguf_f16_runs_in_llama_cpp_as_in_transformers(run, caplog):
    pytest.importorskip("llama_cpp")
    from llmshrink.eval.llamacpp import load_llamacpp

    out = run["root"] / "m-f16.gguf"
    assert main(["-q", "export", str(run["plain"]), "--format", "gguf", "--type", "f16", "--out", str(out)]) == 0
    lm = load_model(run["plain"])
    lc = load_llamacpp(out, n_ctx=64)
    text = "Now is the winter of our discontent, 2024 -- made glorious <|user|> summer!"
    assert lc.tokenizer(text, add_special_tokens=False)["input_ids"] == \
        lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = lm.tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 8
    ref = _logits(lm.model, ids)
    diff = (lc.model(torch.tensor([ids])).logits[0] - ref).abs()
    scale = (ref - ref.mean(-1, keepdim=True)).abs().mean()
    assert diff.mean() < 0.01 * scale and diff.max() < 0.1 * scale, (float(diff.mean()), float(diff.max()), float(scale))


def test_gguf_q4_0_of_the_quantized_model_runs_in_llama_cpp(run):
    pytest.importorskip("llama_cpp")
    from llmshrink.eval.llamacpp import load_llamacpp

    out = run["root"] / "m-q4_0.gguf"
    assert main(["-q", "export", str(run["q"]), "--format", "gguf", "--type", "q4_0", "--out", str(out),
                 "--calib", str(run["corpus"]), "--nsamples", "4", "--seqlen", "16"]) == 0
    lc = load_llamacpp(out, n_ctx=64)
    ids = make_tokenizer()(SHORT, add_special_tokens=False)["input_ids"]
    logits = lc.model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_hf_gptq_export_eval_generate_and_bench(run, capsys):
    out = run["root"] / "hf"
    assert main(["-q", "export", str(run["q"]), "--format", "hf-gptq", "--out", str(out)]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(run["corpus"]), "--seqlen", "16", "--max-tokens", "96",
                 "--json"]) == 0
    ppl = json.loads(capsys.readouterr().out)["perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    assert main(["-q", "generate", str(run["q"]), "To be", "--template", "none", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["bench", str(run["q"]), "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decode_ms_per_token"] > 0


# The names GPTQModel looks for where they are not the architecture's own (else the same file)
GPTQMODEL_NAMES = {"mixtral": ("model.layers.1.mlp.experts.1.up_proj.qweight", "block_sparse_moe"),
                   "phi3": ("model.layers.1.mlp.gate_proj.qweight", "gate_up_proj")}


def test_gptqmodel_layout_names_modules_as_gptqmodel_and_reads_back_the_same(run):
    from safetensors import safe_open

    own, theirs = run["root"] / "hf-own", run["root"] / "hf-gptqmodel"
    for folder, layout in ((own, "transformers"), (theirs, "gptqmodel")):
        assert main(["-q", "export", str(run["q"]), "--format", "hf-gptq", "--layout", layout, "--out", str(folder)]) == 0
    keys = {f: set(safe_open(f / "model.safetensors", "pt").keys()) for f in (own, theirs)}
    if run["type"] in GPTQMODEL_NAMES:
        name, gone = GPTQMODEL_NAMES[run["type"]]
        assert name in keys[theirs] and not any(gone in k for k in keys[theirs])
        qc = json.loads((theirs / "config.json").read_text())["quantization_config"]
        assert name.removesuffix(".qweight") in qc["modules_in_block_to_quantize"][0]
        module = name.removesuffix(".qweight")
        assert packed_per_config(qc, module) and not packed_per_config(qc, module.replace(".layers.1.", ".layers.2."))
    else:
        assert keys[theirs] == keys[own]
    ids = make_tokenizer()(TEXT, add_special_tokens=False)["input_ids"][:12]
    torch.testing.assert_close(_logits(load_model(theirs).model, ids), _logits(load_model(own).model, ids),
                               rtol=0, atol=0)


def test_gemma3_gguf_follows_llama_cpp_layer_pattern_or_is_refused(tmp_path, capsys):
    """llama.cpp's gemma3 makes every 6th layer full attention with the global RoPE: a model of that
    pattern runs as in transformers; another pattern (a pruned Gemma 3) is refused, nothing written."""
    pytest.importorskip("llama_cpp")
    from llmshrink.eval.llamacpp import load_llamacpp

    tok = make_tokenizer()
    six = save_model_dir(tmp_path / "six", make_arch_model("gemma3_text", len(tok), layers=6), tok)
    assert main(["-q", "export", str(six), "--format", "gguf", "--type", "f16", "--out", str(tmp_path / "six.gguf")]) == 0
    lm = load_model(six)
    assert lm.model.config.layer_types[4:] == ["sliding_attention", "full_attention"]
    ids = lm.tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    ref = _logits(lm.model, ids)
    got = load_llamacpp(tmp_path / "six.gguf", n_ctx=64).model(torch.tensor([ids])).logits[0]
    assert (got - ref).abs().mean() < 0.01 * (ref - ref.mean(-1, keepdim=True)).abs().mean()
    other = save_model_dir(tmp_path / "alt", make_arch_model(
        "gemma3_text", len(tok), layers=2, layer_types=["sliding_attention", "full_attention"]), tok)
    capsys.readouterr()
    assert main(["-q", "export", str(other), "--format", "gguf", "--type", "f16", "--out", str(tmp_path / "alt.gguf")]) == 2
    err = capsys.readouterr().err
    assert "every 6th layer a full-attention one" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "alt.gguf").exists()


MULTILINGUAL = ("¿Dónde está la biblioteca? Mañana vamos a la playa, ¡qué bien! Ñandú, pingüino. "
                "Now is the winter  of our discontent, 2024 -- naïve café; Привет, мир! 你好，世界。 "
                "مرحبا नमस्ते 😀\n\tdef f(x): return x**2  # end")


def test_a_sentencepiece_llama_tokenizes_and_runs_in_llama_cpp_as_in_transformers(tmp_path):
    """Llama 1/2's kind of tokenizer (SentencePiece BPE with byte fallback) is written as llama.cpp's
    "llama" tokenizer: the same tokens as transformers on Spanish, other scripts, emoji and code."""
    pytest.importorskip("llama_cpp")
    from llmshrink.eval.llamacpp import load_llamacpp

    tok = make_sentencepiece_tokenizer()
    src = save_model_dir(tmp_path / "spm", make_tiny_model(len(tok), layers=2), tok)
    assert main(["-q", "export", str(src), "--format", "gguf", "--type", "f16", "--out", str(tmp_path / "m.gguf")]) == 0
    import gguf

    fields = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama" and fields["tokenizer.ggml.add_bos_token"].contents()
    lm = load_model(src)
    lc = load_llamacpp(tmp_path / "m.gguf", n_ctx=256)
    for text in (MULTILINGUAL, "To be, or not to be", " a  leading space", "¡Hola!"):
        ours = lm.tokenizer(text)["input_ids"]
        assert ours[0] == 1 and any(t > 258 for t in ours)  # BOS, and learned pieces, not only bytes
        assert lc.tokenizer(text)["input_ids"] == ours, text
        assert lc.tokenizer(text, add_special_tokens=False)["input_ids"] == \
            lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "<0xC3>" in lm.tokenizer.convert_ids_to_tokens(lm.tokenizer(MULTILINGUAL)["input_ids"])  # bytes used
    ids = lm.tokenizer(SHORT)["input_ids"]
    ref = _logits(lm.model, ids)
    diff = (lc.model(torch.tensor([ids])).logits[0] - ref).abs()
    assert diff.mean() < 0.01 * (ref - ref.mean(-1, keepdim=True)).abs().mean()


@pytest.mark.parametrize(("nsamples", "seqlen", "own"), [(8, 32, True), (1, 12, False)])
def test_each_expert_is_solved_on_its_own_tokens_or_counted_as_a_fallback(tmp_path, nsamples, seqlen, own):
    """Qwen3-MoE: every expert's gate/up and down are solved with the Hessian of the tokens the router
    sends it; with too few calibration tokens (12 tokens, 24 routings over 4 experts) each expert falls
    back on all the block's tokens. quantize_layers.jsonl says which, with the token counts; GPTQ beats
    RTN on every expert that had its own Hessian; the router stays in full precision."""
    from llmshrink.quant.driver import EXPERT_MIN_TOKENS

    tok = make_tokenizer()
    src = save_model_dir(tmp_path / "moe", make_arch_model("qwen3_moe", len(tok), layers=2), tok)
    (tmp_path / "c.txt").write_text(TEXT * 8)
    assert main(["-q", "quantize", str(src), "--out", str(tmp_path / "q"), "--bits", "4", "--group-size", "16",
                 "--calib", str(tmp_path / "c.txt"), "--nsamples", str(nsamples), "--seqlen", str(seqlen)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "q" / "quantize_layers.jsonl").read_text().splitlines()]
    experts = [r for r in rows if ".mlp.experts." in r["name"]]
    assert len(experts) == 2 * 4 * 3 and all("tokens" not in r for r in rows if r not in experts)
    for r in experts:
        assert (r["tokens"] >= EXPERT_MIN_TOKENS) == own and r["hessian"] == ("own" if own else "block")
        assert math.isfinite(r["loss"])
        if own:
            assert r["loss"] < r["rtn_loss"], r["name"]
    # each token goes to 2 of the 4 experts: the counts of a block add up to twice its tokens
    for i in range(2):
        downs = [r["tokens"] for r in experts if r["name"].startswith(f"model.layers.{i}.") and
                 r["name"].endswith("down_proj")]
        assert sum(downs) == 2 * nsamples * seqlen
    q = load_model(tmp_path / "q")
    assert type(q.model.model.layers[0].mlp.experts[3].down_proj).__name__ == "QuantLinear"
    assert type(q.model.model.layers[0].mlp.gate).__name__ != "QuantLinear"
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:16]
    assert torch.isfinite(_logits(q.model, ids)).all()


@pytest.mark.parametrize("model_type", [t for t in NAMES if ARCHITECTURES[t].experts is not None])
def test_a_mixture_of_experts_exports_a_llama_cpp_mix_that_runs(tmp_path, model_type):
    """By the CLI, GPTQ-solved (rows of 32: llama.cpp's fallbacks); the types themselves are
    tests/exporters/test_gguf_mix.py's."""
    pytest.importorskip("llama_cpp")
    from llmshrink.eval.llamacpp import load_llamacpp

    tok = make_tokenizer()
    src = save_model_dir(tmp_path / "moe", make_arch_model(model_type, len(tok)), tok)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 8)
    out = tmp_path / "m-q4_k_m.gguf"
    assert main(["-q", "export", str(src), "--format", "gguf", "--type", "q4_k_m", "--out", str(out),
                 "--calib", str(corpus), "--nsamples", "8", "--seqlen", "24"]) == 0
    prompt = tok(SHORT, add_special_tokens=False)["input_ids"]
    got = load_llamacpp(out, n_ctx=64).model.greedy(prompt, 4)
    assert len(got) >= 1 and all(0 <= x < len(tok) for x in got)


@pytest.mark.parametrize("true_sequential", [True, False])
def test_underfed_experts_fall_back_in_either_order(true_sequential):
    """The driver's fallback Hessians exist whether the experts' gate/up and down are solved in
    stages (true-sequential) or all at once: no expert is left without one."""
    from llmshrink.quant.config import QuantConfig
    from llmshrink.quant.driver import quantize_model

    model = make_arch_model("qwen3_moe", 64, layers=1)
    calib = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, arch_of(model), calib, QuantConfig(bits=4, group_size=16),
                            true_sequential=true_sequential)
    experts = [r for r in report.layers if r.tokens is not None]
    assert len(experts) == 12 and all(r.hessian == "block" and math.isfinite(r.loss) for r in experts)
    assert sum(r.tokens for r in experts if r.name.endswith("down_proj")) == 2 * 10

"""llama.cpp (llama-cpp-python) runs our GGUF files: loads, tokenizes like transformers, generates,
and scores the same windows as ``llmshrink eval``."""

import json

import pytest
import torch

from llmshrink.cli import main
from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.eval.config import EvalConfig
from llmshrink.eval.llamacpp import _model_params, cpu_has_amx, load_llamacpp
from llmshrink.eval.run import evaluate_perplexity
from llmshrink.exporters.config import GGUFConfig
from llmshrink.jobs.export import export_gguf
from llmshrink.models.load import load_model
from llmshrink.models.zoo import get_alias
from llmshrink.pruning.depth import remove_blocks
from tests.conftest import TEXT, make_tiny_model, save_model_dir

pytest.importorskip("llama_cpp", reason="llama-cpp-python is a test dependency: pip install -e .[test]")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import make_tokenizer

    tok = make_tokenizer()
    return save_model_dir(tmp_path_factory.mktemp("tiny") / "m", make_tiny_model(len(tok), layers=3), tok)


@pytest.mark.parametrize("type_name", ["f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_llama_cpp_loads_and_generates_every_type(tmp_path, tiny, text_file, type_name):
    lm = load_model(str(tiny))
    out = tmp_path / f"m-{type_name}.gguf"
    export_gguf(lm, GGUFConfig(type=type_name), out, calib=CalibConfig(str(text_file), 8, 32, batch_size=4))
    lc = load_llamacpp(out, n_ctx=128)
    text = "Now is the winter of our discontent, 2024 -- made glorious <|user|> summer!"
    assert lc.tokenizer(text, add_special_tokens=False)["input_ids"] == \
        lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = lm.tokenizer("To be, or not to be", add_special_tokens=False)["input_ids"]
    got = lc.model.greedy(prompt, 12)
    assert len(got) >= 1 and all(0 <= t < lm.model.config.vocab_size for t in got)
    # llama.cpp's logits are those of the weights the file holds, as transformers reads them; llama.cpp
    # rounds activations to 8 bits in quantized dot products, so they agree closely, not exactly.
    back = load_model(str(out))
    with torch.no_grad():
        ref = back.model(torch.tensor([prompt])).logits
    diff = (lc.model(torch.tensor([prompt])).logits - ref).abs()
    scale = (ref - ref.mean(-1, keepdim=True)).abs().mean()
    assert diff.mean() < 0.05 * scale, (diff.mean(), scale)


def test_f16_greedy_continuation_and_perplexity_match_transformers(tmp_path, tiny, text_file, capsys):
    lm = load_model(str(tiny))
    out = tmp_path / "m.gguf"
    export_gguf(lm, GGUFConfig(type="f16"), out)
    lc = load_llamacpp(out, n_ctx=256)
    prompt = lm.tokenizer("All the world's a stage", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = lm.model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                eos_token_id=None)[0, len(prompt):].tolist()
    assert lc.model.greedy(prompt, 16, stop_at_eos=False) == ref
    cfg = EvalConfig(data=str(text_file), seqlen=64)
    ours = evaluate_perplexity(lm, cfg)["perplexity"]
    assert main(["eval", str(out), "--data", str(text_file), "--seqlen", "64", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["backend"] == "llama.cpp" and rec["tokens"] == evaluate_perplexity(lm, cfg)["tokens"]
    assert rec["perplexity"] == pytest.approx(ours, rel=5e-3)
    # the API routes a .gguf file the same way, and converts it through transformers when asked
    import llmshrink as ls

    api = ls.evaluate(out, cfg)
    assert api["backend"] == "llama.cpp" and api["perplexity"] == rec["perplexity"]
    converted = ls.evaluate(out, cfg, backend="transformers")
    assert converted["backend"] == "transformers" and converted["perplexity"] == pytest.approx(ours, rel=1e-3)


def test_a_pruned_model_exports_and_runs(tmp_path, tiny):
    lm = load_model(str(tiny))
    remove_blocks(lm.model, lm.arch, [1])
    out = tmp_path / "p.gguf"
    export_gguf(lm, GGUFConfig(type="f16"), out)
    lc = load_llamacpp(out, n_ctx=64)
    ids = lm.tokenizer(TEXT[:60], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lc.model(torch.tensor([ids])).logits, lm.model(torch.tensor([ids])).logits,
                                   atol=0.05, rtol=0)


def test_missing_or_broken_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_llamacpp(tmp_path / "none.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="not a readable GGUF file"):
        load_llamacpp(bad)


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_has_amx(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: amx_int8\n")
    assert not cpu_has_amx(info)
    assert not cpu_has_amx(tmp_path / "missing")


def test_extra_buffer_types_are_switched_off_for_one_load_only():
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params
    with _model_params(use_extra_bufts=False):
        assert low.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params is default and default().use_extra_bufts is True
    with _model_params(use_extra_bufts=True):
        assert low.llama_model_default_params is default


@pytest.mark.parametrize("type_name", ["q4_0", "q8_0"])
def test_quantized_files_run_with_and_without_extra_buffers(tmp_path, tiny, type_name):
    # llama.cpp's AMX layout crashes in llama_decode (0.3.36), so the default leaves it out where the
    # CPU has AMX; forcing the extra buffer types on is only safe without AMX.
    lm = load_model(str(tiny))
    out = tmp_path / f"m-{type_name}.gguf"
    export_gguf(lm, GGUFConfig(type=type_name, method="rtn"), out)
    prompt = lm.tokenizer("To be, or not to be", add_special_tokens=False)["input_ids"]
    logits = [load_llamacpp(out, n_ctx=64, extra_buffers=False).model(torch.tensor([prompt])).logits,
              load_llamacpp(out, n_ctx=64).model(torch.tensor([prompt])).logits]
    if not cpu_has_amx():
        logits.append(load_llamacpp(out, n_ctx=64, extra_buffers=True).model(torch.tensor([prompt])).logits)
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-2, rtol=1e-2)


MULTILINGUAL = (
    "In 1776, 13 colonies declared independence; en el año 2024: ¿Qué tal? El niño comió 3.14159 pasteles. "
    "Über 1000 Bäume wuchsen — naïve café, œuvre. Привет, мир! 12345 рублей.  你好，世界！今天是2026年12月3日。"
    "こんにちは世界 123。 مرحبا بالعالم ١٢٣ . नमस्ते दुनिया ४२ 🤖🚀👍🏽 x=42; def f(n): return n**2  # 0xFF\n\n"
    "\t  spaces   then  4   digits 2048 and $3,000,000.50 -- 'tis 'twas we're they'll I'd.\r\n"
)


@pytest.mark.e2e
def test_default_model_f16_through_llama_cpp_continues_like_transformers(tmp_path):
    lm = load_model("smollm2-135m")
    out = tmp_path / "smollm2-f16.gguf"
    export_gguf(lm, GGUFConfig(type="f16"), out)
    lc = load_llamacpp(out, n_ctx=256)
    text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: 1609"
    assert lc.tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
    # A long multilingual text (digits, runs of spaces, scripts, emoji, code): the tokenizer
    # written into the file (pre-tokenizer "smollm") splits it exactly as transformers does.
    long = MULTILINGUAL * 12
    ids = lm.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2500 and lc.tokenizer(long, add_special_tokens=False)["input_ids"] == ids
    import gguf

    kv = {k: f.contents() for k, f in gguf.GGUFReader(str(out)).fields.items() if not k.startswith("tokenizer.ggml.t")}
    src = {k: f.contents() for k, f in gguf.GGUFReader(str(get_alias("smollm2-135m").gguf_path())).fields.items()
           if k.startswith("general.") and k not in ("general.file_type", "general.quantization_version")}
    assert {k: kv.get(k) for k in src} == src  # the source's name, organization, licence, languages, ...
    assert kv["tokenizer.ggml.pre"] == "smollm" and kv["general.license"] == "apache-2.0"
    prompt = lm.tokenizer("The king said to his son", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = lm.model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):]
    assert lc.model.greedy(prompt, 32) == ref.tolist()

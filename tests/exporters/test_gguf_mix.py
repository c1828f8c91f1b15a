"""llama.cpp's K-quant mixes: our per-tensor types equal llama-quantize's on the same F16 file, the
files load and generate in llama.cpp, and each K tensor holds the GPTQ solution exactly."""

import ctypes
from collections import Counter

import gguf
import numpy as np
import pytest
import torch

from llmshrink.data.calib import CalibConfig
from llmshrink.errors import UserError
from llmshrink.exporters.config import GGUFConfig
from llmshrink.exporters.gguf_mix import MIXES, fallback, plan_types, use_more_bits
from llmshrink.jobs.export import export_gguf
from llmshrink.models.load import load_model
from tests.conftest import make_tiny_model, save_model_dir


def test_use_more_bits_is_llama_cpps_pattern():
    # n = 32 (Llama-2-7B): first and last 4 layers, then every third from layer 6
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_fallbacks_for_rows_that_are_not_whole_super_blocks():
    assert [fallback(t, 576, "x") for t in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")] == \
        ["q4_0", "q4_0", "q5_0", "q5_1", "q8_0"]
    assert fallback("q4_k", 1536, "x") == "q4_k" and fallback("q4_k", 48, "x") == "f16"
    with pytest.raises(UserError, match="cannot be stored as q4_0"):
        fallback("q4_0", 48, "blk.0.attn_q.weight")


def test_q4_k_m_plan_on_llama_2_7b_shapes():
    """Counts llama-quantize prints for Llama-2-7B Q4_K_M: 16 attn_v and 16 ffn_down at Q6_K."""
    names = [("token_embd.weight", 4096)]
    for i in range(32):
        names += [(f"blk.{i}.attn_q.weight", 4096), (f"blk.{i}.attn_v.weight", 4096),
                  (f"blk.{i}.ffn_down.weight", 11008 // 256 * 256)]
    names.append(("output.weight", 4096))
    plan = plan_types(MIXES["q4_k_m"], names, n_gqa=1, tied=False)
    c = Counter(plan.values())
    assert c == {"q4_k": 1 + 32 + 16 + 16, "q6_k": 16 + 16 + 1}
    assert plan["output.weight"] == "q6_k" and plan["token_embd.weight"] == "q4_k"


def _llama_cpp_types(f16: str, mix: str, out: str) -> dict[str, str]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    p.nthread = 1
    assert llama_cpp.llama_model_quantize(f16.encode(), out.encode(), ctypes.byref(p)) == 0
    return _types(out)


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _tensor_bytes(path) -> int:
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)


@pytest.fixture(scope="module")
def k_models(tmp_path_factory, tokenizer):
    """Tiny models whose rows hold whole super-blocks (hidden 256) or not (hidden 288), tied
    and untied, 8 blocks (so use_more_bits picks some), 4 query heads per kv head or 2."""
    root = tmp_path_factory.mktemp("k")
    shapes = {"w256-untied-gqa4": dict(hidden=256, tie=False, kv_heads=1),
              "w288-tied-gqa2": dict(hidden=288, tie=True, kv_heads=2)}
    return {name: save_model_dir(root / name, make_tiny_model(len(tokenizer), layers=8, intermediate=512, heads=4,
                                                               std=0.08, **kw), tokenizer)
            for name, kw in shapes.items()}


@pytest.fixture(scope="module")
def f16_files(tmp_path_factory, k_models):
    root = tmp_path_factory.mktemp("f16")
    for name, folder in k_models.items():
        export_gguf(load_model(str(folder)), GGUFConfig(type="f16"), root / f"{name}.gguf")
    return {name: root / f"{name}.gguf" for name in k_models}


@pytest.mark.parametrize("shape", ["w256-untied-gqa4", "w288-tied-gqa2"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_our_mix_types_equal_llama_quantizes(tmp_path, k_models, f16_files, shape, mix):
    theirs = _llama_cpp_types(str(f16_files[shape]), mix, str(tmp_path / "theirs.gguf"))
    ours = tmp_path / "ours.gguf"  # the types do not depend on how the blocks are rounded: plain RTN
    rep = export_gguf(load_model(str(k_models[shape])), GGUFConfig(type=mix, method="rtn", mse=False), ours)
    assert _types(ours) == theirs
    assert _tensor_bytes(ours) == _tensor_bytes(tmp_path / "theirs.gguf")
    assert rep.type == mix and sum(rep.tensors.values()) == len(theirs)
    assert gguf.GGUFReader(ours).fields["general.file_type"].contents() == int(MIXES[mix].file_type)


@pytest.mark.parametrize(("mix", "down_type"), [("q2_k", "Q3_K"), ("q4_k_m", "Q4_K"), ("iq4_nl", "IQ4_NL"), ("iq4_xs", "IQ4_XS")])
def test_gptq_mixes_hold_the_solution_and_run_in_llama_cpp(tmp_path, k_models, f16_files, text_file, mix, down_type):
    from llmshrink.eval.llamacpp import load_llamacpp

    lm = load_model(str(k_models["w256-untied-gqa4"]))
    out = tmp_path / f"{mix}.gguf"
    # GPTQ without the range search, for time (the search's exactness is tests/exporters/test_ggml.py's)
    rep = export_gguf(lm, GGUFConfig(type=mix, mse=False), out, calib=CalibConfig(str(text_file), 8, 32, batch_size=4))
    assert len(rep.solved) == 8 * 7
    r = gguf.GGUFReader(out)
    t = next(t for t in r.tensors if t.name == "blk.5.ffn_down.weight")
    assert t.tensor_type.name == down_type
    w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(lm.model.config.hidden_size, -1)
    np.testing.assert_array_equal(w, lm.model.model.layers[5].mlp.down_proj.weight.detach().numpy())
    prompt = lm.tokenizer("To be, or not to be", add_special_tokens=False)["input_ids"]
    got = load_llamacpp(out, n_ctx=64).model.greedy(prompt, 8)
    assert len(got) >= 1 and all(0 <= x < lm.model.config.vocab_size for x in got)
    # llama.cpp rounds activations to 8 bits in K-quant dot products, so its logits differ from
    # transformers' on the same weights by a few percent, for its own files as much as for ours
    _llama_cpp_types(str(f16_files["w256-untied-gqa4"]), mix, str(tmp_path / "theirs.gguf"))
    ours, scale = _gap_to_transformers(out, prompt)
    theirs, _ = _gap_to_transformers(tmp_path / "theirs.gguf", prompt)
    assert ours < 0.15 * scale and ours < 1.5 * theirs, (ours, theirs, scale)


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory, tokenizer):
    """Tiny mixtures of experts whose rows hold whole super-blocks, each with its F16 file: Mixtral
    with 8 experts (llama.cpp's 8-expert rules apply), Qwen3-MoE with 4 (its attention output, 64
    wide, falls back) and Qwen2-MoE with 4 and a shared expert (two ffn_down tensors per block)."""
    from tests.archs import make_arch_model

    root = tmp_path_factory.mktemp("moe")
    shapes = {"mixtral": dict(num_local_experts=8, intermediate_size=256), "qwen3_moe": dict(moe_intermediate_size=256),
              "qwen2_moe": dict(moe_intermediate_size=256, shared_expert_intermediate_size=256)}
    models = {}
    for arch, kw in shapes.items():
        model = make_arch_model(arch, len(tokenizer), layers=8, std=0.08, tie=False, hidden_size=256, **kw)
        folder = save_model_dir(root / arch, model, tokenizer)
        export_gguf(load_model(str(folder)), GGUFConfig(type="f16"), root / f"{arch}.gguf")
        models[arch] = (folder, root / f"{arch}.gguf")
    return models


# the default tier: a mix of each family of rules (8-expert attn_output kept at base: q3_k_l); all in the slow tier
MOE_QUICK = ("q2_k", "q3_k_l", "q4_k_m", "iq4_xs")


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "qwen2_moe"])
@pytest.mark.parametrize("mix", [m if m in MOE_QUICK else pytest.param(m, marks=pytest.mark.slow) for m in MIXES])
def test_mixtures_of_experts_get_llama_quantizes_types(tmp_path, moe_models, arch, mix):
    folder, f16 = moe_models[arch]
    theirs = _llama_cpp_types(str(f16), mix, str(tmp_path / "theirs.gguf"))
    ours = tmp_path / "ours.gguf"
    export_gguf(load_model(str(folder)), GGUFConfig(type=mix, method="rtn", mse=False), ours)
    assert _types(ours) == theirs
    assert _tensor_bytes(ours) == _tensor_bytes(tmp_path / "theirs.gguf")


def test_gptq_mix_of_experts_holds_each_experts_solution_and_runs_in_llama_cpp(tmp_path, moe_models, text_file):
    from llmshrink.eval.llamacpp import load_llamacpp

    lm = load_model(str(moe_models["mixtral"][0]))
    out = tmp_path / "q4_k_m.gguf"
    rep = export_gguf(lm, GGUFConfig(type="q4_k_m", mse=False), out, calib=CalibConfig(str(text_file), 8, 32, batch_size=4))
    assert len(rep.solved) == 8 * (4 + 8 * 3)
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert tensors["blk.0.attn_v.weight"].tensor_type.name == "Q8_0"  # llama.cpp's 8-expert rule
    t = tensors["blk.5.ffn_down_exps.weight"]
    assert t.tensor_type.name == "Q4_K"
    w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(8, 256, 256)
    for e in (0, 7):
        np.testing.assert_array_equal(w[e], lm.model.model.layers[5].mlp.experts[e].w2.weight.detach().numpy())
    prompt = lm.tokenizer("To be, or not to be", add_special_tokens=False)["input_ids"]
    got = load_llamacpp(out, n_ctx=64).model.greedy(prompt, 8)
    assert len(got) >= 1 and all(0 <= x < lm.model.config.vocab_size for x in got)


def _gap_to_transformers(path, prompt) -> tuple[float, float]:
    """Mean |llama.cpp logits − transformers logits| on the file's weights, and the logits' spread."""
    from llmshrink.eval.llamacpp import load_llamacpp

    back = load_model(str(path))  # transformers' GGUF reader dequantizes K blocks with gguf-py
    with torch.no_grad():
        ref = back.model(torch.tensor([prompt])).logits
    diff = (load_llamacpp(path, n_ctx=64).model(torch.tensor([prompt])).logits - ref).abs()
    return float(diff.mean()), float((ref - ref.mean(-1, keepdim=True)).abs().mean())


def test_unknown_mix_is_a_one_line_error():
    with pytest.raises(UserError, match="unsupported GGUF type 'q4_k_x'.*q4_k_m"):
        GGUFConfig(type="q4_k_x")


@pytest.mark.e2e
def test_default_model_mix_types_equal_llama_quantizes(tmp_path):
    """SmolLM2-135M (hidden 576): every row but ffn_down's (1,536) falls back, as in llama.cpp."""
    from llmshrink.exporters.gguf import plan_tensor_types
    from llmshrink.models.zoo import DEFAULT_MODEL

    lm = load_model(DEFAULT_MODEL)
    f16 = tmp_path / "f16.gguf"
    export_gguf(lm, GGUFConfig(type="f16"), f16)
    for mix in ("q2_k", "q4_k_m", "iq4_nl", "iq4_xs"):
        theirs = _llama_cpp_types(str(f16), mix, str(tmp_path / f"{mix}.gguf"))
        plan = plan_tensor_types(lm, GGUFConfig(type=mix))
        ours = {f"blk.{n.split('.')[2]}.{_GGUF[n.rsplit('.', 1)[-1]]}.weight": t.name.upper()
                for n, t in plan.linears.items()}
        ours["token_embd.weight"] = plan.embed.name.upper()
        assert plan.output is None  # tied
        assert ours == {k: v for k, v in theirs.items() if v != "F32"}, mix


_GGUF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def test_fallbacks_are_logged_once_per_tensor_kind(caplog):
    names = [("token_embd.weight", 576)] + [(f"blk.{i}.{k}.weight", 576) for i in range(4)
                                              for k in ("attn_q", "ffn_gate")]
    with caplog.at_level("INFO", logger="llmshrink.exporters.gguf_mix"):
        plan = plan_types(MIXES["q4_k_m"], names, n_gqa=1, tied=True)
    assert set(plan.values()) == {"q5_0", "q8_0"}
    lines = [r.getMessage() for r in caplog.records]
    assert plan["token_embd.weight"] == "q8_0"  # llama.cpp's own choice for such an output, not a fallback
    assert sorted(lines) == sorted([
        "attn_q: 4 tensor(s) of rows that are not whole q4_k blocks fall back to q5_0",
        "ffn_gate: 4 tensor(s) of rows that are not whole q4_k blocks fall back to q5_0"])

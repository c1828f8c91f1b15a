"""GPTAQ: the GPTQ solve against the original model's outputs (the solver and the driver)."""

import copy

import pytest
import torch

from llmshrink.models.arch import arch_of
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.driver import quantize_model
from llmshrink.quant.gptq import accumulate_drift, accumulate_hessian, gptq_quantize
from tests.archs import ARCHS, make_arch_model


def _asymmetric(out=48, cols=96, n=2048, drift=0.3, seed=0):
    """W, the original inputs X and the quantized model's X̃ (X plus a correlated drift), H and D."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix
    X[:, :4] *= 8
    Xq = X + drift * torch.randn(n, cols, generator=g) @ mix
    W = torch.randn(out, cols, generator=g) * 0.05
    H, _ = accumulate_hessian(None, 0, Xq)
    D = accumulate_drift(None, 0, Xq, X)
    return W, X, Xq, H, D


def _output_error(W, Q, X, Xq):
    return float(((Xq.double() @ Q.double().T - X.double() @ W.double().T) ** 2).sum())


def test_drift_accumulation_matches_definition_batch_by_batch():
    X = torch.randn(300, 16, dtype=torch.float64)
    Xq = X + 0.1 * torch.randn(300, 16, dtype=torch.float64)
    D, H, n = None, None, 0
    for a, b in zip(Xq.split(70), X.split(70), strict=True):
        D = accumulate_drift(D, n, a, b)
        H, n = accumulate_hessian(H, n, a)
    torch.testing.assert_close(D, 2 / 300 * (X - Xq).T @ Xq)
    with pytest.raises(ValueError, match="do not match"):
        accumulate_drift(None, 0, Xq, X[:10])


@pytest.mark.parametrize("form", ["target", "columns"])
def test_no_drift_or_alpha_zero_is_gptq_bit_for_bit(form):
    W, _, _, H, D = _asymmetric()
    cfg = QuantConfig(bits=3, group_size=32, drift_solve=form)
    plain = gptq_quantize(W, H, cfg)
    for res in (gptq_quantize(W, H, cfg, drift=torch.zeros_like(D)),
                gptq_quantize(W, H, QuantConfig(bits=3, group_size=32, alpha=0.0, drift_solve=form), drift=D)):
        assert torch.equal(res.q, plain.q) and torch.equal(res.scales, plain.scales)


@pytest.mark.parametrize("group_size", [32, 40])  # 40: a group's grid reaches past a 16-column block
def test_the_lazy_updates_carry_the_column_drift_term_exactly(group_size):
    """Column by column (block_size 1) and in lazy blocks the solve is the same problem."""
    W, _, _, H, D = _asymmetric(cols=80)
    kw = dict(bits=4, group_size=group_size, alpha=1.0, drift_solve="columns")
    a = gptq_quantize(W, H, QuantConfig(**kw, block_size=1), drift=D)
    b = gptq_quantize(W, H, QuantConfig(**kw, block_size=16), drift=D)
    assert (a.q != b.q).float().mean() < 2e-3
    torch.testing.assert_close(a.scales, b.scales, rtol=1e-4, atol=1e-6)


def test_the_target_form_at_eight_bits_reaches_the_least_squares_optimum():
    W, X, Xq, H, D = _asymmetric()
    Xd, Xqd = X.double(), Xq.double()
    best = W.double() @ Xd.T @ Xqd @ torch.linalg.inv(Xqd.T @ Xqd)  # argmin ||W' Xq - W X||
    optimum = _output_error(W, best.float(), X, Xq)
    got = _output_error(W, gptq_quantize(W, H, QuantConfig(bits=8, group_size=32, alpha=1.0), drift=D).dequantize(),
                        X, Xq)
    plain = _output_error(W, gptq_quantize(W, H, QuantConfig(bits=8, group_size=32)).dequantize(), X, Xq)
    assert got < optimum * 1.03 < plain * 0.95  # damping (1 % of the mean diagonal) and 8-bit rounding: the gap


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(("form", "alpha"), [("target", 0.5), ("target", 1.0), ("columns", 1.0)])
def test_gptaq_lowers_the_error_against_the_original_outputs(bits, form, alpha):
    W, X, Xq, H, D = _asymmetric(drift=0.5)
    cfg = QuantConfig(bits=bits, group_size=32, alpha=alpha, drift_solve=form)
    gptq = gptq_quantize(W, H, cfg).dequantize()
    gptaq = gptq_quantize(W, H, cfg, drift=D).dequantize()
    assert _output_error(W, gptaq, X, Xq) < 0.98 * _output_error(W, gptq, X, Xq)


def _reference_gptaq(model, calib, cfg):
    """GPTAQ written plainly: for each block and group, run the original block over every batch of
    its original inputs and the quantized block over every batch of its quantized inputs, in full,
    with hooks on the group's first linear; accumulate H and the drift; solve the group."""
    from llmshrink.blockwise import capture_block_inputs, run_block

    arch = arch_of(model)
    inputs = capture_block_inputs(model, arch, list(calib.split(4)))
    native = [h.clone() for h in inputs.hidden]
    results = {}
    for i, block in enumerate(arch.blocks(model)):
        original = copy.deepcopy(block)
        for group in arch.sequential:
            seen = {"q": [], "fp": []}
            hooks = [m.get_submodule(group[0]).register_forward_pre_hook(lambda _m, a, k=k, seen=seen: seen[k].append(a[0]))
                     for m, k in ((block, "q"), (original, "fp"))]
            run_block(block, inputs.at(i))
            run_block(original, inputs.at(i, native))
            for h in hooks:
                h.remove()
            H = D = None
            n = 0
            for x, ref in zip(seen["q"], seen["fp"], strict=True):
                D = accumulate_drift(D, n, x, ref)
                H, n = accumulate_hessian(H, n, x)
            for name in group:
                mod = block.get_submodule(name)
                res = gptq_quantize(mod.weight.data, H, cfg, drift=D)
                mod.weight.data = res.dequantize()
                results[f"model.layers.{i}.{name}"] = res
        native = run_block(original, inputs.at(i, native))
        inputs.hidden = run_block(block, inputs.at(i))
    return results


def _calib(n=8, seqlen=32, vocab=64):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", sorted(t for t in ARCHS if t not in ("mixtral", "qwen2_moe", "qwen3_moe")))
def test_staged_gptaq_matches_the_reference(model_type):
    """The staged driver's reference passes (the original block stopped at each stage's input) give
    the drift of running both models in full."""
    cfg = QuantConfig(method="gptaq", bits=3, group_size=16)
    ref_model, model = make_arch_model(model_type, 64, layers=3), make_arch_model(model_type, 64, layers=3)
    model.load_state_dict(ref_model.state_dict())
    expected = _reference_gptaq(ref_model, _calib(), cfg)
    report = quantize_model(model, arch_of(model), _calib(), cfg, batch_size=4)
    assert report.results.keys() == expected.keys()
    for name, res in report.results.items():
        differ = (res.q != expected[name].q).float().mean()
        assert differ < 1e-3, f"{name}: {differ:.2%} of codes differ"


def _final_error(method, model_type="llama", bits=3):
    torch.manual_seed(0)
    original = make_arch_model(model_type, 64, layers=4)
    model = copy.deepcopy(original)
    calib = _calib(n=32, seqlen=64)
    quantize_model(model, arch_of(model), calib, QuantConfig(method=method, bits=bits, group_size=16, recon_steps=40))
    with torch.no_grad():
        want = original(calib, output_hidden_states=True).hidden_states[-1]
        got = model(calib, output_hidden_states=True).hidden_states[-1]
    return float(((got - want) ** 2).mean() / (want**2).mean())


@pytest.mark.parametrize("bits", [2, 3])
def test_gptaq_brings_the_last_block_output_closer_to_the_original(bits):
    assert _final_error("gptaq", bits=bits) < _final_error("gptq", bits=bits)


def test_moe_experts_are_solved_without_drift_and_the_rest_with_it():
    moe = next(t for t in ("qwen2_moe", "mixtral", "qwen3_moe") if t in ARCHS)
    model = make_arch_model(moe, 64, layers=2)
    plain = copy.deepcopy(model)
    arch = arch_of(model)
    a = quantize_model(model, arch, _calib(), QuantConfig(method="gptaq", bits=3, group_size=16), blocks=range(1, 2))
    b = quantize_model(plain, arch, _calib(), QuantConfig(method="gptq", bits=3, group_size=16), blocks=range(1, 2))
    assert a.results.keys() == b.results.keys()
    # q/k/v read the same inputs in both models (block 0 stays float); o_proj reads quantized q/k/v
    assert torch.equal(a.results["model.layers.1.self_attn.q_proj"].q, b.results["model.layers.1.self_attn.q_proj"].q)
    assert not torch.equal(a.results["model.layers.1.self_attn.o_proj"].q, b.results["model.layers.1.self_attn.o_proj"].q)


# --- recon: block-output reconstruction after the solve ---

def test_the_kept_updates_round_to_the_codes():
    W, _, _, H, D = _asymmetric()
    for drift in (None, D):
        res = gptq_quantize(W, H, QuantConfig(bits=3, group_size=32), drift=drift, keep_updated=True)
        cols = res.g_idx.long()
        codes = torch.clamp(torch.round(res.updated / res.scales.T[:, cols]) + res.zeros.T[:, cols], 0, 7)
        assert (codes != res.q.float()).float().mean() < 1e-3
        assert gptq_quantize(W, H, QuantConfig(bits=3, group_size=32), drift=drift).updated is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_lowers_a_synthetic_blocks_output_error_and_stays_on_the_grid(seed):
    from llmshrink.quant.recon import reconstruct_block

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    block = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 64))
    original = copy.deepcopy(block)
    X = [torch.randn(256, 64, generator=g) @ (torch.eye(64) + 0.3 * torch.randn(64, 64, generator=g))
         for _ in range(4)]
    cfg = QuantConfig(bits=3, group_size=32)
    results = {}
    with torch.no_grad():
        for name in ("0", "2"):
            H = None
            n = 0
            mod = block.get_submodule(name)
            for x in X:
                inp = x if name == "0" else block[1](block[0](x))
                H, n = accumulate_hessian(H, n, inp)
            results[name] = gptq_quantize(mod.weight.data, H, cfg, keep_updated=True)
            mod.weight.data = results[name].dequantize()
        targets = [original(x) for x in X]

    def error():
        with torch.no_grad():
            return sum(float(((block(x) - t) ** 2).mean()) for x, t in zip(X, targets, strict=True))

    before = error()
    tuned, stats = reconstruct_block(block, results, cfg.maxq, X, targets, [{}] * 4, steps=100)
    assert stats.kept and stats.after < stats.before
    assert stats.before == pytest.approx(before, rel=1e-4)
    for name, res in tuned.items():
        assert res.q.max() <= 7 and torch.equal(res.zeros, results[name].zeros)
        assert torch.equal(res.scales, res.scales.half().float())  # packing loses nothing
        assert (res.q != results[name].q).any()
        block.get_submodule(name).weight.data = res.dequantize()
    assert error() == pytest.approx(stats.after, rel=1e-4)


def test_recon_on_a_model_beats_gptaq_on_the_last_block_output():
    assert _final_error("recon") < _final_error("gptaq")

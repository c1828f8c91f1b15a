import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.driver import quantize_model
from tests.archs import ARCHS, make_arch_model
from tests.conftest import make_tiny_model


def _calib(n=16, seqlen=32, vocab=64):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_quantize_model_in_place(method):
    model = make_tiny_model(64, layers=3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    cfg = QuantConfig(method=method, bits=3, group_size=16)
    report = quantize_model(model, arch_of(model), _calib(), cfg, blocks=range(0, 2))
    names = [r.name for r in report.layers]
    assert len(names) == 2 * 7 and names[0] == "model.layers.0.self_attn.q_proj"
    for name, res in report.results.items():
        w = model.get_submodule(name).weight
        torch.testing.assert_close(w, res.dequantize())  # the module holds the quantized solution
        for g in range(int(res.g_idx.max()) + 1):  # 3 bits: at most 8 levels per row and group
            assert len(torch.unique(w[0, res.g_idx == g])) <= 8
    untouched = [n for n in before if n.startswith("model.layers.2.")]
    assert untouched and all(torch.equal(before[n], dict(model.named_parameters())[n]) for n in untouched)
    if method == "gptq":
        assert sum(r.loss for r in report.layers) < sum(r.rtn_loss for r in report.layers)


def test_quantize_model_checks_its_input():
    model = make_tiny_model(64)
    with pytest.raises(UserError, match="outside the model's 2 blocks"):
        quantize_model(model, arch_of(model), _calib(), QuantConfig(), blocks=range(0, 5))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"non-finite weights in model\.layers\.0\.mlp\.down_proj"):
        quantize_model(model, arch_of(model), _calib(), QuantConfig(group_size=16))
    model = make_tiny_model(64)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[0] = float("inf")
    with pytest.raises(UserError, match=r"non-finite activations enter model\.layers\.1\.mlp\.gate_proj"):
        quantize_model(model, arch_of(model), _calib(), QuantConfig(group_size=16))


def _reference_quantize(model, calib, cfg, true_sequential):
    """The reference driver, written plainly: for each block and group, run the whole block over
    all batches with hooks on every linear of the group, solve, and finally run the block again."""
    from llmshrink.blockwise import capture_block_inputs, run_block
    from llmshrink.quant.gptq import accumulate_hessian, gptq_quantize

    arch = arch_of(model)
    inputs = capture_block_inputs(model, arch, list(calib.split(4)))
    results = {}
    for i, block in enumerate(arch.blocks(model)):
        groups = arch.sequential if true_sequential else (arch.linear_names,)
        for group in groups:
            H = {n: [None, 0] for n in group}
            hooks = [block.get_submodule(n).register_forward_pre_hook(
                lambda _m, a, n=n, H=H: H[n].__setitem__(slice(0, 2), accumulate_hessian(*H[n], a[0]))) for n in group]
            run_block(block, inputs.at(i))
            for h in hooks:
                h.remove()
            for n in group:
                mod = block.get_submodule(n)
                res = gptq_quantize(mod.weight.data, H[n][0], cfg)
                mod.weight.data = res.dequantize()
                results[f"model.layers.{i}.{n}"] = res
        inputs.hidden = run_block(block, inputs.at(i))
    return results


@pytest.mark.parametrize("model_type", sorted(ARCHS))
@pytest.mark.parametrize("true_sequential", [True, False])
def test_staged_driver_matches_the_reference_driver(true_sequential, model_type):
    """The staged driver (shared Hessians per group, early stops, attention carried in the residual) solves the
    same problems as running every block in full for every group, on every architecture (Gemma's post-norms,
    Phi-3's fused layers, per-layer masks)."""
    cfg = QuantConfig(bits=3, group_size=16)
    calib = _calib(n=8)
    ref_model, model = make_arch_model(model_type, 64, layers=3), make_arch_model(model_type, 64, layers=3)
    model.load_state_dict(ref_model.state_dict())
    expected = _reference_quantize(ref_model, calib, cfg, true_sequential)
    report = quantize_model(model, arch_of(model), calib, cfg, batch_size=4, true_sequential=true_sequential)
    assert report.results.keys() == expected.keys()
    for name, res in report.results.items():
        differ = (res.q != expected[name].q).float().mean()
        assert differ < 1e-3, f"{name}: {differ:.2%} of codes differ"
        torch.testing.assert_close(res.scales, expected[name].scales, rtol=1e-4, atol=1e-6)
    ids = calib[:2]
    torch.testing.assert_close(model(ids).logits, ref_model(ids).logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_a_skipped_branch_on_the_carried_residual_gives_the_block_output_bit_for_bit(model_type):
    """The driver's residual carry rests on this property of pre-norm blocks: what enters the
    next branch's norm, run through the block with the finished branch skipped, is the block's output
    (Gemma's post-norm maps the skipped branch's zero to zero)."""
    from llmshrink.blockwise import capture_block_inputs
    from llmshrink.quant.stages import Skip

    model = make_arch_model(model_type, 64)
    arch = arch_of(model)
    block = arch.blocks(model)[0]
    inputs = capture_block_inputs(model, arch, [_calib(n=2)])
    h, kw = inputs.hidden[0], inputs.kwargs[0]
    carried = {}
    hook = block.get_submodule(arch.part_norms[1]).register_forward_pre_hook(
        lambda _m, a: carried.__setitem__("h", a[0].clone()))
    with torch.no_grad():
        out = block(h, **kw)
    hook.remove()
    out = out[0] if isinstance(out, tuple) else out
    attn = block.get_submodule(arch.parts[0])
    block.set_submodule(arch.parts[0], Skip(tuple_output=True))
    with torch.no_grad():
        again = block(carried["h"], **kw)
    block.set_submodule(arch.parts[0], attn)
    again = again[0] if isinstance(again, tuple) else again
    assert not torch.equal(carried["h"], h)
    assert torch.equal(again, out)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_group_members_read_the_same_input(model_type):
    """The driver's shared Hessian per group rests on this property of every architecture's blocks."""
    model = make_arch_model(model_type, 64)
    arch = arch_of(model)
    block = arch.blocks(model)[0]
    seen = {}
    hooks = [block.get_submodule(n).register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0]))
             for n in arch.linear_names]
    model(_calib(n=2))
    for h in hooks:
        h.remove()
    for group in arch.sequential:
        for n in group[1:]:
            assert torch.equal(seen[n], seen[group[0]]), n


def test_rtn_needs_no_calibration_and_rounds_the_same():
    cfg = QuantConfig(method="rtn", bits=4, group_size=16)
    a, b = make_tiny_model(64, layers=2), make_tiny_model(64, layers=2)
    b.load_state_dict(a.state_dict())
    with_calib = quantize_model(a, arch_of(a), _calib(), cfg)
    without = quantize_model(b, arch_of(b), None, cfg)
    assert all(r.loss is None for r in without.layers) and all(r.loss > 0 for r in with_calib.layers)
    for name, res in without.results.items():
        assert torch.equal(res.q, with_calib.results[name].q)
    with pytest.raises(UserError, match="needs calibration"):
        quantize_model(b, arch_of(b), None, QuantConfig(method="gptq"))

import pytest
import torch

from llmshrink.config import QuantConfig
from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.quant.api import quantize_model
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
    with pytest.raises(UserError, match="non-finite"):
        quantize_model(model, arch_of(model), _calib(), QuantConfig(group_size=16))

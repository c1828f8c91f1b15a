"""The importance matrix: the mean squared input of every block linear, from the driver's walk."""

import torch

from llmshrink.models.load import load_model
from llmshrink.quant.importance import input_importance


def test_importance_is_the_mean_squared_input_of_each_linear(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    windows = torch.randint(3, lm.model.config.vocab_size, (6, 16))
    stats = input_importance(lm.model, lm.arch, windows, batch_size=4)
    assert set(stats) == {f"model.layers.{i}.{n}" for i in range(2) for n in lm.arch.linear_names}
    # the same statistic from hooks on a whole-model forward pass
    seen = {}
    block = lm.model.model.layers[1]
    hooks = [block.get_submodule(n).register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, []).append(a[0]))
             for n in ("self_attn.q_proj", "mlp.down_proj")]
    with torch.no_grad():
        lm.model(windows)
    for h in hooks:
        h.remove()
    for n, xs in seen.items():
        x = torch.cat(xs).reshape(-1, xs[0].shape[-1]).double()
        mean, rows = stats[f"model.layers.1.{n}"]
        assert rows == 6 * 16
        torch.testing.assert_close(mean, (x * x).mean(0).float(), rtol=1e-4, atol=1e-6)
    # q, k and v read the same input
    assert torch.equal(stats["model.layers.0.self_attn.q_proj"][0], stats["model.layers.0.self_attn.v_proj"][0])

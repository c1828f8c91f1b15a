"""Training checkpoints: a resumed run continues exactly where an uninterrupted one would be."""

import json

import pytest
import torch

from llmshrink.errors import UserError
from llmshrink.tune.checkpoint import load_checkpoint, save_checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(8, 4)
    params = dict(lin.named_parameters())
    return lin, params, torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.1)


def _step(lin, opt, i):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(i))
    loss = lin(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    lin, params, opt = _setup()
    losses = [_step(lin, opt, i) for i in range(3)]
    save_checkpoint(tmp_path / "ck", step=3, params=params, opt=opt, losses=losses, tokens=48, config_hash="h")
    straight = [_step(lin, opt, i) for i in range(3, 6)]

    lin2, params2, opt2 = _setup(seed=1)  # other initial weights: everything must come from the checkpoint
    ck = load_checkpoint(tmp_path / "ck", params2, "h")
    assert (ck.step, ck.losses, ck.tokens) == (3, losses, 48)
    with torch.no_grad():
        for name, p in params2.items():
            p.copy_(ck.params[name])
    opt2.load_state_dict(ck.opt_state)
    resumed = [_step(lin2, opt2, i) for i in range(3, 6)]
    assert resumed == straight
    for name in params:
        assert torch.equal(params[name], params2[name])


def test_a_checkpoint_of_other_settings_or_damaged_is_refused(tmp_path):
    lin, params, opt = _setup()
    _step(lin, opt, 0)
    save_checkpoint(tmp_path / "ck", step=1, params=params, opt=opt, losses=[1.0], tokens=16, config_hash="h")
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["param_names"] == ["weight", "bias"]
    with pytest.raises(UserError, match="made with other settings"):
        load_checkpoint(tmp_path / "ck", params, "other")
    with pytest.raises(UserError, match="made with other settings"):
        load_checkpoint(tmp_path / "ck", {"weight": params["weight"]}, "h")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="unreadable .*delete it to start over"):
        load_checkpoint(tmp_path / "ck", params, "h")


def test_saving_again_replaces_the_checkpoint_whole(tmp_path):
    lin, params, opt = _setup()
    for step in (1, 2):
        _step(lin, opt, step)
        save_checkpoint(tmp_path / "ck", step=step, params=params, opt=opt, losses=[0.0] * step, tokens=step,
                        config_hash="h")
    assert load_checkpoint(tmp_path / "ck", params, "h").step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left behind

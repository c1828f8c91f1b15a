"""The config base and the one bridge from configs to flags and recipe fields."""

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from llmshrink.config import Config, Part, add_arguments, from_args, from_mapping, to_flags
from llmshrink.errors import UserError
from llmshrink.eval.config import EvalConfig
from llmshrink.generation import GenerateConfig
from llmshrink.quant.config import QuantConfig
from llmshrink.quant.mix import MixConfig


def test_round_trip_and_unknown_field():
    cfg = EvalConfig(data="x.txt", seqlen=64, stride=32)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match=r"unknown field eval\.seq_len in eval settings"):
        EvalConfig.from_dict({"seq_len": 3}, where="eval")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seqlen": 1}, "^seqlen: must be at least 2"),
        ({"batch_size": 0}, "^batch_size: must be a positive whole number, got 0$"),
        ({"max_tokens": -5}, "^max_tokens: must be a positive"),
        ({"seqlen": True}, "^seqlen: must be a positive"),
        ({"stride": 900}, "^stride: 900 is larger than seqlen 512"),
    ],
)
def test_eval_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        EvalConfig(**kwargs)


def test_generate_validation():
    with pytest.raises(UserError, match="^top_p: must be in"):
        GenerateConfig(top_p=1.5)
    with pytest.raises(UserError, match="unknown template"):
        GenerateConfig(template="nope")


@dataclass
class Knobs(Config):
    kind: ClassVar[str] = "knobs"
    depth: int = field(default=3, metadata={"help": "how deep"})
    name: str | None = field(default=None, metadata={"help": "a name"})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    mode: str = field(default="a", metadata={"help": "a mode", "choices": ("a", "b")})
    corpus: str = field(default="x", metadata={"help": "data", "flag": "calib"})
    hidden: int = field(default=1, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.positive("depth")
        self.check(not (self.fast and self.depth > 5), ("fast", "depth"), "cannot go fast that deep")


def _parse(argv, parts):
    p = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(p, parts)
    return p, p.parse_args(argv)


def test_flags_come_from_the_fields():
    part = Part("k", Knobs, prefix="kn_")
    p, args = _parse(["--kn-depth", "4", "--kn-name", "none", "--kn-fast", "--kn-mode", "b", "--calib", "y"], [part])
    cfg = from_args(args, part)
    assert cfg == Knobs(depth=4, name="none", fast=True, mode="b", corpus="y")  # a string keeps "none"
    assert from_args(_parse(["--kn-depth", "2"], [part])[1], part).name is None
    help_text = p.format_help()
    assert "how deep (default: 3)" in help_text and "--no-kn-fast" in help_text and "--hidden" not in help_text
    assert "--kn-hidden" not in help_text
    assert from_args(_parse([], [part])[1], part) == Knobs()


def test_a_bad_value_names_the_flag_on_the_command_line_and_the_path_in_a_recipe():
    part = Part("k", Knobs, prefix="kn_")
    with pytest.raises(UserError, match=r"^--kn-depth: must be a positive whole number, got 0$"):
        from_args(_parse(["--kn-depth", "0"], [part])[1], part)
    with pytest.raises(UserError, match=r"^--kn-fast/--kn-depth: cannot go fast that deep$"):
        from_args(_parse(["--kn-depth", "9", "--kn-fast"], [part])[1], part)
    with pytest.raises(UserError, match=r"^stages\[2\]\.tune\.depth: must be a positive"):
        from_mapping({"depth": 0}, [part], "stages[2].tune")
    with pytest.raises(UserError, match=r"unknown field stages\[2\]\.tune\.dpth"):
        from_mapping({"dpth": 0}, [part], "stages[2].tune")


def test_nested_parts_sit_under_their_key_in_a_recipe():
    parts = [Part("k", Knobs), Part("calib", Knobs, prefix="c_", nested=True)]
    got = from_mapping({"depth": 2, "calib": {"depth": 5}, "hidden": 7}, parts, "s")
    assert got["k"] == Knobs(depth=2, hidden=7) and got["calib"] == Knobs(depth=5)
    with pytest.raises(UserError, match=r"^s\.calib\.depth: must be a positive"):
        from_mapping({"calib": {"depth": -1}}, parts, "s")


def test_the_quantize_command_and_recipe_stage_share_one_validation(capsys):
    from llmshrink.cli import main
    from llmshrink.jobs.recipe import parse_recipe

    assert main(["quantize", "m", "--out", "o", "--group-size", "0"]) == 2
    assert "llmshrink: error: --group-size: must be -1 (one group per row), auto or >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"stages\[0\]\.quantize\.group_size: must be -1 \(one group per row\)"):
        parse_recipe({"model": "m", "out": "o", "stages": [{"quantize": {"group_size": 0}}]})
    assert QuantConfig(group_size=-1).group_columns(576) == 576 and QuantConfig().group_columns(576) == 128
    assert QuantConfig(group_size=1024).group_columns(576) == 576


def test_a_field_added_to_a_config_reaches_help_and_recipes_with_no_other_edit(tmp_path):
    """Copy the package, add one field to QuantConfig's source, and look for it in ``--help`` and in
    a recipe's validation, in a fresh process running the copy."""
    src = Path(__file__).resolve().parents[1] / "src" / "llmshrink"
    copy = tmp_path / "src" / "llmshrink"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    cfg_py = copy / "quant" / "config.py"
    text = cfg_py.read_text()
    anchor = "    def __post_init__(self) -> None:\n"
    new = ('    new_knob: int = field(default=7, metadata={"help": "a brand-new knob"})\n\n'
           + anchor + '        self.check(self.new_knob < 100, "new_knob", "must be below 100")\n')
    assert text.count(anchor) == 1
    cfg_py.write_text(text.replace(anchor, new))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    code = (
        "import sys\n"
        "from llmshrink.cli import main\n"
        "from llmshrink.jobs.recipe import parse_recipe\n"
        "from llmshrink.errors import UserError\n"
        "import llmshrink\n"
        "print('ran', llmshrink.__file__)\n"
        "r = parse_recipe({'model': 'm', 'out': 'o', 'stages': [{'quantize': {'new_knob': 9}}]})\n"
        "print('parsed', r.stages[0].configs['quant'].new_knob)\n"
        "try:\n"
        "    parse_recipe({'model': 'm', 'out': 'o', 'stages': [{'quantize': {'new_knob': 500}}]})\n"
        "except UserError as e:\n"
        "    print('refused', e)\n"
        "sys.exit(main(['quantize', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"ran {copy / '__init__.py'}" in proc.stdout
    assert "parsed 9" in proc.stdout
    assert "refused <dict>: stages[0].quantize.new_knob: must be below 100" in proc.stdout
    assert "--new-knob NEW_KNOB" in proc.stdout and "a brand-new knob (default: 7)" in proc.stdout


@pytest.mark.parametrize("configs", [
    {},  # all defaults: no flag at all
    {"quant": QuantConfig(bits=3, group_size=64, sym=False, act_order=False, damp=0.05)},
    {"quant": QuantConfig(method="rtn"), "calib": None},
    {"mix": MixConfig(target_bpw=3.25, bit_choices="3,4")},
])
def test_to_flags_gives_the_same_configs_back_through_the_parser(configs):
    from llmshrink.data.calib import CalibConfig
    from llmshrink.jobs.quantize import PARTS, QuantizeScope

    full = {"quant": QuantConfig(), "mix": MixConfig(), "scope": QuantizeScope(blocks="0:26", lm_head=True),
            "calib": CalibConfig(data="a.txt:1,shakespeare:calib:2", nsamples=16), **configs}
    flags = to_flags(PARTS, {k: v for k, v in full.items() if v is not None})
    if not configs:
        assert "--bits" not in flags and flags[:2] == ["--blocks", "0:26"]
    parser = argparse.ArgumentParser()
    add_arguments(parser, PARTS)
    args = parser.parse_args(flags)
    for part in PARTS:
        if full[part.key] is not None:
            assert from_args(args, part) == full[part.key], part.key

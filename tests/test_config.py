import pytest

from llmshrink.config import EvalConfig, GenerateConfig
from llmshrink.errors import UserError


def test_round_trip_and_unknown_field():
    cfg = EvalConfig(data="x.txt", seqlen=64, stride=32)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match=r"unknown field eval\.seq_len in eval settings"):
        EvalConfig.from_dict({"seq_len": 3}, where="eval")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seqlen": 1}, "at least 2"),
        ({"batch_size": 0}, "batch_size must be a positive"),
        ({"max_tokens": -5}, "max_tokens must be a positive"),
        ({"seqlen": True}, "seqlen must be a positive"),
    ],
)
def test_eval_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        EvalConfig(**kwargs)


def test_generate_validation():
    with pytest.raises(UserError, match="top_p"):
        GenerateConfig(top_p=1.5)
    with pytest.raises(UserError, match="unknown template"):
        GenerateConfig(template="nope")

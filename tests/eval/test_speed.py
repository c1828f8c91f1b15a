from llmshrink.eval.speed import decode_speed
from tests.conftest import make_tiny_model


def test_decode_speed_reports_positive_medians():
    model = make_tiny_model(64)
    s = decode_speed(model, 64, prompt_tokens=16, new_tokens=5, repeats=2)
    assert s.prefill_ms > 0 and s.decode_ms_per_token > 0
    assert abs(s.tokens_per_second - 1000 / s.decode_ms_per_token) < 1e-6
    assert (s.prompt_tokens, s.new_tokens, s.batch_size, s.repeats) == (16, 5, 1, 2)

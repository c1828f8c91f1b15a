import json

from llmshrink.cli import main
from llmshrink.eval.bench import read_bandwidth, weight_bytes
from llmshrink.models.load import load_model

FIELDS = {"model", "device", "machine", "threads", "config", "prefill_ms", "decode_ms_per_token",
          "tokens_per_second", "weight_bytes", "achieved_gb_per_s", "memory_bandwidth_gb_per_s",
          "bandwidth_fraction", "peak_memory_bytes", "peak_memory_kind", "size_on_disk", "parameters",
          "packed_layers"}


def test_weight_bytes_count_everything_read_per_token_once(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).model  # tied: the table is read whole, as lm_head
    floats = {id(p): p for p in model.parameters()}.values()
    assert weight_bytes(model, model.get_input_embeddings()) == sum(p.numel() * 4 for p in floats)
    from tests.conftest import make_tiny_model

    untied = make_tiny_model(300, tie=False)  # untied: the embedding is one row per token, not counted
    emb = untied.get_input_embeddings().weight
    total = sum(p.numel() * 4 for p in untied.parameters())
    assert weight_bytes(untied, untied.get_input_embeddings()) == total - emb.numel() * 4


def test_read_bandwidth_is_a_positive_rate():
    assert read_bandwidth(mbytes=16, repeats=2) > 0.1


def test_bench_json_has_every_field_and_packed_weights_read_less(tmp_path, tiny_model_dir, text_file, capsys):
    q = tmp_path / "q"
    assert main(["-q", "quantize", str(tiny_model_dir), "--out", str(q), "--bits", "4", "--group-size", "16",
                 "--calib", str(text_file), "--nsamples", "4", "--seqlen", "16"]) == 0
    capsys.readouterr()
    recs = {}
    for name, path in (("plain", tiny_model_dir), ("q", q)):
        rc = main(["bench", str(path), "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "2", "--json",
                   "--out", str(tmp_path / f"run-{name}")])
        assert rc == 0
        recs[name] = json.loads(capsys.readouterr().out)
        assert json.loads((tmp_path / f"run-{name}" / "bench.json").read_text()) == recs[name]
        assert set(recs[name]) == FIELDS
        r = recs[name]
        assert r["decode_ms_per_token"] > 0 and r["prefill_ms"] > 0
        assert r["peak_memory_bytes"] > r["weight_bytes"]  # the process holds at least the weights it reads
        assr = r["achieved_gb_per_s"] / r["memory_bandwidth_gb_per_s"]
        assert abs(r["bandwidth_fraction"] - assr) < 1e-12
        assert abs(r["tokens_per_second"] - 1000 / r["decode_ms_per_token"]) < 1e-6
    assert recs["plain"]["packed_layers"] == 0 and recs["q"]["packed_layers"] == 14
    assert recs["q"]["weight_bytes"] < recs["plain"]["weight_bytes"]
    assert recs["q"]["size_on_disk"] < recs["plain"]["size_on_disk"]


def test_bad_bench_settings_are_one_line_errors(tiny_model_dir, capsys):
    assert main(["bench", str(tiny_model_dir), "--new-tokens", "0"]) == 2
    assert "--new-tokens: must be a positive whole number, got 0" in capsys.readouterr().err

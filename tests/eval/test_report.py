import json
from pathlib import Path

import pytest

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.eval.report import write_report


def _run(root, name, *, eval_rec=None, bench_rec=None, scores=None):
    d = root / name
    d.mkdir()
    if eval_rec:
        (d / "eval.json").write_text(json.dumps(eval_rec))
    if bench_rec:
        (d / "bench.json").write_text(json.dumps(bench_rec))
    if scores:
        (d / "block_scores.json").write_text(json.dumps({"scores": [{"criterion": "angular", "scores": scores}]}))
    return d


def _eval(ppl, size, lastword, cloze4):
    return {"model": "m", "data": "shakespeare:eval", "tokens": 1000, "seqlen": 512, "perplexity": ppl,
            "parameters": 1_000_000, "size_on_disk": size,
            "tasks": {"lastword": {"main_metric": "acc", "score": lastword, "items": 40},
                      "cloze4": {"main_metric": "acc_norm", "score": cloze4, "items": 40}}}


def _bench(ms):
    return {"model": "m", "device": "cpu", "threads": 2, "config": {"prompt_tokens": 128, "new_tokens": 64,
            "batch_size": 1}, "prefill_ms": 100.0, "decode_ms_per_token": ms, "tokens_per_second": 1000 / ms,
            "achieved_gb_per_s": 5.0, "bandwidth_fraction": 0.25, "peak_memory_bytes": 300 * 2**20,
            "size_on_disk": 4_000_000, "parameters": 1_000_000}


def test_report_renders_table_and_plots_from_fixtures(tmp_path):
    a = _run(tmp_path, "original", eval_rec=_eval(34.0, 4_000_000, 0.30, 0.50), bench_rec=_bench(40.0),
             scores=[0.3, 0.1, 0.2])
    b = _run(tmp_path, "gptq4", eval_rec=_eval(35.5, 1_000_000, 0.25, 0.45))
    out = tmp_path / "rep" / "report.md"
    out.parent.mkdir()
    res = write_report([a, b], out)
    md = out.read_text()
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0][:7] == ["run", "parameters", "size MB", "bits/weight", "perplexity",
                                          "lastword acc", "cloze4 acc_norm"]
    orig = rows[1]
    assert orig[:7] == ["original", "1,000,000", "4.0", "32.00", "34.000", "0.300", "0.500"]
    assert orig[7:] == ["100.0", "40.00", "25.0", "5.0 (25%)", "300"]
    assert rows[2] == ["gptq4", "1,000,000", "1.0", "8.00", "35.500", "0.250", "0.450", "", "", "", "", ""]
    assert set(res["plots"]) == {"ppl_vs_bits", "tasks", "blocks"}
    for p in res["plots"].values():
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({p.rsplit('/', 1)[1]})" in md


def test_report_without_results_or_with_broken_json_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds none of eval.json"):
        write_report([empty], tmp_path / "r.md")
    broken = _run(tmp_path, "broken", eval_rec={"x": 1})
    (broken / "eval.json").write_text("{not json")
    assert main(["report", str(broken), "--out", str(tmp_path / "r.md")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.md")]) == 2
    assert not (tmp_path / "r.md").exists()

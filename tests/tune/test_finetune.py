import json

import pytest
import torch

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.jobs import finetune as finetune_job
from llmshrink.models.load import load_model
from llmshrink.tune import finetune as ft
from llmshrink.tune.config import FinetuneConfig
from llmshrink.tune.front import CachedFront


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tokenizer):
    """A 4-block tiny model and its copy with blocks 0:2 packed at 4 bits."""
    from tests.conftest import TEXT, make_tiny_model, save_model_dir

    root = tmp_path_factory.mktemp("ft")
    plain = save_model_dir(root / "plain", make_tiny_model(len(tokenizer), layers=4), tokenizer)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 8)
    rc = main(["-q", "quantize", str(plain), "--out", str(root / "q"), "--bits", "4", "--group-size", "16",
               "--blocks", "0:-2", "--calib", str(corpus), "--nsamples", "4", "--seqlen", "16"])
    assert rc == 0
    other = root / "other.txt"  # another text: the out-of-domain corpus
    other.write_text(" ".join(reversed(TEXT.split())) * 8)
    return {"plain": plain, "q": root / "q", "corpus": corpus, "other": other}


def _cfg(dirs, **kw):
    base = dict(train="last:2", lm_head=True, data=str(dirs["corpus"]), seqlen=16, batch_size=2, steps=6, lr=1e-2,
                eval_data="none", ood_data="none", save_every=2)
    return FinetuneConfig(**{**base, **kw})


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_only_the_tail_and_lm_head_change_and_packed_blocks_stay_packed(dirs, tmp_path, method):
    lm = load_model(dirs["q"])
    before = _snapshot(lm.model)
    res = finetune_job.finetune(lm, _cfg(dirs, method=method, distill_from=str(dirs["plain"]), loss="task+kd"),
                      tmp_path / "out")
    after = _snapshot(lm.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training changed nothing"
    assert all(k.startswith(("model.layers.2.", "model.layers.3.", "model.norm.", "lm_head.")) for k in changed), changed
    assert any(k.startswith("lm_head.") for k in changed) and any(".layers.3." in k for k in changed)
    assert not any(".layers.0." in k or ".layers.1." in k or "embed_tokens" in k for k in changed)
    assert all(p.grad is None for p in lm.model.parameters())  # nothing left trainable, no stray gradients
    assert res.stats.steps == 6 and len(res.stats.losses) == 6
    # the saved mixed checkpoint reloads with its packed blocks, its untied head and the trained weights
    again = load_model(tmp_path / "out")
    assert type(again.model.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
    assert type(again.model.model.layers[3].mlp.down_proj).__name__ == "Linear"
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == 4 and cfg["tie_word_embeddings"] is False
    reloaded = again.model.state_dict()
    assert cfg["dtype"] == "float16"  # the source's release dtype; trained weights rounded to it once
    assert all(torch.equal(reloaded[k], after[k].half().float()) for k in changed)
    assert not (tmp_path / ".out.checkpoint").exists()


def test_frozen_packed_blocks_receive_no_gradient(dirs):
    lm = load_model(dirs["q"])
    _root, first = ft.select_trainable(lm, _cfg(dirs))
    assert first == 2
    batches = ft.text_batches(lm, _cfg(dirs), 2)
    ids = batches.ids[0]
    loss = lm.model(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    layers = lm.model.model.layers
    assert all(p.grad is None for p in layers[:2].parameters())
    assert all(not b.requires_grad for b in layers[:2].buffers())
    assert all(p.grad is not None for p in layers[2:].parameters())
    assert lm.model.lm_head.weight.grad is not None and lm.model.model.embed_tokens.weight.grad is None


def test_training_packed_blocks_or_too_many_blocks_is_refused(dirs, tmp_path):
    with pytest.raises(UserError, match="block 1 is quantized"):
        finetune_job.finetune(load_model(dirs["q"]), _cfg(dirs, train="last:3"), tmp_path / "o")
    with pytest.raises(UserError, match="more blocks than the model's 4"):
        finetune_job.finetune(load_model(dirs["plain"]), _cfg(dirs, train="last:5"), tmp_path / "o")
    with pytest.raises(UserError, match="last:N"):
        _cfg(dirs, train="first:2")
    with pytest.raises(UserError, match="--distill-from"):
        _cfg(dirs, loss="kd")


def test_the_loss_is_taken_on_a_fresh_reproducible_fraction_of_positions(dirs):
    lm = load_model(dirs["q"])
    cfg = _cfg(dirs, loss_tokens=0.25)
    _root, first = ft.select_trainable(lm, cfg)
    batches = ft.text_batches(lm, cfg, 2)
    loss = ft.TailLoss(lm, first, cfg, batches, CachedFront(lm, batches.ids, first), None)
    real = batches.real[0][:, 1:]
    draws = [loss.positions(0) for _ in range(400)]
    assert all(d.shape == real.shape and not (d & ~real).any() and d.any() for d in draws)
    assert not torch.equal(draws[0], draws[1])
    assert 0.2 < torch.stack(draws).float().mean() < 0.3
    loss.calls = 0  # what a resumed run sets: the same draws again
    assert torch.equal(loss.positions(0), draws[0])
    full = ft.TailLoss(lm, first, _cfg(dirs), batches, loss.front, None)
    assert torch.equal(full.positions(0), real)
    with torch.no_grad():  # on every position, the task loss is the cross-entropy of the whole logits
        logits = full.logits(0)[:, :-1].float()
        expect = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batches.labels[0][:, 1:].flatten())
        assert torch.allclose(full(0), expect, atol=1e-5)
    with pytest.raises(UserError, match="loss_tokens"):
        _cfg(dirs, loss_tokens=0)


def test_head_lr_and_the_hidden_state_loss(dirs, tmp_path):
    """--head-lr gives lm_head its own rate; --hidden-loss adds the teacher-matching term, which
    is 0 when the student's tail is the teacher's."""
    lm = load_model(dirs["plain"])
    cfg = _cfg(dirs, distill_from=str(dirs["plain"]), hidden_loss=2.0)
    _root, first = ft.select_trainable(lm, cfg)
    batches = ft.text_batches(lm, cfg, 2)
    loss = ft.TailLoss(lm, first, cfg, batches, CachedFront(lm, batches.ids, first),
                       ft.teacher_outputs(ft.load_teacher(lm, cfg), batches))
    with torch.no_grad():
        parts = loss.parts(0)
        assert set(parts) == {"kd", "hidden"} and parts["hidden"] < 1e-10 and parts["kd"] < 1e-6
        lm.model.model.norm.weight.mul_(1.5)  # the student's final states now read 1.5x the teacher's
        parts = loss.parts(0)
    assert parts["hidden"].item() == pytest.approx(2.0 * 0.25, rel=1e-4)
    base, head = dict(lr=1e-3), dict(lr=1e-3, head_lr=1e-5)
    moved = {}
    for name, kw in (("base", base), ("head", head)):
        lm = load_model(dirs["q"])
        w0 = lm.model.lm_head.weight.detach().clone()
        finetune_job.finetune(lm, _cfg(dirs, distill_from=str(dirs["plain"]), **kw), tmp_path / name)
        moved[name] = (lm.model.lm_head.weight.detach() - w0).abs().max().item()
    assert 0 < moved["head"] < moved["base"] / 20
    with pytest.raises(UserError, match="--distill-from"):
        _cfg(dirs, hidden_loss=1.0)
    with pytest.raises(UserError, match="head_lr"):
        _cfg(dirs, head_lr=0)


@pytest.mark.parametrize(("loss_tokens", "tune_scales"), [(1.0, False), (0.5, False), (1.0, True)])
def test_an_interrupted_run_resumes_to_the_same_weights(dirs, tmp_path, monkeypatch, loss_tokens, tune_scales):
    cfg = _cfg(dirs, steps=6, save_every=2, distill_from=str(dirs["plain"]), loss_tokens=loss_tokens,
               tune_scales=tune_scales)
    straight = load_model(dirs["q"])
    finetune_job.finetune(straight, cfg, tmp_path / "a")

    real_save = ft.save_checkpoint

    def save_then_die(folder, *, step, **kw):
        real_save(folder, step=step, **kw)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune_job.finetune(load_model(dirs["q"]), cfg, tmp_path / "b")
    assert (tmp_path / ".b.checkpoint" / "state.json").is_file() and not (tmp_path / "b").exists()
    monkeypatch.setattr(ft, "save_checkpoint", real_save)
    with pytest.raises(UserError, match="--resume"):
        finetune_job.finetune(load_model(dirs["q"]), cfg, tmp_path / "b")
    with pytest.raises(UserError, match="other settings"):
        finetune_job.finetune(load_model(dirs["q"]), _cfg(dirs, steps=7, distill_from=str(dirs["plain"]),
                                                loss_tokens=loss_tokens, tune_scales=tune_scales), tmp_path / "b",
                    resume=True)
    resumed = load_model(dirs["q"])
    res = finetune_job.finetune(resumed, cfg, tmp_path / "b", resume=True)
    assert res.stats.steps == 6 and len(res.stats.losses) == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_instruction_data_trains_on_responses_and_reports_held_out_loss(dirs, tmp_path):
    rows = [{"instruction": f"Say {w}.", "output": f"{w} {w} {w}"} for w in ("to be", "the world", "a stage",
                                                                                  "or not", "the question")] * 4
    data = tmp_path / "i.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = load_model(dirs["plain"])
    res = finetune_job.finetune(lm, _cfg(dirs, data=str(data), format="alpaca", template="alpaca", seqlen=256, steps=30,
                               lr=3e-3, eval_fraction=0.2, eval_data=None), tmp_path / "out")
    ev = res.evaluation
    assert ev["held_out_loss_after"] < ev["held_out_loss_before"]
    assert "perplexity" not in ev  # instruction data: the held-out split is the evaluation
    rec = json.loads((tmp_path / "out" / "llmshrink_finetune.json").read_text())
    assert rec["evaluation"] == ev and rec["steps"] == 30


def test_cli_finetune_prints_the_summary_and_bad_input_exits_2(dirs, tmp_path, capsys):
    rc = main(["finetune", str(dirs["q"]), "--out", str(tmp_path / "o"), "--train", "last:2", "--lm-head",
               "--data", str(dirs["corpus"]), "--seqlen", "16", "--steps", "2", "--eval-data", str(dirs["corpus"]),
               "--ood-data", str(dirs["other"]), "--distill-from", str(dirs["plain"])])
    out = capsys.readouterr().out
    assert rc == 0 and "trainable parameters" in out
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert all("original" in rows[f"perplexity ({dirs[k]})"] and "; KL " in rows[f"perplexity ({dirs[k]})"]
               for k in ("corpus", "other"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\nnot json\n')
    rc = main(["finetune", str(dirs["plain"]), "--out", str(tmp_path / "p"), "--data", str(bad), "--format",
               "alpaca", "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:2" in err and not (tmp_path / "p").exists()


def test_the_tuned_mixed_checkpoint_exports_to_gguf_and_runs_in_llama_cpp(dirs, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is a test dependency: pip install -e .[test]")
    from llmshrink.data.calib import CalibConfig
    from llmshrink.eval.llamacpp import load_llamacpp
    from llmshrink.exporters.config import GGUFConfig
    from llmshrink.jobs.export import export_gguf

    finetune_job.finetune(load_model(dirs["q"]), _cfg(dirs, steps=2), tmp_path / "tuned")
    rep = export_gguf(load_model(tmp_path / "tuned"), GGUFConfig(type="q8_0"), tmp_path / "m.gguf",
                      calib=CalibConfig(str(dirs["corpus"]), 4, 16))
    assert len(rep.requantized) == 14 and len(rep.solved) == 14  # packed blocks re-rounded, tuned ones solved
    assert rep.tensors["q8_0"] == 30  # 28 block linears + the embedding + the untied, tuned output
    lc = load_llamacpp(tmp_path / "m.gguf", n_ctx=64)
    assert len(lc.model.greedy(lc.tokenizer.encode("To be, or not"), 8, stop_at_eos=False)) == 8


def test_the_model_is_scored_before_and_after_in_and_out_of_domain_against_the_original(dirs, tmp_path):
    from llmshrink.eval.config import EvalConfig
    from llmshrink.eval.run import evaluate_perplexity

    cfg = _cfg(dirs, distill_from=str(dirs["plain"]), eval_data=str(dirs["corpus"]), ood_data=str(dirs["other"]),
               eval_tokens=64, seqlen=16, loss="kd", lr=3e-4, steps=30)
    res = finetune_job.finetune(load_model(dirs["q"]), cfg, tmp_path / "out")
    ev = res.evaluation
    orig, quant, tuned = load_model(dirs["plain"]), load_model(dirs["q"]), load_model(tmp_path / "out")
    for key, data in (("held_out", dirs["corpus"]), ("out_of_domain", dirs["other"])):
        ecfg = EvalConfig(data=str(data), max_tokens=64, seqlen=16)
        entry = ev[key]
        before = evaluate_perplexity(quant, ecfg, reference=orig)
        assert entry["data"] == str(data) and entry["tokens"] == before["tokens"] == 4 * 15
        after = evaluate_perplexity(tuned, ecfg, reference=orig)
        assert entry["before"]["perplexity"] == pytest.approx(before["perplexity"], rel=1e-5)
        assert entry["after"]["perplexity"] == pytest.approx(after["perplexity"], rel=1e-5)
        assert entry["after"]["kl"] == pytest.approx(after["kl"], rel=1e-4)
        assert entry["before"]["kl"] > entry["after"]["kl"] > 0  # distillation moved it towards the original
        assert entry["after"]["original_perplexity"] == pytest.approx(
            evaluate_perplexity(orig, ecfg)["perplexity"], rel=1e-5)
        gap = entry["before"]["perplexity"] - entry["after"]["original_perplexity"]
        rec = finetune_job.recovery(entry)
        assert rec is None if gap <= 0 else rec == pytest.approx((entry["before"]["perplexity"] -
                                                                  entry["after"]["perplexity"]) / gap)
    assert ev["perplexity"] == ev["held_out"]["after"]["perplexity"]
    saved = json.loads((tmp_path / "out" / "llmshrink_finetune.json").read_text())["evaluation"]
    assert saved["out_of_domain"] == ev["out_of_domain"]


def test_generated_windows_join_the_training_data_with_distillation_targets_only(dirs, monkeypatch):
    from llmshrink.data.instruct import IGNORE
    from llmshrink.tune import selfdata

    lm = load_model(dirs["q"])
    cfg = _cfg(dirs, distill_from=str(dirs["plain"]), loss="task+kd", generated=3, nsamples=4)
    teacher = ft.load_teacher(lm, cfg)
    gen = selfdata.sample_text_windows(teacher.model, teacher.tokenizer, 3, 16, seed=0)
    b = ft.text_batches(lm, cfg, None, gen)
    ids, labels = torch.cat(b.ids), torch.cat(b.labels)
    assert ids.shape == (7, 16)
    generated_rows = [i for i in range(7) if any(torch.equal(ids[i], g) for g in gen)]
    assert len(generated_rows) == 3 and generated_rows != [4, 5, 6]  # shuffled in, not appended
    assert all((labels[i] == IGNORE).all() for i in generated_rows)
    assert all((labels[i] != IGNORE).any() for i in range(7) if i not in generated_rows)
    with pytest.raises(Exception, match="distill"):
        _cfg(dirs, generated=2)  # no teacher to sample from


def test_a_weighted_mix_shares_the_training_windows_out_by_weight(dirs):
    lm = load_model(dirs["q"])
    mix = f"{dirs['corpus']}:3,{dirs['other']}:1"
    ids = torch.cat(ft.text_batches(lm, _cfg(dirs, data=mix, nsamples=8), None).ids)
    assert ids.shape == (8, 16)
    alone = {str(p): torch.cat(ft.text_batches(lm, _cfg(dirs, data=str(p), nsamples=n), None).ids)
             for p, n in ((dirs["corpus"], 6), (dirs["other"], 2))}
    rows = [next(str(p) for p, w in alone.items() if any(torch.equal(r, x) for x in w)) for r in ids]
    assert rows.count(str(dirs["corpus"])) == 6 and rows.count(str(dirs["other"])) == 2
    assert torch.equal(ids, torch.cat(ft.text_batches(lm, _cfg(dirs, data=mix, nsamples=8), None).ids))
    assert torch.cat(ft.text_batches(lm, _cfg(dirs, data=mix), 6).ids).shape == (6, 16)  # as many as the steps use
    with pytest.raises(UserError, match="--nsamples or --steps"):  # epochs over a mix: no count to share out
        ft.text_batches(lm, _cfg(dirs, data=mix, steps=None, epochs=1.0), None)
    assert finetune_job.eval_split(_cfg(dirs, data="shakespeare:calib:2,brown:calib:1")) == "shakespeare:eval"


def test_recovery_is_the_share_of_the_gap_to_the_original_closed():
    entry = {"before": {"perplexity": 40.0}, "after": {"perplexity": 37.0, "original_perplexity": 34.0}}
    assert finetune_job.recovery(entry) == pytest.approx(0.5)
    assert finetune_job.recovery({**entry, "after": {"perplexity": 43.0, "original_perplexity": 34.0}}) == \
        pytest.approx(-0.5)  # worse than before: negative
    assert finetune_job.recovery({"after": entry["after"]}) is None  # not scored before
    assert finetune_job.recovery({**entry, "after": {"perplexity": 37.0}}) is None  # no original to compare
    assert finetune_job.recovery({**entry, "after": {"perplexity": 37.0, "original_perplexity": 41.0}}) is None


def test_bad_data_or_tail_fails_before_any_scoring(dirs, tmp_path, monkeypatch):
    def no_scoring(*a, **kw):
        raise AssertionError("scored before the data was read")

    monkeypatch.setattr(finetune_job, "score", no_scoring)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\nnot json\n')
    cfg = _cfg(dirs, data=str(bad), format="alpaca", ood_data=str(dirs["other"]))
    with pytest.raises(UserError, match="bad.jsonl:2"):
        finetune_job.finetune(load_model(dirs["plain"]), cfg, tmp_path / "a")
    with pytest.raises(UserError, match="last:9"):
        finetune_job.finetune(load_model(dirs["plain"]), _cfg(dirs, train="last:9", ood_data=str(dirs["other"])),
                              tmp_path / "b")


@pytest.mark.parametrize("loss", ["task", "task+kd"])
def test_a_streamed_front_trains_as_the_cached_one(dirs, tmp_path, loss):
    """--front stream computes the packed front (and the teacher) per batch instead of caching
    them: the same losses step by step, the same weights at the end (float tolerance: the packed
    layers run through their own kernels instead of dequantized once)."""
    runs = {}
    for front in ("cache", "stream"):
        lm = load_model(dirs["q"])
        kw = dict(distill_from=str(dirs["plain"]), loss=loss) if loss != "task" else {}
        run = ft.train_tail(lm, _cfg(dirs, front=front, grad_accum=2, **kw), tmp_path / front)
        runs[front] = (run.stats.losses, _snapshot(lm.model))
    (lc, wc), (ls, ws) = runs["cache"], runs["stream"]
    assert len(lc) == 6 and lc != pytest.approx([lc[0]] * 6)  # it trained
    assert ls == pytest.approx(lc, rel=1e-4)
    assert all(torch.allclose(wc[k], ws[k], atol=1e-4) for k in wc)


def test_auto_streams_when_the_cache_would_not_fit(dirs, monkeypatch, caplog):
    from llmshrink import memory
    from llmshrink.tune import front

    lm = load_model(dirs["q"])
    ids = ft.text_batches(lm, _cfg(dirs), 4).ids
    need = front.cache_bytes(lm, ids, 2)
    assert need == 2 * sum(x.numel() for x in ids) * lm.model.config.hidden_size * 4
    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * need)
    assert front.choose_front("auto", lm, ids, 2) is False
    monkeypatch.setattr(memory, "available_memory", lambda device: need)
    with caplog.at_level("WARNING"):
        assert front.choose_front("auto", lm, ids, 2) is True
    assert "computing them per batch instead" in caplog.text
    assert front.choose_front("cache", lm, ids, 2) is False and front.choose_front("stream", lm, ids, 2) is True
    with pytest.raises(UserError, match="front"):
        _cfg(dirs, front="disk")


def test_tune_scales_trains_the_fronts_scales_and_norms_end_to_end_and_stays_gptq(dirs, tmp_path):
    """--tune-scales: the packed blocks' scales (not codes, zeros or g_idx) and the front's norms
    change along with the tail, distillation gets closer to the original than tuning the tail
    alone, and the saved checkpoint is the same GPTQ layout, loading with the learnt scales."""
    base = dict(distill_from=str(dirs["plain"]), lm_head=False, steps=12, lr=3e-3, eval_data=str(dirs["corpus"]))
    tail_only = load_model(dirs["q"])
    r_tail = finetune_job.finetune(tail_only, _cfg(dirs, **base), tmp_path / "tail")
    lm = load_model(dirs["q"])
    before = _snapshot(lm.model)
    res = finetune_job.finetune(lm, _cfg(dirs, **base, tune_scales=True, scale_lr=1e-3), tmp_path / "scales")
    after = _snapshot(lm.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    front = {k for k in changed if k.startswith(("model.layers.0.", "model.layers.1."))}
    assert any(k.endswith(".scales") for k in front) and any(k.endswith("layernorm.weight") for k in front)
    assert all(k.endswith((".scales", "layernorm.weight", ".bias")) for k in front), front
    assert not any(k.endswith((".qweight", ".qzeros", ".g_idx")) or "embed_tokens" in k for k in changed)
    assert res.trainable > r_tail.trainable
    kl = {name: r.evaluation["held_out"]["after"]["kl"] for name, r in (("tail", r_tail), ("scales", res))}
    assert kl["scales"] < kl["tail"] < r_tail.evaluation["held_out"]["before"]["kl"]  # the front's error shrinks too
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())
    again = load_model(tmp_path / "scales")
    layer = again.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "QuantLinear" and not hasattr(layer, "scale_gain")
    assert torch.equal(layer.scales, lm.model.model.layers[0].self_attn.q_proj.scales)
    assert not torch.equal(layer.scales, before["model.layers.0.self_attn.q_proj.scales"])
    with pytest.raises(UserError, match="--distill-from"):
        _cfg(dirs, tune_scales=True)
    with pytest.raises(UserError, match="no block before the tail is quantized"):
        finetune_job.finetune(load_model(dirs["plain"]), _cfg(dirs, **base, tune_scales=True), tmp_path / "p")


def test_amp_runs_the_training_products_in_bfloat16_and_keeps_float32_weights(dirs, tmp_path):
    """--amp: every linear layer of a training step (the tail's and, with --tune-scales, the packed
    front's) computes in bfloat16; the weights, their updates and the scoring stay float32; the
    first loss is the float32 run's within bfloat16's precision, not exactly it."""
    base = dict(distill_from=str(dirs["plain"]), lm_head=False, tune_scales=True, steps=4, lr=3e-3, scale_lr=1e-3)
    plain = finetune_job.finetune(load_model(dirs["q"]), _cfg(dirs, **base), tmp_path / "fp32")
    lm = load_model(dirs["q"])
    tail, front = lm.model.model.layers[-1].mlp.down_proj, lm.model.model.layers[0].mlp.down_proj
    seen = []
    for m in (tail, front):
        m.register_forward_hook(lambda m, i, o: seen.append((m is tail, o.dtype, torch.is_grad_enabled())))
    res = finetune_job.finetune(lm, _cfg(dirs, **base, amp="on", eval_data=str(dirs["corpus"])), tmp_path / "amp")
    training = {(is_tail, dtype) for is_tail, dtype, grad in seen if grad}
    assert training == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert {dtype for _, dtype, grad in seen if not grad} == {torch.float32}  # the before/after scores
    assert all(p.dtype == torch.float32 for p in lm.model.parameters() if p.is_floating_point())
    first, ref = res.stats.losses[0], plain.stats.losses[0]
    assert first != ref and abs(first - ref) < 0.05 * ref, (first, ref)
    assert res.evaluation["held_out"]["after"]["kl"] < res.evaluation["held_out"]["before"]["kl"]

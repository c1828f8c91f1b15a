"""Data-parallel tail fine-tuning: ``accelerate launch`` with 2 CPU processes (gloo) gives the
weights one process gives with the same global batch."""

import itertools
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llmshrink.cli import main
from llmshrink.errors import UserError
from llmshrink.tune.finetune import _order
from llmshrink.tune.parallel import Parallel


def test_each_step_is_shared_out_whole_and_in_order():
    order = list(itertools.islice(_order(5, 0), 24))
    shares = [list(Parallel(r, 2).share(iter(order), 4)) for r in range(2)]
    assert [c for c, _ in shares[0]] == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21]
    merged = sorted(shares[0] + shares[1])
    assert merged == list(enumerate(order))  # every batch once, with its global call number
    assert list(Parallel(0, 1).share(iter(order), 4)) == list(enumerate(order))
    Parallel(1, 2).check(4)
    with pytest.raises(UserError, match="multiple of 2"):
        Parallel(0, 2).check(3)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tokenizer):
    from tests.conftest import TEXT, make_tiny_model, save_model_dir

    root = tmp_path_factory.mktemp("ddp")
    (root / "corpus.txt").write_text(TEXT * 8)
    return save_model_dir(root / "plain", make_tiny_model(len(tokenizer), layers=3), tokenizer), root / "corpus.txt"


def _args(model, corpus, out, *extra):
    return ["-q", "finetune", str(model), "--out", str(out), "--train", "last:2", "--lm-head", "--data", str(corpus),
            "--seqlen", "16", "--batch-size", "2", "--grad-accum", "2", "--steps", "4", "--lr", "1e-3",
            "--eval-data", "none", "--ood-data", "none", "--distill-from", str(model), "--loss", "task+kd",
            "--save-dtype", "float32", *extra]


def test_two_processes_train_the_weights_one_process_does(plain, tmp_path):
    model, corpus = plain
    assert main(_args(model, corpus, tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the processes' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env.pop("WORLD_SIZE", None)
    # accelerate's multi-process launcher (named for GPUs; on a machine without one, gloo on the CPU)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "llmshrink",
           *_args(model, corpus, tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    base = load_file(model / "model.safetensors")
    assert one.keys() == two.keys()
    moved = [k for k in one if k in base and not torch.equal(one[k], base[k].to(one[k].dtype))]
    assert any(".layers.2." in k for k in moved) and "lm_head.weight" in one
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
    # the same run with a batch the two processes cannot share is refused, with nothing written
    bad = [str(tmp_path / "bad") if a == str(tmp_path / "two") else a for a in cmd]
    bad[bad.index("--grad-accum") + 1] = "3"
    proc = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "multiple of 2" in proc.stderr
    assert not (tmp_path / "bad").exists()

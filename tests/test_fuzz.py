"""Fuzzing the readers llmshrink owns: any input gives a result or a one-line UserError, never
another exception. Fixed seed (derandomized) and a bounded number of examples, so CI is stable."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmshrink.errors import UserError

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _one_line_or_result(fn, *args):
    """Call ``fn``; a UserError is fine if its message is one line; anything else fails."""
    try:
        return fn(*args)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None


def _tmp(data: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as fh:
        fh.write(data)
    return Path(fh.name)


def _mutate(base: bytes, edits, cut) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data[:cut]) if cut is not None else bytes(data)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    import gguf

    path = tmp_path_factory.mktemp("g") / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_name("fuzz")
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 4), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory) -> bytes:
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("s") / "model.safetensors"
    save_file({"a.weight": torch.ones(4, 4), "b.bias": torch.zeros(3, dtype=torch.int32)}, str(path))
    return path.read_bytes()


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
CUT = st.none() | st.integers(0, 4096)


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_gguf_header_and_tensor_table(gguf_bytes, edits, cut):
    from llmshrink.models.convert import inspect_gguf

    path = _tmp(_mutate(gguf_bytes, edits, cut), ".gguf")
    try:
        info = _one_line_or_result(inspect_gguf, path)
        assert info is None or set(info) == {"architecture", "tensors", "general", "tokenizer_pre"}
    finally:
        path.unlink()


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_imatrix_reader(gguf_bytes, edits, cut):
    from llmshrink.exporters.llamacpp_quant import read_imatrix

    path = _tmp(_mutate(gguf_bytes, edits, cut), ".gguf")
    try:
        _one_line_or_result(read_imatrix, path)
    finally:
        path.unlink()


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_safetensors_header_checks(safetensors_bytes, edits, cut):
    from llmshrink.models.files import check_safetensors
    from llmshrink.models.lazy import SafetensorsIndex

    path = _tmp(_mutate(safetensors_bytes, edits, cut), ".safetensors")
    try:
        if _one_line_or_result(check_safetensors, [path]) is None and _ok(check_safetensors, path):
            index = _one_line_or_result(SafetensorsIndex, [path])
            for name in index.entries if index is not None else ():
                _one_line_or_result(index.read, name)
    finally:
        path.unlink()


def _ok(check, path) -> bool:
    try:
        check([path])
        return True
    except UserError:
        return False


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-5, 1 << 40) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8),
    max_size=4))
def test_safetensors_headers_of_any_shape(header, tmp_path):
    from llmshrink.models.files import check_safetensors
    from llmshrink.models.lazy import SafetensorsIndex

    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 64)
    if _ok(check_safetensors, path):
        _one_line_or_result(SafetensorsIndex, [path])


JSONL_LINES = st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["text", "instruction", "input", "output", "conversations",
                                                          "from", "value", "role", "content", "x"]),
                                          st.recursive(st.none() | st.text(max_size=10) | st.integers(),
                                                       lambda c: st.lists(c, max_size=3)
                                                       | st.dictionaries(st.sampled_from(["from", "value", "role",
                                                                                          "content"]), c, max_size=2),
                                                       max_leaves=6), max_size=4))), max_size=5)


@FUZZ
@given(lines=JSONL_LINES, fmt=st.sampled_from(["alpaca", "sharegpt"]))
def test_instruction_jsonl(lines, fmt, tmp_path):
    from llmshrink.data.instruct import read_conversations

    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass") if _encodable(lines) else None
    if path.exists():
        _one_line_or_result(read_conversations, path, fmt)


@FUZZ
@given(lines=JSONL_LINES)
def test_jsonl_corpus(lines, tmp_path):
    from llmshrink.data.corpora import load_corpus

    if not _encodable(lines):
        return
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    _one_line_or_result(load_corpus, str(path))


def _encodable(lines) -> bool:
    try:
        "\n".join(lines).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


YAMLISH = st.text(alphabet=st.sampled_from(list("abcmodelutstagequantizbr:-{}[]'\" \n\t,#0123456789.")), max_size=120)


@FUZZ
@given(text=YAMLISH)
def test_recipe_yaml_text(text, tmp_path):
    from llmshrink.jobs.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    _one_line_or_result(load_recipe, path)


VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True) | st.text(max_size=8),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                      max_leaves=10)
STAGE = st.dictionaries(st.sampled_from(["quantize", "finetune", "export", "eval", "prune", "other"]),
                        st.none() | st.dictionaries(st.sampled_from(["bits", "group_size", "blocks", "calib", "train",
                                                                     "steps", "type", "ladder", "data", "seqlen",
                                                                     "remove", "x"]), VALUES, max_size=3),
                        min_size=1, max_size=2)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(["model", "out", "stages", "description", "x"]),
                            VALUES | st.lists(STAGE, max_size=3), max_size=4))
def test_recipe_mappings(data):
    from llmshrink.jobs.recipe import parse_recipe

    _one_line_or_result(parse_recipe, data, "fuzz")


@FUZZ
@given(spec=st.text(max_size=12), n=st.integers(1, 64))
def test_block_ranges(spec, n):
    from llmshrink.models.arch import block_range

    r = _one_line_or_result(block_range, spec, n)
    assert r is None or (len(r) > 0 and r.start >= 0 and r.stop <= n)


@FUZZ
@given(text=st.binary(max_size=200))
def test_run_records(text, tmp_path):
    from llmshrink.paths import read_record

    path = tmp_path / "r.json"
    path.write_bytes(text)
    rec = _one_line_or_result(read_record, path)
    assert rec is None or isinstance(rec, dict)

"""GGUF metadata: hyperparameters and tokenizer keys, written by gguf-py's writer and read back."""

import gguf
import pytest
from transformers import LlamaConfig

from llmshrink.errors import UserError
from llmshrink.exporters.gguf_arch import GGUF_ARCHES, gguf_arch_of
from llmshrink.exporters.gguf_meta import add_general, add_hparams, add_tokenizer, read_vocab


def _read(tmp_path, fill):
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}


def test_arch_mapping_and_refusal():
    from llmshrink.models.arch import ARCHITECTURES

    assert gguf_arch_of("llama").name == "llama" and gguf_arch_of("mistral").name == "llama"
    assert gguf_arch_of("gemma3_text").name == "gemma3" and gguf_arch_of("phi3").name == "phi3"
    assert set(GGUF_ARCHES) == set(ARCHITECTURES)  # every architecture llmshrink handles has its GGUF form
    with pytest.raises(UserError, match="GGUF export handles gemma2, gemma3_text, .* models, not 'gpt2'"):
        gguf_arch_of("gpt2")


@pytest.mark.parametrize(("rope", "head_dim"), [(None, None), ({"rope_type": "linear", "factor": 4.0}, 48)])
def test_hparams_come_from_the_config(tmp_path, rope, head_dim):
    cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_attention_heads=8, num_key_value_heads=2,
                      num_hidden_layers=6, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=1000,
                      head_dim=head_dim, rope_scaling=rope, rope_theta=50000.0)
    kv = _read(tmp_path, lambda w: add_hparams(w, cfg, n_blocks=4))
    assert kv["llama.block_count"] == 4  # the blocks actually written, not the config's 6
    assert (kv["llama.embedding_length"], kv["llama.feed_forward_length"]) == (256, 640)
    assert (kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]) == (8, 2)
    assert kv["llama.context_length"] == 4096 and kv["llama.rope.freq_base"] == 50000.0
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert kv["llama.rope.dimension_count"] == (head_dim or 32)
    assert ("llama.attention.key_length" in kv) == (head_dim is not None)
    assert ("llama.rope.scaling.factor" in kv) == (rope is not None)


def test_general_keys_carry_the_source_and_describe_the_file(tmp_path):
    source = {"general.type": "model", "general.name": "Smollm2 135M", "general.organization": "HuggingFaceTB",
              "general.basename": "smollm2", "general.size_label": "135M", "general.license": "apache-2.0",
              "general.languages": ["en"], "general.base_model.count": 1, "general.file_type": 3}
    kv = _read(tmp_path, lambda w: add_general(w, source, name="x", n_params=110_300_000, quantized=True))
    assert kv["general.name"] == "Smollm2 135M" and kv["general.organization"] == "HuggingFaceTB"
    assert kv["general.license"] == "apache-2.0" and kv["general.languages"] == ["en"]
    assert kv["general.basename"] == "smollm2" and kv["general.base_model.count"] == 1
    assert kv["general.size_label"] == "110M"  # what is written (a pruned model), not the source's
    assert kv["general.quantized_by"] == "llmshrink" and "general.file_type" not in kv  # the writer's own
    bare = _read(tmp_path, lambda w: add_general(w, {}, name="my-model", n_params=1_500_000, quantized=False))
    assert (bare["general.name"], bare["general.type"], bare["general.size_label"]) == ("my-model", "model", "1.5M")
    assert "general.quantized_by" not in bare


def test_unsupported_rope_is_refused(tmp_path):
    cfg = LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048})
    with pytest.raises(UserError, match="RoPE scaling 'yarn' cannot be exported"):
        _read(tmp_path, lambda w: add_hparams(w, cfg, n_blocks=2))


def test_tokenizer_keys(tmp_path, tokenizer):
    n_vocab = len(tokenizer) + 4  # an embedding padded past the tokenizer
    kv = _read(tmp_path, lambda w: add_tokenizer(w, tokenizer, n_vocab))
    tokens = kv["tokenizer.ggml.tokens"]
    assert len(tokens) == n_vocab and tokens[-1] == f"[PAD{n_vocab - 1}]"
    vocab = tokenizer.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    types = kv["tokenizer.ggml.token_type"]
    assert types[vocab["</s>"]] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.eos_token_id"] == vocab["</s>"]
    assert kv["tokenizer.ggml.merges"] == read_vocab(tokenizer, n_vocab).merges
    assert kv["tokenizer.chat_template"] == tokenizer.chat_template
    assert kv["tokenizer.ggml.add_bos_token"] is False  # this tokenizer adds no BOS


def test_a_tokenizer_larger_than_the_embedding_is_refused(tokenizer):
    with pytest.raises(UserError, match="does not belong to this model"):
        read_vocab(tokenizer, len(tokenizer) - 10)

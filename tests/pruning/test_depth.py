import pytest
import torch
from transformers import AutoModelForCausalLM

from llmshrink.errors import UserError
from llmshrink.models.arch import arch_of
from llmshrink.pruning.depth import remove_blocks
from tests.conftest import make_tiny_model


def _ids(vocab=64):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))


def test_removed_model_saves_and_loads_with_plain_transformers(tmp_path):
    model = make_tiny_model(64, layers=4)
    layers = list(model.model.layers)
    kept = remove_blocks(model, arch_of(model), [1, 2])
    assert kept == [0, 3] and model.config.num_hidden_layers == 2
    assert list(model.model.layers) == [layers[0], layers[3]]
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2 and len(loaded.model.layers) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)


def test_cached_generation_matches_uncached_after_removal():
    model = make_tiny_model(64, layers=4)
    remove_blocks(model, arch_of(model), [0, 2])
    prompt = _ids()[:1, :5]
    with torch.no_grad():
        a = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=2)
        b = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=2)
    assert torch.equal(a, b) and a.shape[1] == 17


def test_per_layer_config_lists_shrink(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = Qwen3ForCausalLM(cfg).eval()
    model.config.layer_types = ["full_attention"] * 4
    remove_blocks(model, arch_of(model), [3])
    assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)


def test_remove_blocks_rejects_bad_indices():
    model = make_tiny_model(64, layers=2)
    with pytest.raises(UserError, match="at least one must stay"):
        remove_blocks(model, arch_of(model), [0, 1])
    with pytest.raises(UserError, match="outside the model's 2 blocks"):
        remove_blocks(model, arch_of(model), [2])
    assert len(model.model.layers) == 2

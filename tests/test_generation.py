import torch

from llmshrink.generation import GenerateConfig, generate
from tests.conftest import make_tiny_model


def test_greedy_is_deterministic_and_bounded(tokenizer):
    model = make_tiny_model(len(tokenizer), seed=3)
    cfg = GenerateConfig(template="chat", max_new_tokens=6)
    a = generate(model, tokenizer, "To be", cfg)
    b = generate(model, tokenizer, "To be", cfg)
    assert a.text == b.text and 0 < a.new_tokens <= 6
    assert a.prompt == "<|user|>To be</s><|assistant|>"


def test_sampling_follows_the_seed(tokenizer):
    model = make_tiny_model(len(tokenizer), seed=3)
    runs = {
        seed: generate(model, tokenizer, "the", GenerateConfig(template="none", max_new_tokens=12,
                                                                do_sample=True, temperature=2.0, seed=seed)).text
        for seed in (0, 0, 1, 2, 3)
    }
    again = generate(model, tokenizer, "the", GenerateConfig(template="none", max_new_tokens=12, do_sample=True,
                                                             temperature=2.0, seed=0)).text
    assert again == runs[0]
    assert len(set(runs.values())) > 1  # different seeds, different samples
    torch.manual_seed(0)

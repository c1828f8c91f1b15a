"""Shared fixtures: a tokenizer trained here (no hub), tiny random LLaMA models saved as real
Hugging Face folders, and an isolated cache for unit tests.

End-to-end tests (marked ``e2e``) use the real default model and the user's cache, so the
download and conversion happen once per machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings "
    "and arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. "
    "Now is the winter of our discontent made glorious summer by this sun of York. "
    "All the world's a stage, and all the men and women merely players; they have their exits and "
    "their entrances, and one man in his time plays many parts. "
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(add_bos: bool = False, chat_template: str | None = CHAT_TEMPLATE, digits: bool = False):
    """A byte-level BPE tokenizer trained on TEXT, wrapped for transformers (``digits``: split
    digits one by one first, as SmolLM's does: llama.cpp's "smollm" pre-tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_sentencepiece_tokenizer(size: int = 500):
    """A SentencePiece-style tokenizer as transformers writes Llama 1/2's and Mistral's: BPE over
    text whose spaces are "▁" (one put in front), 256 ``<0xXX>`` byte pieces for what the pieces
    miss, BOS added. Trained on TEXT; the merges are SentencePiece's order as transformers'
    converter writes it (every split of a piece into two pieces, by the piece's rank)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False)
    words = Tokenizer(models.BPE(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    words.train_from_iterator([TEXT] * 4, trainer)
    learned = [p for p, _ in sorted(words.get_vocab().items(), key=lambda kv: kv[1]) if p not in specials]
    vocab = {p: i for i, p in enumerate([*specials, *(f"<0x{b:02X}>" for b in range(256)), *learned])}
    merges = sorted((vocab[p], p[:k], p[k:]) for p in learned for k in range(1, len(p))
                    if p[:k] in vocab and p[k:] in vocab)
    tok = Tokenizer(models.BPE(vocab, [(a, b) for _, a, b in merges], unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", chat_template=CHAT_TEMPLATE)


def make_tiny_model(vocab_size: int, *, seed: int = 0, tie: bool = True, layers: int = 2, hidden: int = 32,
                    intermediate: int = 64, heads: int = 4, kv_heads: int = 2, std: float = 0.3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Random init is near-uniform; widen the weights so that logits differ visibly per token.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return model


def save_model_dir(path: Path, model, tokenizer) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def bos_tokenizer():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    model = make_tiny_model(len(tokenizer))
    return save_model_dir(tmp_path_factory.mktemp("tiny-llama"), model, tokenizer)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 8)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Unit tests get an empty cache of their own; e2e tests share the user's real cache."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path_factory.mktemp("cache")))
    elif os.environ.get("LLMSHRINK_TEST_CACHE"):
        monkeypatch.setenv("LLMSHRINK_CACHE", os.environ["LLMSHRINK_TEST_CACHE"])


def library_perplexity(model: str | Path, data: str | Path, seqlen: int,
                       max_tokens: int | None = None) -> tuple[float, int]:
    """(perplexity, scored tokens) of ``model`` on corpus ``data`` computed by the library's own
    functions, for checking that a command wired them to the right model, data and windows."""
    from llmshrink.data.corpora import load_corpus
    from llmshrink.data.windows import bos_id, tokenize_corpus
    from llmshrink.eval.perplexity import perplexity
    from llmshrink.models.load import load_model

    lm = load_model(str(model))
    stream = tokenize_corpus(load_corpus(str(data)), lm.tokenizer, max_tokens=max_tokens)
    res = perplexity(lm.model, stream, seqlen=seqlen, bos=bos_id(lm.tokenizer))
    return res.perplexity, res.tokens

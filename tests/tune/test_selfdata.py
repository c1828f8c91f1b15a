import torch

from llmshrink.tune.selfdata import ordinary_tokens, sample_text_windows


def test_sampled_windows_are_full_reproducible_and_start_from_ordinary_tokens(tokenizer, bos_tokenizer):
    from tests.conftest import make_tiny_model

    model = make_tiny_model(len(tokenizer)).eval()
    a = sample_text_windows(model, tokenizer, 5, 24, seed=1, batch_size=2)
    b = sample_text_windows(model, tokenizer, 5, 24, seed=1, batch_size=2)
    c = sample_text_windows(model, tokenizer, 5, 24, seed=2, batch_size=2)
    assert a.shape == (5, 24) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    ordinary = set(ordinary_tokens(tokenizer).tolist())
    assert all(t in ordinary for t in a[:, 0].tolist())  # no BOS for this tokenizer: the window opens with it
    assert tokenizer.eos_token_id not in a[:, 1:].tolist() or tokenizer.eos_token_id is None
    assert len(set(a[:, 0].tolist())) > 1  # windows do not all open alike
    # with a tokenizer that prepends BOS, every window starts with BOS, then an ordinary token
    w = sample_text_windows(model, bos_tokenizer, 3, 16, seed=0)
    assert (w[:, 0] == bos_tokenizer.bos_token_id).all() and all(t in ordinary for t in w[:, 1].tolist())


def test_ordinary_tokens_leave_out_special_ones(tokenizer):
    ids = set(ordinary_tokens(tokenizer).tolist())
    assert ids and not ids & set(tokenizer.all_special_ids)
    assert len(ids) < len(tokenizer)

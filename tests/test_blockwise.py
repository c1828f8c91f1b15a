import torch

from llmshrink.blockwise import BlockInputs, Slab, capture_block_inputs, run_block, walk_blocks
from llmshrink.models.arch import arch_of
from tests.conftest import make_tiny_model


def test_walking_the_blocks_reproduces_the_model():
    model = make_tiny_model(64, layers=3)
    arch = arch_of(model)
    batches = list(torch.randint(0, 64, (6, 24), generator=torch.Generator().manual_seed(0)).split(4))
    seen = []
    final: list[BlockInputs] = []

    def visit(i, block, inputs):
        seen.append(i)
        if i == 2:
            final.append(BlockInputs(run_block(block, inputs), inputs.kwargs))

    walk_blocks(model, arch, batches, visit)
    assert seen == [0, 1, 2]
    with torch.no_grad():
        for b, out in zip(batches, final[0].hidden, strict=True):
            ref = model(input_ids=b, output_hidden_states=True).hidden_states
            # hidden_states[-1] is after the final norm; compare through it
            torch.testing.assert_close(model.model.norm(out), ref[-1], rtol=1e-5, atol=1e-5)
    assert model.config.use_cache is True  # restored after the capture


def test_capture_keeps_block_kwargs():
    model = make_tiny_model(64)
    inputs = capture_block_inputs(model, arch_of(model), [torch.randint(0, 64, (2, 10))])
    assert inputs.hidden[0].shape == (2, 10, 32)
    assert "position_embeddings" in inputs.kwargs[0]


def test_captured_inputs_of_equal_batches_share_one_buffer():
    model = make_tiny_model(64)
    arch = arch_of(model)
    ids = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(1))
    batches = list(ids.split(2))  # rows 2, 2, 1
    inputs = capture_block_inputs(model, arch, batches)
    storages = {h.untyped_storage().data_ptr() for h in inputs.hidden}
    assert len(storages) == 1 and [h.shape[0] for h in inputs.hidden] == [2, 2, 1]
    with torch.no_grad():
        for b, h in zip(batches, inputs.hidden, strict=True):
            assert torch.equal(h, model.model.embed_tokens(b))
    ragged = capture_block_inputs(model, arch, [ids[:2, :12], ids[2:, :7]])  # lengths differ: kept apart
    assert len({h.untyped_storage().data_ptr() for h in ragged.hidden}) == 2


def test_slab_keeps_a_tensor_that_does_not_fit_its_slot_as_it_is():
    slab = Slab([2, 3])
    a = torch.randn(2, 4)
    kept = slab.keep(0, a)
    assert torch.equal(kept, a) and kept.data_ptr() != a.data_ptr()
    odd = torch.randn(2, 4)  # slot 1 holds 3 rows
    assert slab.keep(1, odd) is odd

"""What a job checks before it loads its model: every setting and path that can be checked
without the weights (the model's files and architecture, the corpora, the block range), so a
mistake costs a second, not a model load."""

from __future__ import annotations

from collections.abc import Iterable

from ..data.mix import check_data
from ..models.arch import block_range
from ..models.load import check_model


def preflight(model: str, *, corpora: Iterable[str | None] = (), blocks: str | None = None,
              models: Iterable[str | None] = ()) -> dict | None:
    """Check ``model`` (and the other ``models`` a job reads, e.g. a teacher), the ``corpora`` and
    the ``blocks`` range against the model's depth where its config is at hand; returns that config."""
    config = check_model(model)
    for other in models:
        if other:
            check_model(other)
    for corpus in corpora:
        if corpus:
            check_data(corpus)
    if blocks is not None and config is not None and isinstance(config.get("num_hidden_layers"), int):
        block_range(blocks, config["num_hidden_layers"])
    return config

"""Data-parallel tail fine-tuning across processes started by ``accelerate launch`` (or torchrun).

Each optimizer step takes ``grad_accum`` micro-batches in a fixed, seeded order; with W
processes, process r takes the r-th W-th of them (so W must divide ``grad_accum``), the
gradients are summed across processes (``all_reduce``) before clipping and the optimizer step,
and every process then holds the same weights as one process running the whole step would, up
to the order of float sums. The process group is the one ``accelerate`` sets up from the
launcher's environment (gloo on the CPU, NCCL on GPUs, each process on its own GPU); only the
main process scores, writes checkpoints and saves the output.

    accelerate launch --multi_gpu --num_processes 2 -m llmshrink finetune MODEL ...   (CPU too)
    torchrun --nproc_per_node 2 -m llmshrink finetune MODEL ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # this process's place on its machine (its GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Parallel:
        """One process, or this process's place in the group a launcher started (``WORLD_SIZE``
        in the environment); the process group is initialised through ``accelerate``."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo on the CPU
        log.info("data-parallel fine-tuning: process %d of %d (%s)", state.process_index, state.num_processes,
                 state.distributed_type)
        return cls(state.process_index, state.num_processes, state.local_process_index)

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def check(self, grad_accum: int) -> None:
        if grad_accum % self.world:
            raise UserError(f"--grad-accum {grad_accum} micro-batches per step cannot be shared by {self.world} "
                            f"processes: use a multiple of {self.world} (the global batch is batch-size x grad-accum)")

    def share(self, order: Iterator[int], grad_accum: int, start_call: int = 0) -> Iterator[tuple[int, int]]:
        """This process's micro-batches as (global call number, batch index): of each step's
        ``grad_accum`` batches of ``order``, the rank-th share."""
        per = grad_accum // self.world
        call = start_call
        for j in order:
            if (call % grad_accum) // per == self.rank:
                yield call, j
            call += 1

    def reduce(self, params: list[torch.nn.Parameter], loss: float) -> float:
        """Sum the gradients and the loss across processes (in place); the step's global loss."""
        if self.world == 1:
            return loss
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
        total = torch.tensor([loss], dtype=torch.float64, device=params[0].device)
        dist.all_reduce(total)
        return float(total)

    def total(self, n: int) -> int:
        """``n`` summed over the processes."""
        if self.world == 1:
            return n
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t)


SINGLE = Parallel()  # one process

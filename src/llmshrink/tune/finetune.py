"""Tail fine-tuning: train the last N decoder blocks (and lm_head) with everything before frozen.

The frozen front of the model, packed GPTQ blocks included, never changes, so its output for
every training batch is computed once, by the block-wise driver, and kept; each training step
then runs only the trainable tail (forward and backward), the final norm and lm_head. With
``distill_from``, the original model's final hidden states are cached the same way and its
next-token distribution is recomputed from them through its own lm_head at each step, so the
loss is the KL divergence from the original model with no second model held in memory. When
those caches would not fit in memory they are streamed instead (``tune.front``: the front, and
the original, run per batch), and several processes can share each step (``tune.parallel``).

With ``tune_scales`` the packed front trains too, within the GPTQ format: its scales (codes and
zeros fixed, ``QuantLinear.scales_trainable``) and its norms and biases, so each step runs the
whole model from the cached embedding outputs (EfficientQAT's end-to-end step-size training).
Distilled on varied text, this shrinks the front's error on any text, which the tail alone
cannot undo.

Losses: ``task`` (next-token cross-entropy on the labels: every token for text, the response
tokens for instruction data), ``kd`` (KL from the original model on every real token) or both.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.calib import corpus_windows
from ..data.corpora import load_corpus
from ..data.instruct import IGNORE, collate, read_conversations, tokenize_dataset
from ..data.mix import parse_mix
from ..data.windows import bos_id, sample_windows, tokenize_corpus
from ..errors import UserError
from ..memory import heap_kept
from ..models.arch import logit_cap, soft_cap, untie_lm_head
from ..models.load import LoadedModel
from ..quant.qlinear import QuantLinear
from .amp import amp, use_amp
from .checkpoint import load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .front import CachedFront, StreamedFront, choose_front
from .parallel import SINGLE, Parallel
from .train import TrainStats, train_loop

log = logging.getLogger(__name__)


@dataclass
class Batches:
    ids: list[torch.Tensor]  # [batch, seq] token ids, right-padded
    labels: list[torch.Tensor]  # IGNORE where no task loss
    real: list[torch.Tensor]  # bool: real (not padding) tokens

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TailRun:
    """What :func:`train_tail` did: the training statistics, and the held-out response loss."""

    stats: TrainStats
    trainable: int
    first: int  # the first trained block
    evaluation: dict = field(default_factory=dict)


def text_batches(lm: LoadedModel, cfg: FinetuneConfig, needed: int | None,
                 generated: torch.Tensor | None = None) -> Batches:
    """Windows of ``seqlen`` tokens over a corpus (all of it, or ``needed`` windows), every token a
    target, shuffled together with the ``generated`` windows (no task targets) if any."""
    bos = bos_id(lm.tokenizer)
    if len(parse_mix(cfg.data)) > 1:
        n = cfg.nsamples or needed
        if n is None:
            raise UserError(f"the mix {cfg.data!r} has no window count: give --nsamples or --steps")
        windows = corpus_windows(cfg.data, lm.tokenizer, n, cfg.seqlen, seed=cfg.seed, role="training")
    else:
        windows = _corpus_windows(lm, cfg, needed, bos)
    labels = windows.clone()
    if bos is not None:
        labels[:, 0] = IGNORE
    if generated is not None and len(generated):
        order = torch.randperm(len(windows) + len(generated), generator=torch.Generator().manual_seed(cfg.seed))
        windows = torch.cat([windows, generated])[order]
        labels = torch.cat([labels, torch.full_like(generated, IGNORE)])[order]
    ids = list(windows.split(cfg.batch_size))
    return Batches(ids, list(labels.split(cfg.batch_size)), [torch.ones_like(x, dtype=torch.bool) for x in ids])


def _corpus_windows(lm: LoadedModel, cfg: FinetuneConfig, needed: int | None, bos: int | None) -> torch.Tensor:
    """``cfg.nsamples`` windows of one corpus, or all of it (at most ``needed``)."""
    stream = tokenize_corpus(load_corpus(cfg.data), lm.tokenizer)
    n = cfg.nsamples
    if n is None:
        length = cfg.seqlen - (bos is not None)
        n_all = stream.numel() // length
        if n_all < 1:
            raise UserError(f"corpus {cfg.data} has {stream.numel()} tokens, fewer than one window of "
                            f"{cfg.seqlen}: give more text or a smaller --seqlen")
        n = n_all if needed is None else min(n_all, needed)
    return sample_windows(stream, n, cfg.seqlen, seed=cfg.seed, bos=bos, name=f"training corpus {cfg.data}")


def instruct_batches(lm: LoadedModel, cfg: FinetuneConfig) -> tuple[Batches, Batches | None]:
    """Training and held-out batches of tokenized conversations, response-only labels."""
    convs = read_conversations(cfg.data, cfg.format, skip_bad_lines=cfg.skip_bad_lines)
    random.Random(cfg.seed).shuffle(convs)
    n_eval = max(1, round(cfg.eval_fraction * len(convs))) if cfg.eval_fraction > 0 and len(convs) > 1 else 0
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a pad nor an end-of-sequence token to pad batches with")

    def batches(part) -> Batches:
        toks = tokenize_dataset(part, cfg.template, lm.tokenizer, cfg.seqlen)
        b = Batches([], [], [])
        for i in range(0, len(toks), cfg.batch_size):
            ids, labels, real = collate(toks[i: i + cfg.batch_size], pad)
            b.ids.append(ids)
            b.labels.append(labels)
            b.real.append(real)
        return b

    return batches(convs[n_eval:]), (batches(convs[:n_eval]) if n_eval else None)


def _packed(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "qweight") for m in module.modules())


def check_tail(lm: LoadedModel, cfg: FinetuneConfig) -> int:
    """Refuse a tail that reaches past the model or into packed blocks (or a packed lm_head with
    ``lm_head``); returns the first tail block."""
    blocks = lm.arch.blocks(lm.model)
    n = len(blocks)
    if cfg.n_train > n:
        raise UserError(f"--train last:{cfg.n_train} asks for more blocks than the model's {n}: use last:N with N <= {n}")
    first = n - cfg.n_train
    for i in range(first, n):
        if _packed(blocks[i]):
            raise UserError(f"block {i} is quantized (packed) and cannot be trained: choose --train last:N "
                            "over full-precision blocks (quantize fewer blocks with --blocks 0:K)")
    if cfg.lm_head and _packed(lm.model.get_submodule(lm.arch.lm_head)):
        raise UserError("lm_head is quantized (packed) and cannot be trained: leave --lm-head off")
    return first


def select_trainable(lm: LoadedModel, cfg: FinetuneConfig,
                     stack: contextlib.ExitStack | None = None) -> tuple[torch.nn.Module, int]:
    """Freeze everything, then make the tail (its blocks, the final norm, and lm_head if asked) trainable; returns the module whose
    named trainable parameters are checkpointed (a peft wrapper for LoRA) and the first tail block.
    With ``cfg.tune_scales`` the front's GPTQ scales train too, within ``stack`` (see :func:`front_trainable`)."""
    first = check_tail(lm, cfg)
    blocks = lm.arch.blocks(lm.model)
    n = len(blocks)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    if cfg.lm_head and untie_lm_head(lm.model, lm.arch):
        log.info("lm_head untied from the embedding: it is trained on its own")
    root: torch.nn.Module = lm.model
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = sorted({name.rsplit(".", 1)[-1] for name in lm.arch.linear_names})
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                          layers_to_transform=list(range(first, n)))
        torch.manual_seed(cfg.seed)
        root = get_peft_model(lm.model, lora)
    else:
        for i in range(first, n):
            for p in blocks[i].parameters():
                p.requires_grad_(True)
    for p in lm.model.get_submodule(lm.arch.norm).parameters():  # the final norm belongs to the tail
        p.requires_grad_(True)
    if cfg.lm_head:
        lm.model.get_submodule(lm.arch.lm_head).weight.requires_grad_(True)
    if cfg.tune_scales:
        if stack is None:
            raise ValueError("tune_scales needs an ExitStack that outlives the training")
        front_trainable(list(blocks)[:first], stack)
    return root, first


def front_trainable(front: list[torch.nn.Module], stack: contextlib.ExitStack) -> None:
    """Make the front's GPTQ scales trainable (until ``stack`` closes, which writes them back into
    the packed layers) and its norms and biases (every 1-D float parameter). Codes, zero points
    and the embedding stay as they are."""
    packed = [m for block in front for m in block.modules() if isinstance(m, QuantLinear)]
    if not packed:
        raise UserError("--tune-scales trains the quantized blocks' scales, but no block before the tail is "
                        "quantized: quantize the front first (llmshrink quantize --blocks 0:K)")
    for m in packed:
        stack.enter_context(m.scales_trainable())
    for block in front:
        for p in block.parameters():
            if p.ndim == 1 and p.is_floating_point():
                p.requires_grad_(True)


class TailLoss:
    """Loss of one batch: the blocks from ``first`` on (the tail; every block with ``tune_scales``),
    the final norm and lm_head, against labels and/or the teacher.
    ``front(j)`` gives what enters block ``first`` for batch ``j`` (cached or computed, see ``tune.front``);
    ``teacher`` is ``(teacher_front, lm_head weight, logit cap)``, ``teacher_front(j)`` the
    teacher's final normed hidden states."""

    def __init__(self, lm: LoadedModel, first: int, cfg: FinetuneConfig, batches: Batches, front, teacher, *,
                 amp: bool = False):
        self.amp = amp  # bfloat16 autocast of the steps (see use_amp)
        self.cap, self.first = logit_cap(lm.model), first
        self.tail = list(lm.arch.blocks(lm.model))[first:]
        self.norm = lm.model.get_submodule(lm.arch.norm)
        self.head = lm.model.get_submodule(lm.arch.lm_head)
        self.cfg, self.batches, self.front, self.teacher = cfg, batches, front, teacher
        self.calls = 0  # loss evaluations so far: seeds the positions of the next one

    def hidden(self, j: int) -> torch.Tensor:
        """The final normed hidden states of batch ``j`` (what lm_head reads)."""
        h, kwargs = self.front(j)  # each block's keyword arguments, by block index (one dict: all alike)
        for i, block in enumerate(self.tail, self.first):
            out = block(h, **kwargs[i if len(kwargs) > 1 else 0])
            h = out[0] if isinstance(out, tuple) else out
        return self.norm(h)

    def logits(self, j: int) -> torch.Tensor:
        return soft_cap(self.head(self.hidden(j)), self.cap)

    def positions(self, j: int) -> torch.Tensor:
        """Bool [batch, seq-1]: the positions whose next-token loss is taken in this call: every real
        one, or a fresh random ``loss_tokens`` fraction of them (lm_head and the loss dominate a step)."""
        real = self.batches.real[j][:, 1:]
        self.calls += 1
        if self.cfg.loss_tokens >= 1:
            return real
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.calls)
        keep = real & (torch.rand(real.shape, generator=g) < self.cfg.loss_tokens)
        return keep if keep.any() else real

    def parts(self, j: int) -> dict[str, torch.Tensor]:
        keep = self.positions(j)
        with amp(self.head.weight.device.type, self.amp):
            hs = self.hidden(j)[:, :-1][keep]
            logits = soft_cap(self.head(hs), self.cap).float()
        out = {}
        if self.cfg.loss in ("task", "task+kd"):
            labels = self.batches.labels[j][:, 1:][keep]
            out["task"] = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        if self.cfg.loss in ("kd", "task+kd"):
            front, weight, cap = self.teacher
            with torch.no_grad():
                with amp(weight.device.type, self.amp):  # a streamed teacher runs as a cached one
                    ht = front(j)[0][:, :-1][keep]
                t = F.log_softmax(soft_cap(ht @ weight.T, cap).float(), dim=-1)
            s = F.log_softmax(logits, dim=-1)
            out["kd"] = (t.exp() * (t - s)).sum(-1).mean()
            if self.cfg.hidden_loss > 0:
                ht = ht.float()
                out["hidden"] = self.cfg.hidden_loss * (hs.float() - ht).pow(2).mean() / ht.pow(2).mean()
        return out

    def __call__(self, item: int | tuple[int, int]) -> torch.Tensor:
        """The loss of batch ``j``, or of ``(call, j)``: the run's ``call``-th evaluation (which
        seeds its positions, whichever process takes it)."""
        if isinstance(item, tuple):
            self.calls, item = item
        return sum(self.parts(item).values())

    @torch.no_grad()
    def response_loss(self, batches: range) -> float:
        """Mean next-token cross-entropy over the labelled tokens of these batches."""
        total, count = 0.0, 0
        for j in batches:
            logits = self.logits(j)[:, :-1].float()
            labels = self.batches.labels[j][:, 1:]
            n = int((labels != IGNORE).sum())
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum"))
            count += n
        return total / max(count, 1)


def _order(n: int, seed: int):
    """Micro-batch indices, epoch after epoch, each epoch in its own seeded order."""
    epoch = 0
    while True:
        perm = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        yield from perm
        epoch += 1


def config_hash(lm: LoadedModel, cfg: FinetuneConfig) -> str:
    text = json.dumps({"model": str(lm.path), "config": cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_like(lm: LoadedModel, spec: str) -> LoadedModel:
    """Load ``spec`` (the original of ``lm``) in ``lm``'s dtype and on its device."""
    from ..models.load import load_model

    p = next(lm.model.parameters())
    return load_model(spec, dtype=str(p.dtype).removeprefix("torch."), device=str(p.device))


def load_teacher(lm: LoadedModel, cfg: FinetuneConfig) -> LoadedModel:
    return check_vocabulary(lm, load_like(lm, cfg.distill_from), cfg)


def check_vocabulary(lm: LoadedModel, teacher: LoadedModel, cfg: FinetuneConfig) -> LoadedModel:
    if teacher.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
        raise UserError(f"--distill-from {cfg.distill_from} has another vocabulary than the model: distil from "
                        "the model this one was made from")
    return teacher


def teacher_outputs(teacher: LoadedModel, batches: Batches, *, stream: bool = False,
                    wanted: list[int] | None = None, progress=None):
    """The teacher's final normed hidden states per batch (cached for the batches ``wanted``, or
    computed when asked), and its lm_head weight."""
    through = len(teacher.arch.blocks(teacher.model))
    front = (StreamedFront(teacher, batches.ids, through, final_norm=True) if stream else
             CachedFront(teacher, batches.ids, through, final_norm=True, wanted=wanted, progress=progress))
    weight = teacher.model.get_submodule(teacher.arch.lm_head).weight.detach().clone()
    return front, weight, logit_cap(teacher.model)


def training_batches(lm: LoadedModel, cfg: FinetuneConfig, teacher: LoadedModel | None,
                     progress=None) -> tuple[Batches, Batches | None]:
    """The training batches (text windows, with ``cfg.generated`` more written by ``teacher``;
    or instruction examples) and, for instruction data, the held-out ones."""
    if cfg.format != "text":
        return instruct_batches(lm, cfg)
    generated = None
    if cfg.generated:
        from .selfdata import sample_text_windows

        generated = sample_text_windows(teacher.model, teacher.tokenizer, cfg.generated, cfg.seqlen, seed=cfg.seed,
                                        progress=progress)
    needed = None if cfg.steps is None else max(1, cfg.steps * cfg.batch_size * cfg.grad_accum - cfg.generated)
    return text_batches(lm, cfg, needed, generated), None


def train_tail(lm: LoadedModel, cfg: FinetuneConfig, ckpt_dir: Path, *, resume: bool = False,
               original: LoadedModel | None = None, before: Callable[[], None] | None = None,
               parallel: Parallel = SINGLE, progress=None) -> TailRun:
    """Train the tail of ``lm`` in place (see the module docstring), checkpointing into ``ckpt_dir``
    every ``cfg.save_every`` steps and, with ``resume``, continuing from its checkpoint. ``original``:
    the ``distill_from`` model already loaded by the caller (it is not loaded twice); ``before()``
    runs once the data is read and before any weight changes (the caller's "before" scores: bad
    data fails first, not after minutes of scoring). ``parallel``: this process's share of each
    step's batches (data-parallel, see ``tune.parallel``); only the main process checkpoints.
    With ``cfg.tune_scales`` every step runs the whole model, the front's scales training too."""
    parallel.check(cfg.grad_accum)
    with contextlib.ExitStack() as stack:  # closing it writes trained GPTQ scales back
        root, first = select_trainable(lm, cfg, stack)
        params = {name: p for name, p in root.named_parameters() if p.requires_grad}
        if cfg.loss == "task":
            teacher_lm = None
        else:  # the caller's copy of the original (the evaluation's reference), or a fresh load
            teacher_lm = load_teacher(lm, cfg) if original is None else check_vocabulary(lm, original, cfg)
        batches, held_out = training_batches(lm, cfg, teacher_lm, progress)
        if before is not None:
            before()
        teacher = [teacher_lm]  # handed over: _run drops it once its outputs are cached
        del teacher_lm
        run = _run(lm, cfg, ckpt_dir, root, first, params, teacher, batches, held_out, resume, parallel, progress)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return run


def _run(lm: LoadedModel, cfg: FinetuneConfig, ckpt_dir: Path, root: torch.nn.Module, first: int, params: dict,
         teacher: list[LoadedModel | None], batches: Batches, held_out: Batches | None, resume: bool,
         parallel: Parallel, progress) -> TailRun:
    """:func:`train_tail` once the trainable parameters and the data are chosen (``teacher``: a
    one-item list, emptied here, so no caller frame keeps the original model alive)."""
    teacher_lm = teacher.pop()
    n_train = len(batches)
    if held_out is not None:  # cached alongside, scored before and after training
        batches = Batches(batches.ids + held_out.ids, batches.labels + held_out.labels, batches.real + held_out.real)
    steps = cfg.steps or max(1, math.ceil((cfg.epochs or 1.0) * n_train / cfg.grad_accum))
    log.info("fine-tuning blocks %d:%d%s%s (%s, %d trainable parameters) for %d steps of %d x %d micro-batches, "
             "%s loss", first, first + cfg.n_train, " and lm_head" if cfg.lm_head else "",
             ", and the front's scales and norms" if cfg.tune_scales else "", cfg.method,
             sum(p.numel() for p in params.values()), steps, cfg.grad_accum, cfg.batch_size, cfg.loss)
    chash = config_hash(lm, cfg)
    start, opt_state, losses, tokens = 0, None, [], 0
    if resume and ckpt_dir.exists():
        ck = load_checkpoint(ckpt_dir, params, chash)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(ck.params[name])
        start, opt_state, losses, tokens = ck.step, ck.opt_state, ck.losses, ck.tokens
        log.info("resuming from step %d of %d (%s)", start, steps, ckpt_dir)
    items = list(itertools.islice(parallel.share(_order(n_train, cfg.seed), cfg.grad_accum),
                                  start * cfg.grad_accum // parallel.world, steps * cfg.grad_accum // parallel.world))
    wanted = sorted({j for _, j in items} | set(range(n_train, len(batches))))
    span = 0 if cfg.tune_scales else first  # the first block a step runs
    autocast = use_amp(cfg.amp, str(next(lm.model.parameters()).device))
    loss = TailLoss(lm, span, cfg, batches, *_sources(lm, cfg, batches, span, teacher_lm, wanted, autocast, progress),
                    amp=autocast)
    del teacher_lm
    evaluation: dict = {}
    if held_out is not None:
        evaluation["held_out_loss_before"] = loss.response_loss(range(n_train, len(batches)))

    def on_step(step: int, opt, stats: TrainStats) -> None:
        if step % cfg.save_every == 0 and step < steps and parallel.is_main:
            save_checkpoint(ckpt_dir, step=step, params=params, opt=opt, losses=losses + stats.losses,
                            tokens=tokens + stats.tokens, config_hash=chash)

    stats = _train(lm, cfg, loss, params, iter(items), steps, start, opt_state, on_step, parallel, progress)
    stats.losses = losses + stats.losses
    stats.tokens = parallel.total(stats.tokens) + tokens  # each process counted its own
    if held_out is not None:
        evaluation["held_out_loss_after"] = loss.response_loss(range(n_train, len(batches)))
    del loss
    if cfg.method == "lora":
        root.merge_and_unload()
    return TailRun(stats, sum(p.numel() for p in params.values()), first, evaluation)


def _sources(lm: LoadedModel, cfg: FinetuneConfig, batches: Batches, first: int, teacher_lm: LoadedModel | None,
             wanted: list[int], autocast: bool, progress):
    """What the tail reads per batch (the front's outputs) and the teacher's, cached for the
    ``wanted`` batches or streamed (``cfg.front``)."""
    ids = [batches.ids[j] for j in wanted]
    stream = choose_front(cfg.front, lm, ids, 1 + (teacher_lm is not None))
    with amp(str(next(lm.model.parameters()).device), autocast):  # the caches as the steps compute
        front = (StreamedFront(lm, batches.ids, first) if stream
                 else CachedFront(lm, batches.ids, first, wanted=wanted, progress=progress))
        teacher = None
        if teacher_lm is not None:
            teacher = teacher_outputs(teacher_lm, batches, stream=stream, wanted=wanted, progress=progress)
    return front, teacher


def _train(lm: LoadedModel, cfg: FinetuneConfig, loss: TailLoss, params: dict, items, steps: int, start: int,
           opt_state, on_step, parallel: Parallel, progress) -> TrainStats:
    """The training loop over the tail, lm_head at its own rate if asked."""
    for m in lm.model.modules():
        m.train(False)
    for block in loss.tail:
        block.train()
    head_w = lm.model.get_submodule(lm.arch.lm_head).weight
    scales = [m.scale_gain for m in lm.model.modules() if isinstance(m, QuantLinear) and hasattr(m, "scale_gain")]
    special = {id(head_w)} | {id(p) for p in scales}
    groups = [{"params": [p for p in params.values() if id(p) not in special], "lr": cfg.lr}]
    if any(p is head_w for p in params.values()):
        groups.append({"params": [head_w], "lr": cfg.head_lr or cfg.lr})
    if scales:
        groups.append({"params": scales, "lr": cfg.scale_lr})
    try:
        with heap_kept():  # each step's large tensors reuse warm pages
            return train_loop(groups, items, loss, steps=steps, lr=cfg.lr, grad_accum=cfg.grad_accum,
                              tokens_of=lambda item: int(loss.batches.real[item[1]].sum()),
                              start_step=start, opt_state=opt_state, on_step=on_step,
                              sync=parallel.reduce if parallel.world > 1 else None, world=parallel.world,
                              progress=progress if parallel.is_main else None)
    finally:
        for block in loss.tail:
            block.eval()

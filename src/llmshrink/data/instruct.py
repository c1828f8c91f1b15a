"""Instruction data: JSONL in the common formats, rendered with a template, response-only labels.

Formats (one JSON object per line):

- ``alpaca``: ``instruction``, optional ``input`` (and ``context``), ``output``;
- ``sharegpt`` / ``vicuna``: ``conversations``, a list of turns ``{"from": "human"|"gpt"|"system",
  "value": ...}`` (``{"role": "user"|"assistant"|"system", "content": ...}`` is read too);
- ``text``: a plain corpus (any ``load_corpus`` spec, or JSONL with a ``text`` field) for
  language-model loss.

A conversation is rendered by a prompt template into segments, prompt or response. Tokens of the
prompt get the label -100 (no loss); the responses, with the end-of-turn token, are learned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .corpora import read_jsonl
from .templates import Example, get_template

log = logging.getLogger(__name__)

FORMATS = ("text", "alpaca", "sharegpt", "vicuna")
IGNORE = -100
_USER = {"human": "user", "user": "user"}
_ASSISTANT = {"gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass
class Conversation:
    turns: list[tuple[Example, str]]  # (user's message, assistant's reply), in order
    system: str = ""
    where: str = ""  # file:line, for messages


@dataclass
class Tokenized:
    ids: list[int]
    labels: list[int] = field(default_factory=list)  # IGNORE where no loss

    @property
    def n_response(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _alpaca(obj: dict, where: str) -> Conversation:
    missing = [k for k in ("instruction", "output") if not isinstance(obj.get(k), str)]
    if missing:
        raise UserError(f"{where}: lacks the field {missing[0]!r} of the alpaca format "
                        "(instruction, optional input, output)")
    ex = Example(obj["instruction"], str(obj.get("input") or ""), str(obj.get("context") or ""))
    return Conversation([(ex, obj["output"])], where=where)


def _sharegpt(obj: dict, where: str) -> Conversation:
    turns = obj.get("conversations", obj.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: lacks the field 'conversations' (a list of turns) of the sharegpt/vicuna format")
    system, pairs, pending = "", [], None
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}: conversations[{k}] is not an object with 'from' and 'value'")
        role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if not isinstance(role, str) or not isinstance(text, str):
            raise UserError(f"{where}: conversations[{k}] lacks 'from' and 'value' (or 'role' and 'content')")
        if role == "system" and k == 0:
            system = text
        elif _USER.get(role) == "user" and pending is None:
            pending = Example(text)
        elif _ASSISTANT.get(role) == "assistant" and pending is not None:
            pairs.append((pending, text))
            pending = None
        else:
            raise UserError(f"{where}: conversations[{k}] from {role!r} is out of turn: "
                            "turns must alternate human, gpt, human, gpt, ...")
    if not pairs:
        raise UserError(f"{where}: the conversation has no answered turn (human then gpt)")
    return Conversation(pairs, system=system, where=where)


PARSERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "vicuna": _sharegpt}


def read_conversations(path: str | Path, fmt: str, *, skip_bad_lines: bool = False) -> list[Conversation]:
    """Every conversation of a JSONL file; a bad line stops with ``file:line`` unless skipped."""
    if fmt not in PARSERS:
        raise UserError(f"format {fmt!r} is not an instruction format: use one of {', '.join(PARSERS)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"instruction data {path} does not exist: give a JSONL file")
    convs, bad = [], 0
    for lineno, obj in read_jsonl(path, skip_bad_lines=skip_bad_lines, hint="pass --skip-bad-lines to skip it"):
        try:
            convs.append(PARSERS[fmt](obj, f"{path}:{lineno}"))
        except UserError as e:
            if not skip_bad_lines:
                raise UserError(f"{e} (or pass --skip-bad-lines to skip such lines)") from None
            bad += 1
            log.warning("skipped %s", e)
    if bad:
        log.warning("%s: skipped %d bad line(s)", path, bad)
    if not convs:
        raise UserError(f"{path} holds no {fmt} examples: the dataset is empty")
    return convs


def segments(conv: Conversation, template_name: str, tokenizer) -> list[tuple[str, bool]]:
    """The conversation as text segments, ``(text, is_response)``, in the template's layout."""
    template = get_template(template_name)
    if template_name == "chat":
        template.prompt(Example("x"), tokenizer)  # a tokenizer without a chat template fails here
        messages = [{"role": "system", "content": conv.system}] if conv.system else []
        out: list[tuple[str, bool]] = []
        done = ""
        for ex, reply in conv.turns:
            messages.append({"role": "user", "content": "\n\n".join(p for p in (ex.instruction, ex.input,
                                                                                   ex.context) if p)})
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            messages.append({"role": "assistant", "content": reply})
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError("the tokenizer's chat template does not render a conversation incrementally: "
                                "use --template alpaca or vicuna")
            out += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return out
    eos = tokenizer.eos_token or ""
    sep = {"vicuna": " ", "none": "\n"}.get(template_name, "")
    out = []
    for k, (ex, reply) in enumerate(conv.turns):
        prompt = template.prompt(ex, tokenizer) if k == 0 else template.followup(ex, tokenizer)
        if k == 0 and conv.system:
            prompt = conv.system + "\n\n" + prompt
        out += [(prompt, False), (sep + reply + eos, True)]
    return out


def tokenize_conversation(conv: Conversation, template_name: str, tokenizer, max_len: int) -> Tokenized:
    """Token ids with labels on the response tokens only, cut to ``max_len``."""
    from .windows import bos_id

    bos = bos_id(tokenizer)
    ids: list[int] = [bos] if bos is not None else []
    labels: list[int] = [IGNORE] * len(ids)
    for text, is_response in segments(conv, template_name, tokenizer):
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if is_response else [IGNORE] * len(part)
    return Tokenized(ids[:max_len], labels[:max_len])


def tokenize_dataset(convs: list[Conversation], template_name: str, tokenizer, max_len: int) -> list[Tokenized]:
    out, dropped = [], 0
    for conv in convs:
        t = tokenize_conversation(conv, template_name, tokenizer, max_len)
        if t.n_response == 0 or len(t.ids) < 2:
            dropped += 1
            continue
        out.append(t)
    if dropped:
        log.warning("%d example(s) have no response token within %d tokens and are left out", dropped, max_len)
    if not out:
        raise UserError(f"no example keeps a response within {max_len} tokens: raise --seqlen")
    return out


def collate(examples: list[Tokenized], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``ids`` and ``labels`` (padding: IGNORE), and the mask of real tokens. With
    causal attention, padding on the right never changes the real tokens' outputs, so no
    attention mask is needed."""
    n = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    real = torch.zeros((len(examples), n), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        real[i, : len(e.ids)] = True
    return ids, labels, real

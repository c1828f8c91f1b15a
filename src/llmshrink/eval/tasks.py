"""Built-in zero-shot tasks made deterministically from any corpus, scored by lm-evaluation-harness.

- ``lastword`` (LAMBADA-style): a passage of ``context_words`` words; predict the word that follows.
  lm-eval ``loglikelihood`` task, so ``acc`` is lm-eval's greedy exact match of the whole target
  word (every target token is the argmax), and it also reports the target's perplexity.
- ``cloze4`` (HellaSwag-style): a passage and four candidate continuations of ``choice_words``
  words: the true one and three taken from other passages of the corpus. lm-eval
  ``multiple_choice`` task: ``acc`` (sum of log-likelihoods) and ``acc_norm`` (log-likelihood
  divided by the continuation's length in bytes, HellaSwag's length normalisation).

Items come from non-overlapping spans of each document's whitespace-separated words, then are
shuffled with a fixed seed, so ``--limit N`` takes a sample spread over the corpus. The gold
position in ``cloze4`` cycles 0, 1, 2, 3 over the shuffled items: a model that cannot tell the
choices apart scores exactly chance on a multiple of 4 items. Same corpus and parameters, same
items, byte for byte; the JSONL files are cached by a hash of both and handed to lm-eval as a
local ``json`` dataset, so no hub access is needed.

Your own items run the same way: ``KIND=FILE.jsonl`` (e.g. ``cloze4=my_items.jsonl``) takes a
JSONL file in a built-in task's item format (``lastword``: ``context``, ``target``; ``cloze4``:
``context``, ``choices``, ``label``), checked line by line before lm-eval sees it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.corpora import Corpus
from ..errors import UserError

_STRIP = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class TaskParams:
    context_words: int = 48
    choice_words: int = 16  # cloze4 only
    seed: int = 1234


def _words(corpus: Corpus) -> list[list[str]]:
    return [d.text.split() for d in corpus.documents]


def _shuffled(items: list[dict], seed: int) -> list[dict]:
    random.Random(seed).shuffle(items)
    return items


def build_lastword(corpus: Corpus, p: TaskParams) -> list[dict]:
    """One item per span of ``context_words + 1`` words whose last word is alphabetic (>= 3 letters).

    The target is that word without surrounding punctuation ("lord," -> "lord").
    """
    items = []
    span = p.context_words + 1
    for words in _words(corpus):
        for i in range(0, len(words) - span + 1, span):
            target = _STRIP.sub("", words[i + span - 1])
            if len(target) >= 3 and target.isalpha():
                items.append({"context": " ".join(words[i:i + span - 1]), "target": target})
    return _shuffled(items, p.seed)


def build_cloze4(corpus: Corpus, p: TaskParams) -> list[dict]:
    """One item per span of ``context_words + choice_words`` words; distractors from other items."""
    spans = []
    span = p.context_words + p.choice_words
    for words in _words(corpus):
        for i in range(0, len(words) - span + 1, span):
            spans.append((" ".join(words[i:i + p.context_words]), " ".join(words[i + p.context_words:i + span])))
    if len(spans) < 4:
        raise UserError(f"{corpus.name} is too short for cloze4: {len(spans)} passages of {span} words, "
                        "need at least 4; give a longer corpus with --data")
    if len({s[1] for s in spans}) < 4:
        raise UserError("cloze4 needs at least 4 different continuations in the corpus")
    rng = random.Random(p.seed)
    order = list(range(len(spans)))
    rng.shuffle(order)
    items = []
    for n, k in enumerate(order):
        context, true = spans[k]
        choices = [spans[j][1] for j in _sample_others(rng, spans, k, true)]
        label = n % 4
        choices.insert(label, true)
        items.append({"context": context, "choices": choices, "label": label})
    return items


def _sample_others(rng: random.Random, spans: list, k: int, true: str) -> list[int]:
    """Three other passages whose continuation differs from the true one."""
    picked: list[int] = []
    while len(picked) < 3:
        j = rng.randrange(len(spans))
        if j != k and j not in picked and spans[j][1] != true:
            picked.append(j)
    return picked


def _metric(name: str, aggregation: str = "mean", higher_is_better: bool = True) -> dict:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


def _local_task(name: str, path: Path, output_type: str, metrics: list[dict], **docs: str) -> dict:
    """An lm-eval task config over a local JSONL file (the ``json`` dataset builder: no hub)."""
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "output_type": output_type, **docs, "metric_list": metrics,
            "metadata": {"version": 1.0}}


def _lastword_config(name: str, path: Path) -> dict:
    return _local_task(name, path, "loglikelihood",
                       [_metric("perplexity", "perplexity", False), _metric("acc")],
                       doc_to_text="{{context}}", doc_to_target="{{' ' + target}}")


def _cloze4_config(name: str, path: Path) -> dict:
    return _local_task(name, path, "multiple_choice", [_metric("acc"), _metric("acc_norm")],
                       doc_to_text="{{context}}", doc_to_choice="{{choices}}", doc_to_target="{{label}}")


@dataclass(frozen=True)
class BuiltinTask:
    build: Callable[[Corpus, TaskParams], list[dict]]
    config: Callable[[str, Path], dict]
    main_metric: str
    description: str
    fields: dict[str, type]  # an item's fields and their JSON types


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    "lastword": BuiltinTask(build_lastword, _lastword_config, "acc",
                            "LAMBADA-style: the word that follows a passage, greedy exact match",
                            {"context": str, "target": str}),
    "cloze4": BuiltinTask(build_cloze4, _cloze4_config, "acc_norm",
                          "HellaSwag-style: the true continuation among 4, length-normalised log-likelihood",
                          {"context": str, "choices": list, "label": int}),
}


def write_task_file(name: str, corpus: Corpus, params: TaskParams, cache: Path) -> tuple[Path, int]:
    """Build a built-in task's items and write them as JSONL under ``cache`` (reused when present)."""
    task = BUILTIN_TASKS[name]
    key = json.dumps({"task": name, "corpus": corpus.name, "chars": corpus.chars, **asdict(params)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache / f"{name}-{digest}.jsonl"
    if path.is_file():
        return path, sum(1 for _ in path.open())
    items = task.build(corpus, params)
    if not items:
        raise UserError(f"{corpus.name} gives no {name} items: the corpus is shorter than one passage "
                        f"of {params.context_words} words")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path, len(items)


def check_task_file(kind: str, path: Path) -> int:
    """Check a JSONL file of ``kind`` items (every line, every field); returns the item count."""
    fields = BUILTIN_TASKS[kind].fields
    need = ", ".join(fields)
    n = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read task file {path} ({exc}): give a UTF-8 JSONL file") from exc
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: not valid JSON ({exc.msg}); each line is one {kind} item") from None
        if not isinstance(item, dict):
            raise UserError(f"{path}:{i}: a {kind} item is a JSON object with {need}")
        for name, typ in fields.items():
            if name not in item:
                raise UserError(f"{path}:{i}: missing field {name!r}: a {kind} item has {need}")
            if not isinstance(item[name], typ) or isinstance(item[name], bool):
                raise UserError(f"{path}:{i}: field {name!r} must be a JSON {typ.__name__.replace('str', 'string')}")
        if kind == "cloze4":
            choices = item["choices"]
            if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise UserError(f"{path}:{i}: 'choices' must hold at least 2 strings")
            if not 0 <= item["label"] < len(choices):
                raise UserError(f"{path}:{i}: 'label' {item['label']} is not an index into its {len(choices)} choices")
        n += 1
    if n == 0:
        raise UserError(f"task file {path} holds no items")
    return n

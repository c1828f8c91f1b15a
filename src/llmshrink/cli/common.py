"""What every command shares: the registry of commands, flags generated from configs, output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..config import Part, add_arguments, from_args
from ..errors import UserError


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register ``llmshrink NAME``: ``add_args`` declares its arguments, the decorated function runs it."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(help, add_args, run)
        return run

    return register


def progress():
    from tqdm.auto import tqdm

    return partial(tqdm, file=sys.stderr, dynamic_ncols=True, leave=False)


def load_part() -> Part:
    from ..models.load import LoadConfig

    return Part("load", LoadConfig)


def config_args(p: argparse.ArgumentParser, parts: Sequence[Part], *, model: bool = True) -> None:
    """The parts' flags, and (``model``) the flags of loading a model."""
    add_arguments(p, [*parts, load_part()] if model else parts)


def config(args: argparse.Namespace, part: Part, **extra):
    return from_args(args, part, **extra)


def value(args: argparse.Namespace, part: Part, name: str):
    """One field's value as parsed from the command line."""
    return getattr(args, f"{part.key}__{name}")


def load(args: argparse.Namespace, **kw):
    """The command's MODEL, loaded as its --device/--dtype/--trust-remote-code say."""
    return config(args, load_part()).load(args.model, **kw)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_json(out: str | None, name: str, rec: dict) -> None:
    """``OUT/name`` (the folder is created; the file is written atomically) for ``llmshrink report``."""
    if out is None:
        return
    from ..paths import atomic_file, output_path

    folder = output_path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: give a folder to write {name} into")
    folder.mkdir(exist_ok=True)
    with atomic_file(Path(folder) / name) as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")

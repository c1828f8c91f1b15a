"""What every command shares: the registry of commands, flags generated from configs, output."""

from __future__ import annotations

import argparse
import json
import os
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


def add_out(p: argparse.ArgumentParser, help: str, *, required: bool = True) -> None:
    """``--out`` and ``--overwrite``: an existing output is replaced only when asked."""
    p.add_argument("--out", required=required, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse it)")


def claim(args: argparse.Namespace, *, folder: bool = True, resumes: bool = False) -> Path:
    """Check the command's --out against its MODEL before the model is loaded (see
    :func:`llmshrink.paths.claim_output`)."""
    from ..paths import claim_output, input_bytes

    return claim_output(args.out, inputs=(args.model,), overwrite=args.overwrite, folder=folder,
                        need_bytes=input_bytes(args.model), resumes=resumes)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_json_out(out: str | None) -> Path | None:
    """The folder a command's JSON record goes into, checked before the command's work."""
    if out is None:
        return None
    from ..paths import output_path

    folder = output_path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: give a folder to write the record into")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the folder {folder} cannot be written: choose another --out")
    return folder


def write_json(out: str | None, name: str, rec: dict) -> None:
    """``OUT/name`` (the folder is created; the file is written atomically) for ``llmshrink report``."""
    if out is None:
        return
    from ..paths import atomic_file

    folder = check_json_out(out)
    folder.mkdir(exist_ok=True)
    with atomic_file(Path(folder) / name) as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")

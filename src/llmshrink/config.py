"""The base of every typed configuration, and the one bridge from configs to the command line and
to YAML recipes.

Each package keeps its own configs beside the code they configure (``quant.config.QuantConfig``,
``prune.config.PruneConfig``, ...). A config is a dataclass on :class:`Config`, validated in
``__post_init__`` through :meth:`Config.check`, which names the field at fault. Command-line flags
and recipe fields are generated from the dataclass fields and their ``metadata``:

- ``help``: the flag's help text;
- ``choices``: allowed values (checked by argparse on the command line, by validation everywhere);
- ``flag``: the flag's name when it is not the field's (``--calib`` for ``CalibConfig.data``);
- ``negative``: for a bool, the flag that sets it false (``--asym`` for ``sym``; default ``--no-X``);
- ``cli: False``: not a flag (still a recipe field).

So a field added to a config appears in ``--help`` and is accepted (and validated) in recipes with
no other edit. A bad value is reported with the flag it came from on the command line
(``--group-size: must be ...``) and its YAML path in a recipe (``stages[0].quantize.group_size:
must be ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from .errors import UserError


class FieldError(UserError):
    """A bad value of one (or more) config fields; :meth:`Config.build` words it for where the value came from."""

    def __init__(self, names: str | tuple[str, ...], message: str, cls: type | None = None) -> None:
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.detail = " ".join(str(message).split())
        self.cls = cls
        super().__init__(f"{'/'.join(self.names)}: {self.detail}")


@dataclass
class Config:
    """A validated settings dataclass: ``to_dict``/``from_dict`` and per-field errors."""

    kind: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Self:
        """Build from a mapping (a recipe's); unknown fields and bad values name ``where.field``."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{where or cls.kind} must be a mapping of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            prefix = f"{where}." if where else ""
            raise UserError(f"unknown field {prefix}{unknown[0]} in {cls.kind} settings: known fields are "
                            f"{', '.join(sorted(names))}")
        return cls.build(data, lambda name: f"{where}.{name}" if where else name)

    @classmethod
    def build(cls, values: dict[str, Any], label) -> Self:
        """``cls(**values)``, with a field error worded by ``label(field name)``."""
        try:
            return cls(**values)
        except FieldError as exc:
            raise UserError(f"{'/'.join(label(n) for n in exc.names)}: {exc.detail}") from None
        except TypeError as exc:  # a value of the wrong kind reaching a comparison
            raise UserError(f"{cls.kind} settings: {exc}") from None

    def check(self, ok: bool, names: str | tuple[str, ...], message: str) -> None:
        """Raise a :class:`FieldError` for ``names`` unless ``ok``."""
        if not ok:
            raise FieldError(names, message, type(self))

    def positive(self, *names: str, allow_none: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None and allow_none:
                continue
            whole = isinstance(value, int) and not isinstance(value, bool)
            self.check(whole and value >= 1, name, f"must be a positive whole number, got {value!r}")

    def one_of(self, name: str, choices: Iterable[str], what: str | None = None) -> None:
        choices = tuple(choices)
        value = getattr(self, name)
        self.check(value in choices, name, f"unknown {what or 'value'} {value!r}: use one of {', '.join(choices)}")


# ---------------------------------------------------------------- the CLI bridge


def _base_type(tp: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _base_type(inner[0])[0], type(None) in args
    if origin is tuple:
        return tuple, False
    return tp, False


def _none_or(parse):
    return lambda s: None if s.lower() == "none" else parse(s)


def _tuple(s: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in s.split(",") if t.strip())


@dataclass(frozen=True)
class Part:
    """One config of a command or recipe stage: its flags get ``prefix``; in a recipe, a ``nested``
    part's fields sit under its own key (``calib: {...}``), a plain part's at the stage's top level."""

    key: str
    cls: type[Config]
    prefix: str = ""
    nested: bool = False
    skip: tuple[str, ...] = ()

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.skip]

    def flag(self, f: dataclasses.Field) -> str:
        return "--" + f.metadata.get("flag", self.prefix + f.name).replace("_", "-")

    def dest(self, f: dataclasses.Field) -> str:
        return f"{self.key}__{f.name}"


def add_arguments(parser: argparse.ArgumentParser, parts: Sequence[Part]) -> None:
    """One flag per field of each part (defaults, help and choices from the dataclass)."""
    hints_of = {p.key: typing.get_type_hints(p.cls) for p in parts}
    for part in parts:
        for f in part.fields():
            if not f.metadata.get("cli", True):
                continue
            tp, optional = _base_type(hints_of[part.key][f.name])
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            help_text = f.metadata.get("help", "")
            kw: dict[str, Any] = {"dest": part.dest(f), "default": default}
            if tp is bool:
                neg = f.metadata.get("negative")
                if neg:
                    group = parser.add_mutually_exclusive_group()
                    on = part.flag(f)
                    group.add_argument(on, action="store_true", **kw,
                                       help=f"{help_text} (default: {on if default else '--' + neg})")
                    group.add_argument(f"--{neg}", action="store_false", dest=kw["dest"], help=f"the opposite of {on}")
                    continue
                parser.add_argument(part.flag(f), action=argparse.BooleanOptionalAction, **kw,
                                    help=f"{help_text} (default: {'on' if default else 'off'})")
                continue
            parse = f.metadata.get("parse") or {int: int, float: float, tuple: _tuple}.get(tp, str)
            # "none" means None for numbers; a string keeps it (``--eval-data none`` is a value)
            kw["type"] = _none_or(parse) if optional and parse in (int, float) else parse
            kw["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kw["choices"] = list(f.metadata["choices"])
                kw["metavar"] = "|".join(f.metadata["choices"])
            shown = ",".join(default) if isinstance(default, tuple) else "none" if default is None else default
            parser.add_argument(part.flag(f), help=f"{help_text} (default: {shown})" if help_text else
                                f"(default: {shown})", **kw)


def to_flags(parts: Sequence[Part], configs: dict[str, Config]) -> list[str]:
    """The flags that give ``configs`` (by part key) on the command line: one for each field whose
    value is not its default (fields that are not flags are left out)."""
    out: list[str] = []
    for part in parts:
        cfg = configs.get(part.key)
        if cfg is None:
            continue
        for f in part.fields():
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            value = getattr(cfg, f.name)
            if not f.metadata.get("cli", True) or value == default:
                continue
            if isinstance(value, bool):
                out.append(part.flag(f) if value else "--" + f.metadata.get("negative", "no-" + part.flag(f)[2:]))
            else:
                shown = ",".join(value) if isinstance(value, tuple) else "none" if value is None else str(value)
                out += [part.flag(f), shown]
    return out


def command_line(command: str, model: str, out: Any, parts: Sequence[Part], configs: dict[str, Config]) -> str:
    """The ``llmshrink`` command that runs a job with these ``configs``: what a record keeps so that
    its model card can say how to make the folder again."""
    import shlex

    return shlex.join(["llmshrink", command, str(model), "--out", Path(out).name, *to_flags(parts, configs)])


def from_args(args: argparse.Namespace, part: Part, **extra: Any) -> Config:
    """The part's config from parsed flags; a bad value names its flag."""
    values = {f.name: getattr(args, part.dest(f)) for f in part.fields()
              if f.metadata.get("cli", True) and hasattr(args, part.dest(f))}
    values.update(extra)
    by_name = {f.name: f for f in dataclasses.fields(part.cls)}
    return part.cls.build(values, lambda n: part.flag(by_name[n]) if n in by_name else n)


def from_mapping(data: Any, parts: Sequence[Part], where: str) -> dict[str, Config]:
    """The parts' configs from one recipe stage's mapping (plain parts share its top level)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of settings, got {type(data).__name__}")
    nested = {p.key for p in parts if p.nested}
    top_fields = {p.key: {f.name for f in p.fields()} for p in parts if not p.nested}
    known = set(nested).union(*top_fields.values())
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown field {where}.{unknown[0]}: known fields are {', '.join(sorted(known))}")
    out = {}
    for p in parts:
        if p.nested:
            out[p.key] = p.cls.from_dict(data.get(p.key), f"{where}.{p.key}")
        else:
            mine = {k: v for k, v in data.items() if k in top_fields[p.key]}
            out[p.key] = p.cls.build(mine, lambda n: f"{where}.{n}")
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_difference(old: Any, new: Any, *, limit: int = 3) -> str:
    """The settings that differ between two (nested) records, as ``key: old -> new`` (at most
    ``limit`` of them): what a refused resume names."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "(none)") != b.get(k, "(none)")]
    text = "; ".join(f"{k or 'settings'}: {a.get(k, '(none)')!r} -> {b.get(k, '(none)')!r}" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


SAVE_DTYPES = ("auto", "float16", "bfloat16", "float32")


def save_dtype_field():
    """The ``save_dtype`` setting of every job that writes a model folder."""
    return dataclasses.field(default="auto", metadata={
        "help": "dtype of the weights written in full precision: auto (the source's if 16-bit, else float16 "
                "beside packed GPTQ layers and bfloat16 in plain models), float16, bfloat16 or float32",
        "choices": SAVE_DTYPES})

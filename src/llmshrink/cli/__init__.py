"""``llmshrink`` command line: a thin layer over the jobs and the API.

Bad input ends in one line on stderr naming the fix and exit status 2; ``--debug`` shows the
traceback instead. Progress bars and logs go to stderr, so ``--json`` output on stdout stays clean.
Each command's flags are generated from the configs of its job (:mod:`llmshrink.config`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from .common import COMMANDS


class Parser(argparse.ArgumentParser):
    """argparse with llmshrink's error shape: one line naming the fix, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"llmshrink: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="llmshrink", description="Make LLaMA-family models small and fast, and measure what it cost.")
    parser.add_argument("--version", action="version", version=f"llmshrink {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    from . import compress, evaluate, tune  # noqa: F401  (register their commands)

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        p.set_defaults(run=cmd.run)
    return parser


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("llmshrink: %(message)s"))
    root = logging.getLogger("llmshrink")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if not debug:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # its per-load bars; ours cover the long work
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag (already reported in one line)
        return int(exc.code or 0)
    _setup_logging(args.debug, args.quiet)
    try:
        return args.run(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"llmshrink: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llmshrink: interrupted", file=sys.stderr)
        return 130

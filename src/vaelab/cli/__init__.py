"""The `vaelab` command line: subcommands, `main(argv=None)`, nothing parsed at import time.

Each subcommand lives in its own module with `register(subparsers)`, which adds a parser and
sets `func`; `COMMAND_MODULES` lists them. A `VaelabError` (a user mistake) prints one line
`vaelab: error: ...` and exits non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

from vaelab import __version__
from vaelab.errors import VaelabError

COMMAND_MODULES = (
    "vaelab.cli.train_cmd",
    "vaelab.cli.latent_cmd",
    "vaelab.cli.report_cmd",
    "vaelab.cli.eval_cmd",
    "vaelab.cli.anomaly_cmd",
    "vaelab.cli.disentanglement_cmd",
    "vaelab.cli.explore_cmd",
    "vaelab.cli.export_cmd",
    "vaelab.cli.import_cmd",
    "vaelab.cli.sampler_cmd",
    "vaelab.cli.translate_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The `vaelab` parser with every subcommand of `COMMAND_MODULES` registered."""
    parser = _Parser(
        prog="vaelab", description="Variational autoencoders on images: train, evaluate, explore.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `vaelab` with `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2), already printed
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except VaelabError as exc:
        print(f"vaelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vaelab: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)

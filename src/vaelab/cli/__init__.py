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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaelab", description="Variational autoencoders on images: train, evaluate, explore.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

"""`vaelab report RUN`: one self-contained HTML page about a run (figures inlined, no network)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("report", help="write one self-contained HTML report of a run",
                       description="Write RUN/report.html (or --out FILE): config, metrics, loss curves, every "
                                   "latent-space figure and eval.json when present, all in one file that opens "
                                   "from disk with no network.")
    p.add_argument("run", metavar="RUN", help="a run folder written by `vaelab train`")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default RUN/report.html)")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is now, if it moved")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Carry out `vaelab report` with the parsed `args`; return the exit code."""
    from vaelab.report import write_report

    out = write_report(args.run, args.out, data_dir=args.data_dir, device=args.device, seed=args.seed)
    print(f"wrote {out}")
    return 0

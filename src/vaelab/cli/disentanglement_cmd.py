"""`vaelab disentanglement RUN`: MIG, FactorVAE score, DCI and SAP of a run on a dataset with factors.

Writes RUN/disentanglement.json and the traversal figures (RUN/figures/disentanglement.png and
RUN/figures/disentanglement/traverse-z<d>.png), holding the run's one-writer lock. The metrics and
their protocol are in `vaelab.disentanglement`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from vaelab.errors import ConfigError, DataError, RunError

MAX_IMAGES = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("disentanglement", help="disentanglement metrics of a run on a dataset with factor labels",
                       description="Compute MIG, the FactorVAE score, DCI and SAP of RUN's posterior means against "
                                   "the dataset's factors of variation (--dataset shapes), write "
                                   "RUN/disentanglement.json and draw a traversal figure per latent dimension "
                                   "labelled with the factor it captures best.")
    p.add_argument("run", metavar="RUN", help="a run folder written by vaelab train on a dataset with factors")
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="the split the images come from (default train)")
    p.add_argument("--images", type=int, default=15_000, metavar="N",
                   help="size of the seeded random pool of images (default 15000: MIG and the FactorVAE score on "
                        "all of it, DCI and SAP fit on 2/3 and score on 1/3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pool, the votes and the forests (default 0)")
    p.add_argument("--no-figures", action="store_true", help="only the metrics, no traversal figures")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_disentanglement)


def run_disentanglement(args: argparse.Namespace) -> int:
    """Carry out `vaelab disentanglement` with the parsed `args`; return the exit code."""
    if not 1 <= args.images <= MAX_IMAGES:
        raise ConfigError(f"--images must be between 1 and {MAX_IMAGES}, got {args.images}")
    if not 0 <= args.seed < 2 ** 63:
        raise ConfigError(f"--seed must be in 0..2**63-1, got {args.seed}")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")

    import vaelab
    from vaelab.data import load_data
    from vaelab.disentanglement.evaluate import DISENTANGLEMENT_FILE, Protocol, evaluate
    from vaelab.runlock import file_stamp, run_lock
    from vaelab.training import pick_device

    device = pick_device(args.device)
    weights = run_dir / "model.safetensors"
    weights_before = file_stamp(weights)
    model = vaelab.load(run_dir, device=device)
    cfg = model.run_config
    data = load_data(cfg.data)
    if data.factors is None:
        raise DataError(f"{run_dir} was trained on --dataset {cfg.data.dataset}, which has no factor labels; the "
                        f"disentanglement metrics need a dataset generated from known factors (--dataset shapes)")
    protocol = Protocol(split=args.split, images=args.images, seed=args.seed)
    # Every input has been checked: take the run's one-writer lock for the evaluation and its files.
    with run_lock(run_dir, "vaelab disentanglement"):
        if file_stamp(weights) != weights_before:  # a run finished between load and lock
            model = vaelab.load(run_dir, device=device)
        started = time.perf_counter()
        result, chosen, codes = evaluate(model, data, protocol)
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["run"] = str(run_dir)
        result["vaelab_version"] = vaelab.__version__
        try:
            if not args.no_figures:
                from vaelab.disentanglement.figures import traversal_figures

                traversal_figures(model, codes, result["captures"], run_dir / "figures", chosen.labels)
            from vaelab.checkpoint import atomic_write_text

            atomic_write_text(run_dir / DISENTANGLEMENT_FILE, json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise RunError(f"cannot write into {run_dir}: {exc.strerror or exc}") from None
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    if not args.json:
        print(f"wrote {run_dir / DISENTANGLEMENT_FILE}")
    return 0


def format_result(r: dict[str, Any]) -> str:
    """The table `vaelab disentanglement` prints."""
    m = r["metrics"]
    rows = [
        ("mig", f"{m['mig']:.4f}"),
        ("factor_vae", f"{m['factor_vae']:.4f} (chance about {1 / len(r['factors']):.2f})"),
        ("dci", f"disentanglement {m['dci_disentanglement']:.4f}, completeness {m['dci_completeness']:.4f}, "
                f"informativeness {m['dci_informativeness']:.4f}"),
        ("sap", f"{m['sap']:.4f}"),
    ]
    captures = ", ".join(f"z[{c['dim']}] {c['factor'] or ('-' if c['active'] else 'unused')}" for c in r["captures"])
    header = (f"{r['protocol']['split']} split: {r['images']} images, factors {', '.join(r['factors'])}, "
              f"{r['latent_dim']} latent dims")
    lines = [header, *(f"  {label:<12}{value}" for label, value in rows), f"  {'captures':<12}{captures}",
             f"  {'time':<12}{r['seconds']:.1f} s"]
    return "\n".join(lines)

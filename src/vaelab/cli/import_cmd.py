"""`vaelab import-weights RUN FILE.pt`: bring a PyTorch state dict made elsewhere into a run folder.

The file is read only through `torch.load(weights_only=True)` (see
`vaelab.checkpoint.import_torch_weights`): tensors and plain containers, never arbitrary objects,
so a malicious pickle is refused before any of its code can run. The tensors must fit the model
described by `RUN/config.json` exactly; they are then written as `RUN/model.safetensors`
(atomically), after which the run loads with `vaelab.load` like any trained run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.errors import RunError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser(
        "import-weights", help="import a .pt/.pth state dict into a run folder (weights only, no pickle code)",
        description="Read FILE with torch.load(weights_only=True), check it against RUN/config.json and write "
                    "RUN/model.safetensors. Refuses files holding anything but tensors.")
    p.add_argument("run", metavar="RUN", help="run folder whose config.json describes the model")
    p.add_argument("file", metavar="FILE", help="a .pt / .pth PyTorch state dict")
    p.add_argument("--force", action="store_true", help="replace an existing RUN/model.safetensors")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    """Carry out `vaelab import-weights` with the parsed `args`; return the exit code."""
    from vaelab.checkpoint import WEIGHTS_FILE, import_torch_weights, load_state_into, save_weights
    from vaelab.config import RunConfig
    from vaelab.models import build_model
    from vaelab.runlock import run_lock
    from vaelab.runs import CONFIG_FILE

    run_dir = Path(args.run)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir} is not a vaelab run folder (no {CONFIG_FILE}); train or create one first")
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    if cfg.model.image_shape is None:
        raise RunError(f"{run_dir / CONFIG_FILE} has no model.image_shape; it cannot describe a trained model")
    target = run_dir / WEIGHTS_FILE
    if target.exists() and not args.force:
        raise RunError(f"{target} already exists; use --force to replace it")
    tensors = import_torch_weights(args.file)
    model = build_model(cfg.model)
    load_state_into(model, tensors, args.file)
    with run_lock(run_dir, "vaelab import-weights"):  # one writer per run folder; every check has passed
        if target.exists() and not args.force:  # written meanwhile by a run that just finished
            raise RunError(f"{target} already exists; use --force to replace it")
        save_weights(model, target)
    print(f"imported {len(tensors)} tensors from {args.file} into {target}")
    return 0

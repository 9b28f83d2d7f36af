"""`vaelab sample | reconstruct | interpolate | traverse | manifold | edit`: latent-space figures.

Each command loads RUN, resolves its inputs (an integer is an index into --split of the run's
dataset, anything else an image file converted to the model's size and channels), calls one
function of `vaelab.latent`, and draws the resulting table to RUN/figures/<command>.png or --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from vaelab.cli.options import int_list
from vaelab.errors import ConfigError, DataError, RunError

if TYPE_CHECKING:
    import torch

CLASS_MEAN_IMAGES = 10_000  # training images averaged per attribute direction (a seeded subset)
DEFAULT_TRAVERSE_ROWS = 10


def _inference_mode(fn):
    """`torch.inference_mode()` around fn, importing torch at the first call, not when the CLI
    starts (`vaelab --help` stays light)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)
    return wrapper


class RunContext:
    """A loaded run plus its dataset (loaded on first use): what the commands resolve inputs against."""

    def __init__(self, args: argparse.Namespace) -> None:
        from vaelab.models import require_family
        from vaelab.runs import load
        from vaelab.training import pick_device

        self.args = args
        self.run_dir = Path(args.run)
        self.model = load(self.run_dir, pick_device(args.device))
        require_family(self.model, "vae", f"vaelab {args.command}")
        self.cfg = self.model.run_config
        if getattr(args, "label", None) is not None and not self.model.conditional and args.command != "sample":
            raise ConfigError(f"--label is for conditional runs; {self.run_dir} was not trained with --conditional")

    @cached_property
    def data(self):
        from vaelab.data import load_data

        cfg = dataclasses.replace(self.cfg.data)
        if self.args.data_dir:  # the run's dataset moved: point at its new place
            if cfg.dataset == "npz":
                cfg.data_path = self.args.data_dir
            else:
                cfg.data_dir = self.args.data_dir
        try:
            return load_data(cfg)
        except DataError as exc:
            raise DataError(f"{exc} (this command needs the run's dataset; give its location with --data-dir)") \
                from None

    @cached_property
    def split(self):
        return self.data.split(self.args.split)

    @cached_property
    def kl_per_dim(self) -> torch.Tensor:
        """Average KL per latent dimension over the test split (D,)."""
        from vaelab.latent import encode_split

        return encode_split(self.model, self.data.test).kl_per_dim()

    def label(self, text: Optional[str], flag: str = "--label") -> Optional[int]:
        """A class index or class name -> class index."""
        if text is None:
            return None
        n = self.cfg.model.num_classes
        if re.fullmatch(r"\d+", text.strip()):
            index = int(text)
            if n and index >= n:
                raise ConfigError(f"{flag} {text}: the run's dataset has classes 0..{n - 1}")
            return index
        names = self.data.class_names
        if text not in names:
            known = ", ".join(names[:12]) + (" …" if len(names) > 12 else "") if names else "none: it is unlabelled"
            raise ConfigError(f"{flag} {text}: not a class of the run's dataset (classes: {known})")
        return names.index(text)

    def inputs(self, specs: list[str]) -> tuple[torch.Tensor, list[Optional[int]]]:
        """Dataset indices or image files -> float (N, C, H, W) and each input's label (or None)."""
        import torch

        from vaelab.data.batches import to_float
        from vaelab.latent import load_image_files

        images, labels = [], []
        file_label = self.label(self.args.label) if getattr(self.args, "label", None) is not None else None
        for spec in specs:
            if Path(spec).is_file():
                images.append(load_image_files(self.model, [spec])[0])
                labels.append(file_label)
            elif re.fullmatch(r"-?\d+", spec.strip()):
                index, split = int(spec), self.split
                if not 0 <= index < len(split):
                    raise DataError(f"index {index} is out of range: the {self.args.split} split has "
                                    f"{len(split)} images (0..{len(split) - 1})")
                images.append(to_float(split.images[index]))
                labels.append(None if split.labels is None else int(split.labels[index]))
            else:
                raise DataError(f"image file not found: {spec} (an input is an image file or an index into "
                                f"the {self.args.split} split)")
        return torch.stack(images), labels

    def condition(self, labels: list[Optional[int]]):
        """The labels to pass on: only a conditional model takes them."""
        return labels if self.model.conditional else [None] * len(labels)

    def write(self, table, name: str) -> int:
        from vaelab.plots import labelled_grid
        from vaelab.runlock import run_lock_for_output

        out = Path(self.args.out) if self.args.out else self.run_dir / "figures" / f"{name}.png"
        # Writing into the run folder (the default RUN/figures/) is writing: one writer per run.
        with run_lock_for_output(self.run_dir, out, f"vaelab {name}"):
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                labelled_grid(table.images, table.nrow, out, table.row_labels, table.col_labels, table.title)
            except OSError as exc:
                raise RunError(f"cannot write {out}: {exc.strerror or exc}") from None
        print(f"wrote {out}")
        return 0


# ---- the commands ---------------------------------------------------------------------------------


def run_sample(args: argparse.Namespace) -> int:
    """Carry out `vaelab sample` with the parsed `args`; return the exit code."""
    from vaelab.latent import sample_images

    ctx = RunContext(args)
    sampler = None
    if args.sampler == "gmm":
        from vaelab.samplers import load_sampler

        sampler = load_sampler(ctx.run_dir, ctx.model.latent_dim)
        if sampler is None:
            raise RunError(f"{ctx.run_dir} has no fitted sampler; fit one with vaelab fit-sampler {ctx.run_dir} "
                           "--gmm 10")
    table = sample_images(ctx.model, args.num, args.temperature, ctx.label(args.label), args.seed, args.nrow,
                          layer=args.layer, sampler=sampler)
    from vaelab.volume_reconstruct import is_nifti_output

    if is_nifti_output(args.out):
        return write_sample_volumes(ctx, args, table.images)
    return ctx.write(table, "sample")


def write_sample_volumes(ctx: RunContext, args: argparse.Namespace, samples: torch.Tensor) -> int:
    """`sample --out X.nii.gz` of a 3-D run: the samples as one NIfTI (4-D for several)."""
    from vaelab import volume_reconstruct as vr
    from vaelab.data.medical import fixed_window

    if not vr.is_volume_model(ctx.model):
        raise ConfigError("--out X.nii / X.nii.gz writes the samples of a 3-D run (--dimensions 3); this run models "
                          "2-D images: give a .png")
    from vaelab.runlock import run_lock_for_output

    vr.require_nibabel()
    with run_lock_for_output(ctx.run_dir, args.out, "vaelab sample"):
        out = vr.write_samples_nifti(Path(args.out), samples.mean(1).float().cpu().numpy(),
                                     fixed_window(ctx.cfg.data))
    print(f"wrote {out}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    """Carry out `vaelab reconstruct` with the parsed `args`; return the exit code."""
    import torch

    from vaelab.latent import reconstruct_images
    from vaelab.volume_reconstruct import is_nifti_output, scan_kind

    ctx = RunContext(args)
    scans = [Path(f) for f in (args.images or []) if scan_kind(Path(f))]
    if scans or is_nifti_output(args.out):
        return reconstruct_scans(ctx, args, scans)
    specs = [str(i) for i in (args.indices or [])] + list(args.images or [])
    if not specs:
        specs = [str(i) for i in range(min(10, len(ctx.split)))]
    x, labels = ctx.inputs(specs)
    y = None
    if ctx.model.conditional:
        if any(v is None for v in labels):
            raise ConfigError("this run is conditional; give the label of the image files with --label")
        y = torch.tensor(labels)
    return ctx.write(reconstruct_images(ctx.model, x, y), "reconstruct")


def reconstruct_scans(ctx: RunContext, args: argparse.Namespace, scans: list[Path]) -> int:
    """`reconstruct --images SCAN`: a NIfTI in the scan's geometry (--out X.nii.gz) or a PNG of its slices."""
    from vaelab import volume_reconstruct as vr

    if len(scans) != 1 or len(args.images or []) != 1 or args.indices:
        raise ConfigError("give one scan with --images (a .nii / .nii.gz file, a DICOM file or a folder of one "
                          "DICOM series) and no other inputs")
    label = ctx.label(args.label) if args.label is not None else None
    scan = vr.read_scan(scans[0], ctx.cfg.data.slice_axis)
    if vr.is_volume_model(ctx.model):  # a 3-D run: every volume of the scan is one sample
        vr.volume_scan_for_model(ctx.model, scan)
        if vr.is_nifti_output(args.out):
            from vaelab.runlock import run_lock_for_output

            vr.require_nibabel()
            recon = vr.reconstruct_volumes(ctx.model, ctx.cfg.data, scan, label)
            with run_lock_for_output(ctx.run_dir, args.out, "vaelab reconstruct"):
                out = vr.write_nifti(Path(args.out), scan, recon)
            print(f"wrote {out}")
            return 0
        return ctx.write(vr.volume_table(ctx.model, ctx.cfg.data, scan, label), "reconstruct")
    if vr.is_nifti_output(args.out):
        from vaelab.runlock import run_lock_for_output

        vr.require_nibabel()
        recon = vr.reconstruct_scan(ctx.model, ctx.cfg.data, scan, label)
        with run_lock_for_output(ctx.run_dir, args.out, "vaelab reconstruct"):
            out = vr.write_nifti(Path(args.out), scan, recon)
        print(f"wrote {out}")
        return 0
    return ctx.write(vr.scan_table(ctx.model, ctx.cfg.data, scan, label), "reconstruct")


def run_interpolate(args: argparse.Namespace) -> int:
    """Carry out `vaelab interpolate` with the parsed `args`; return the exit code."""
    from vaelab.latent import interpolate_images

    ctx = RunContext(args)
    x, labels = ctx.inputs([args.from_, args.to])
    y_a, y_b = ctx.condition(labels)
    return ctx.write(interpolate_images(ctx.model, x[0], x[1], args.steps, args.mode, y_a, y_b), "interpolate")


def run_traverse(args: argparse.Namespace) -> int:
    """Carry out `vaelab traverse` with the parsed `args`; return the exit code."""
    from vaelab.latent import traverse_images

    ctx = RunContext(args)
    base, y = base_code(ctx, args.image, args.label)
    if args.dims is None:
        kl = ctx.kl_per_dim
        dims = ranked_dims(ctx, kl, args.layer)[: args.max_rows]
    else:
        dims = layer_relative(ctx, args.dims, args.layer)
        try:  # the KL only labels the rows here: go on without it when the dataset is not at hand
            kl = ctx.kl_per_dim
        except DataError:
            kl = None
    table = traverse_images(ctx.model, dims, base, tuple(args.range), args.steps, y, kl)
    return ctx.write(table, "traverse")


def run_manifold(args: argparse.Namespace) -> int:
    """Carry out `vaelab manifold` with the parsed `args`; return the exit code."""
    from vaelab.latent import manifold_images

    ctx = RunContext(args)
    base, y = base_code(ctx, args.image, args.label)
    if args.dims is not None:
        dims = layer_relative(ctx, args.dims, args.layer)
    elif ctx.model.latent_dim == 2:
        dims = [0, 1]
    else:  # the two most informative dimensions (of --layer), in index order
        dims = sorted(ranked_dims(ctx, ctx.kl_per_dim, args.layer)[:2])
    return ctx.write(manifold_images(ctx.model, tuple(dims), args.steps, base, y), "manifold")


def run_edit(args: argparse.Namespace) -> int:
    """Carry out `vaelab edit` with the parsed `args`; return the exit code."""
    import torch

    from vaelab.latent import edit_images, relabel_images

    ctx = RunContext(args)
    x, labels = ctx.inputs([args.image])
    own_label = labels[0]
    folders = args.toward_folder is not None or args.from_folder is not None
    label_edit = ctx.model.conditional and not folders
    steps = args.steps if args.steps is not None else (5 if label_edit else 7)
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    strength = args.strength
    if strength is None:  # a label edit ends at the target's one-hot; a latent edit may overshoot
        strength = 1.0 if label_edit else 1.5
    strengths = torch.linspace(0.0, strength, steps)
    if folders and args.toward is not None:
        raise ConfigError("give either --toward LABEL or --toward-folder/--from-folder, not both")
    if not folders and args.toward is None:
        raise ConfigError("say what to move toward: --toward LABEL, or --toward-folder DIR --from-folder DIR")
    y = ctx.condition(labels)[0]
    if label_edit:
        # A conditional model keeps the style (the latent code) and changes the label itself.
        y_from = ctx.label(args.from_, "--from") if args.from_ is not None else y
        if y_from is None:
            raise ConfigError("this run is conditional; give the image's label with --label or --from")
        table = relabel_images(ctx.model, x[0], y_from, ctx.label(args.toward, "--toward"), strengths)
        return ctx.write(table, "edit")
    direction = folder_direction(ctx, args) if folders else label_direction(ctx, args, own_label)
    return ctx.write(edit_images(ctx.model, x[0], direction, strengths, y), "edit")


# ---- helpers ---------------------------------------------------------------------------------------


def ranked_dims(ctx: RunContext, kl: torch.Tensor, layer: Optional[int]) -> list[int]:
    """Code dimensions by average KL, most informative first; only those of `layer` when given."""
    from vaelab.latent import layer_dims

    order = kl.argsort(descending=True, stable=True).tolist()
    if layer is None:
        return order
    allowed = set(layer_dims(ctx.model, layer))
    return [d for d in order if d in allowed]


def layer_relative(ctx: RunContext, dims: list[int], layer: Optional[int]) -> list[int]:
    """--dims as code dimensions: indices inside --layer's dimensions when a layer is given."""
    from vaelab.latent import layer_dims

    if layer is None:
        return dims
    own = layer_dims(ctx.model, layer)
    bad = [d for d in dims if not 0 <= d < len(own)]
    if bad:
        raise ConfigError(f"--dims {bad[0]}: layer {layer} has dimensions 0..{len(own) - 1}")
    return [own[d] for d in dims]


def base_code(ctx: RunContext, image: Optional[str],
              label: Optional[str]) -> tuple[Optional[torch.Tensor], Optional[int]]:
    """The code to vary around: --image's posterior mean (None = the origin), and the label to decode with."""
    y = ctx.label(label)
    if image is None:
        return None, y
    x, labels = ctx.inputs([image])
    y = ctx.condition(labels)[0]
    return encode_one(ctx, x[0], y), y


@_inference_mode
def encode_one(ctx: RunContext, x: torch.Tensor, y: Optional[int]) -> torch.Tensor:
    """Posterior mean (D,) of one image."""
    import torch

    cond = None if y is None else torch.tensor([y], device=ctx.model.device)
    if ctx.model.conditional and cond is None:
        raise ConfigError("this run is conditional; give the image's label with --label")
    return ctx.model.encode(x[None].to(ctx.model.device), cond).mean[0].float().cpu()


def label_direction(ctx: RunContext, args: argparse.Namespace, own_label: Optional[int]) -> torch.Tensor:
    """Class mean of --toward minus that of --from (default: the image's own class, else all images)."""
    from vaelab.latent import class_mean, encode_split, subsample

    toward = ctx.label(args.toward, "--toward")
    source = ctx.label(args.from_, "--from") if args.from_ is not None else own_label
    if args.from_ is not None and source == toward:
        raise ConfigError("--toward and --from name the same class")
    encoded = encode_split(ctx.model, subsample(ctx.data.train, CLASS_MEAN_IMAGES))
    target = class_mean(encoded, toward)
    if source is None or source == toward:
        return target - encoded.mean.mean(0)
    return target - class_mean(encoded, source)


@_inference_mode
def folder_direction(ctx: RunContext, args: argparse.Namespace) -> torch.Tensor:
    """Mean code of the --toward-folder images minus that of the --from-folder images."""
    import torch

    from vaelab.latent import attribute_vector, load_image_folder

    if args.toward_folder is None or args.from_folder is None:
        raise ConfigError("--toward-folder and --from-folder go together (images with and without the feature)")
    label = ctx.label(args.label)
    codes = []
    for folder in (args.from_folder, args.toward_folder):
        x = load_image_folder(ctx.model, folder)
        cond = None
        if ctx.model.conditional:
            if label is None:
                raise ConfigError("this run is conditional; give the label of the folders' images with --label")
            cond = torch.full((len(x),), label, device=ctx.model.device)
        codes.append(ctx.model.encode(x.to(ctx.model.device), cond).mean.float().cpu())
    return attribute_vector(codes[0], codes[1])


# ---- argument parsers ---------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, name: str, inputs: bool = True, out_help: str = "") -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by `vaelab train`")
    p.add_argument("--out", metavar="FILE", help=f"PNG to write (default RUN/figures/{name}.png){out_help}")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is now, if it moved")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    if inputs:
        p.add_argument("--split", choices=("train", "val", "test"), default="test",
                       help="split that integer inputs index into (default test)")
        p.add_argument("--label", help="conditional runs: the label of image-file inputs (index or class name)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("sample", help="decode draws from the prior",
                       description="Decode n draws from the model's prior (z ~ N(0, t² I) for the normal "
                                   "prior), or from the mixture of vaelab fit-sampler (--sampler gmm). "
                                   "Conditional runs: --label picks the class.")
    _common(p, "sample", inputs=False, out_help="; a 3-D run's OUT.nii or OUT.nii.gz writes the samples as a "
            "NIfTI volume (4-D for several)")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior draws (default 1)")
    p.add_argument("--label", help="conditional runs: the class to generate (index or class name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0; same seed, same samples)")
    p.add_argument("--nrow", type=int, help="images per row")
    p.add_argument("--sampler", choices=("prior", "gmm"), default="prior",
                   help="prior: the model's own prior (default); gmm: the mixture fitted by vaelab fit-sampler")
    p.add_argument("--layer", type=int, metavar="L", help="hierarchical runs: each row shares one draw of the "
                   "layers above L; each image draws layer L afresh, the layers below at their means (1 = bottom)")
    p.set_defaults(func=run_sample)

    p = sub.add_parser("reconstruct", help="inputs above their reconstructions (dataset images or your files)")
    _common(p, "reconstruct", out_help="; with a scan in --images, OUT.nii or OUT.nii.gz writes the "
            "reconstructed volume in the scan's geometry")
    p.add_argument("--images", nargs="+", metavar="FILE",
                   help="image files (converted to the model's format), or one scan: a .nii / .nii.gz volume, a "
                        "DICOM file or a folder of one DICOM series (with --out X.nii.gz: written in the scan's "
                        "shape and affine, in modality units)")
    p.add_argument("--indices", nargs="+", type=int, metavar="I", help="indices into --split (default 0..9)")
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser("interpolate", help="walk between two codes and decode",
                       description="Encode A and B (posterior means), walk between the codes, decode.")
    _common(p, "interpolate")
    p.add_argument("--from", dest="from_", required=True, metavar="A", help="index into --split, or an image file")
    p.add_argument("--to", required=True, metavar="B", help="index into --split, or an image file")
    p.add_argument("--steps", type=int, default=10, help="codes on the walk, endpoints included (default 10)")
    p.add_argument("--mode", choices=("lerp", "slerp"), default="lerp",
                   help="lerp: straight line; slerp: great circle with the norm moving linearly")
    p.set_defaults(func=run_interpolate)

    p = sub.add_parser("traverse", help="vary one latent dimension at a time",
                       description="One row per latent dimension, moving it alone around A's code (or the "
                                   "prior's mean); dimensions ordered by average KL over the test split, most "
                                   "informative first.")
    _common(p, "traverse")
    p.add_argument("--image", metavar="A", help="index into --split or an image file (default: the prior's "
                   "mean, the origin for N(0, I))")
    p.add_argument("--dims", type=int_list, help=f"dimensions, e.g. 0,3,5 (default: the top {DEFAULT_TRAVERSE_ROWS} "
                                                 "by KL)")
    p.add_argument("--range", type=float, nargs=2, default=[-3.0, 3.0], metavar=("LOW", "HIGH"),
                   help="offsets added to the dimension (default -3 3), in units of its prior standard "
                        "deviation for a prior other than N(0, I)")
    p.add_argument("--steps", type=int, default=9, help="images per row (default 9)")
    p.add_argument("--max-rows", type=int, default=DEFAULT_TRAVERSE_ROWS, help="rows without --dims (default 10)")
    p.add_argument("--layer", type=int, metavar="L", help="hierarchical runs: traverse dimensions of layer L only "
                   "(1 = bottom); --dims then counts inside the layer; the layers below follow as conditional means")
    p.set_defaults(func=run_traverse)

    p = sub.add_parser("manifold", help="decode a grid over two latent dimensions",
                       description="A grid through the prior's marginal quantiles of two dimensions (N(0, 1)'s "
                                   "for the normal prior); the others at the prior's mean (or at --image's code).")
    _common(p, "manifold")
    p.add_argument("--dims", type=int_list, help="two dimensions i,j (default: the two with the highest KL)")
    p.add_argument("--steps", type=int, default=15, help="grid size (default 15)")
    p.add_argument("--image", metavar="A", help="hold the other dimensions at this image's code")
    p.add_argument("--layer", type=int, metavar="L", help="hierarchical runs: two dimensions of layer L "
                   "(1 = bottom); --dims then counts inside the layer")
    p.set_defaults(func=run_manifold)

    p = sub.add_parser("edit", help="move an image's code along an attribute direction",
                       description="Direction = mean code of class --toward minus that of --from (default the "
                                   "image's own class, else all images), or of --toward-folder minus "
                                   "--from-folder. Conditional runs: keep the code, change the label.")
    _common(p, "edit")
    p.add_argument("--image", required=True, metavar="A", help="index into --split, or an image file")
    p.add_argument("--toward", metavar="LABEL", help="class to move toward (index or class name)")
    p.add_argument("--from", dest="from_", metavar="LABEL", help="class to move away from")
    p.add_argument("--toward-folder", metavar="DIR", help="images with the feature")
    p.add_argument("--from-folder", metavar="DIR", help="images without the feature")
    p.add_argument("--strength", type=float,
                   help="largest strength shown (default 1.5; 1 for a conditional run's label edit)")
    p.add_argument("--steps", type=int, help="strengths from 0 to --strength (default 7; 5 for a label edit)")
    p.set_defaults(func=run_edit)

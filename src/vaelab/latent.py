"""Latent-space operations on a trained model: encode, project, rank, walk, traverse, edit.

Two layers, both used by the CLI, the HTML report and the browser explorer:

- code operations on plain tensors (lerp/slerp walks, traversal rows, attribute vectors and
  edits), in `vaelab.latent_codes` and re-exported here, which the tests check against closed forms;
- model-level functions that encode inputs (posterior means), apply one operation, decode, and
  return an `ImageTable`: the tiles of one figure, the latent code of every tile, and the
  figure's row and column labels (`plots.labelled_grid` draws it).

The 2-D projection is PCA of the posterior means (identity for 2-D latents), so every figure and
the browser explorer show the same map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches, to_float
from vaelab.errors import ConfigError, DataError
from vaelab.latent_codes import (  # noqa: F401 (re-exported: part of vaelab.latent's API)
    INTERPOLATIONS,
    attribute_vector,
    edit_codes,
    interpolate_codes,
    lerp,
    random_direction,
    slerp,
    traversal_codes,
)

if TYPE_CHECKING:
    from vaelab.models import VAE

# ---- encoding a split and the 2-D projection ---------------------------------------------------


@dataclass
class EncodedSplit:
    """Posterior statistics of every image of a split (see `encode_split`)."""
    mean: torch.Tensor  # (N, D) posterior means
    log_var: torch.Tensor  # (N, D)
    labels: Optional[torch.Tensor]  # (N,) or None
    # (N, D): each image's KL per dimension as the model defines it (`model.dimension_kl`: against the
    # prior's marginals, or per layer given the layer above); None = against N(0, 1) from mean/log_var.
    dim_kl: Optional[torch.Tensor] = None

    def kl_per_dim(self) -> torch.Tensor:
        """Average KL of each dimension to the prior -> (D,): how much each dim is used (for the
        normal prior, KL(q(z_d|x) || N(0, 1)) in closed form)."""
        if self.dim_kl is not None:
            return self.dim_kl.mean(0)
        return 0.5 * (self.mean.square() + self.log_var.exp() - 1.0 - self.log_var).mean(0)


@torch.inference_mode()
def encode_split(model: VAE, split: Split, batch_size: int = 1000, max_images: Optional[int] = None) -> EncodedSplit:
    """Posterior means and log-variances of (the first `max_images` of) a split."""
    if max_images is not None and max_images < len(split):
        split = split.take(slice(0, max_images))
    means, log_vars, kls = [], [], []
    dimension_kl = getattr(model, "dimension_kl", None)
    for x, y in iterate_batches(split, batch_size, shuffle=False, device=model.device):
        q = model.encode(x, y if model.conditional else None)
        means.append(q.mean.float().cpu())
        log_vars.append(q.log_var.float().cpu())
        if dimension_kl is not None:
            kls.append(dimension_kl(q).float().cpu())
    return EncodedSplit(torch.cat(means), torch.cat(log_vars), split.labels, torch.cat(kls) if kls else None)


# ---- the prior's marginals and layers: what ranges, grids and per-layer tools follow -----------

PRIOR_DRAWS = 20_000  # seeded prior draws behind the quantiles of a prior without closed forms


def prior_marginals(model: VAE) -> tuple[torch.Tensor, torch.Tensor]:
    """Each dimension's marginal mean and standard deviation under the model's prior, (D,) each."""
    with torch.inference_mode():
        return model.prior.marginals()


@torch.inference_mode()
def prior_quantiles(model: VAE, probs: torch.Tensor) -> torch.Tensor:
    """The marginal quantiles of every dimension at `probs` (S,) -> (S, D): N(0, 1)'s exactly for the
    normal prior, otherwise those of `PRIOR_DRAWS` seeded prior draws."""
    if model.prior.standard_normal:
        return torch.distributions.Normal(0.0, 1.0).icdf(probs)[:, None].expand(-1, model.latent_dim).clone()
    z = model.prior.sample(PRIOR_DRAWS, generator=torch.Generator().manual_seed(0)).float().cpu()
    return torch.quantile(z, probs.float(), dim=0)


def layer_sizes(model: VAE) -> tuple[int, ...]:
    """The model's stochastic layers (bottom first); one layer for a plain VAE."""
    return tuple(getattr(model, "layer_sizes", (model.latent_dim,)))


def layer_of(model: VAE, dim: int) -> tuple[int, int]:
    """Code dimension -> (its layer, 0-based from the bottom; its index inside that layer)."""
    start = 0
    for layer, size in enumerate(layer_sizes(model)):
        if dim < start + size:
            return layer, dim - start
        start += size
    raise ConfigError(f"latent dimension {dim} is out of range: this model has dims 0..{model.latent_dim - 1}")


def layer_dims(model: VAE, layer: int) -> list[int]:
    """The code dimensions of `layer` (1-based, 1 = the bottom, as the CLI's --layer)."""
    sizes = layer_sizes(model)
    if not 1 <= layer <= len(sizes):
        raise ConfigError(f"--layer {layer}: this model has stochastic layers 1..{len(sizes)} (1 = the bottom)")
    start = sum(sizes[: layer - 1])
    return list(range(start, start + sizes[layer - 1]))


def dim_name(model: VAE, dim: int) -> str:
    """z[d] for one stochastic layer; z<l>[i] (layer l, 1-based, its dimension i) for several."""
    if len(layer_sizes(model)) == 1:
        return f"z[{dim}]"
    layer, index = layer_of(model, dim)
    return f"z{layer + 1}[{index}]"


def _fill_below(model: VAE, codes: torch.Tensor, layer: int, temperature: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Regenerate the layers below `layer` (0-based) from the prior given the codes above (a no-op
    for one stochastic layer)."""
    fill = getattr(model, "fill_lower_layers", None)
    if fill is None or layer == 0:
        return codes
    return fill(codes.to(model.device), layer, temperature, generator).float().cpu()


@dataclass
class Projection:
    """z (N, D) -> 2-D coordinates: (z - center) @ components.T; identity when D <= 2."""

    center: torch.Tensor  # (D,)
    components: torch.Tensor  # (2, D)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.center) @ self.components.T

    def inverse(self, coords: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """2-D coordinates (N, 2) -> latent vectors (N, D) on the projection plane (through `base`)."""
        base = self.center if base is None else base
        offset = coords @ self.components  # (N, D)
        return base + offset - ((base - self.center) @ self.components.T) @ self.components


def fit_projection(means: torch.Tensor) -> Projection:
    """PCA of the posterior means (N, D): the two directions of largest spread."""
    d = means.shape[1]
    if d <= 2:
        comps = torch.eye(2, d) if d == 2 else torch.tensor([[1.0], [0.0]])
        return Projection(torch.zeros(d), comps)
    center = means.mean(0)
    # SVD of the centred data: rows of vh are the principal directions, largest first.
    _, _, vh = torch.linalg.svd(means - center, full_matrices=False)
    comps = vh[:2]
    if comps.shape[0] < 2:  # a single image has one direction at most: complete the plane with an orthogonal one
        basis, _ = torch.linalg.qr(torch.cat([comps, torch.eye(d, dtype=comps.dtype)]).T)  # (D, D), first = comps
        comps = basis[:, :2].T
    # Fix the sign so the projection is deterministic across runs of the SVD.
    signs = torch.sign(comps[torch.arange(2), comps.abs().argmax(1)])
    return Projection(center, comps * signs[:, None])


def rank_dimensions(encoded: EncodedSplit) -> list[int]:
    """Latent dimensions ordered by average KL to the prior, most informative first."""
    return encoded.kl_per_dim().argsort(descending=True, stable=True).tolist()


def subsample(split: Split, max_images: int, seed: int = 0) -> Split:
    """A seeded random subset of at most `max_images` (folder splits are sorted by class, so no prefix)."""
    if len(split) <= max_images:
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    return split.take(idx)


# ---- code operations: vaelab.latent_codes (re-exported here), and one that needs an EncodedSplit

def class_mean(encoded: EncodedSplit, label: int) -> torch.Tensor:
    """Mean posterior mean (D,) of the images of class `label`."""
    if encoded.labels is None:
        raise DataError("this dataset has no labels; use --toward-folder/--from-folder for the direction")
    chosen = encoded.mean[encoded.labels == label]
    if len(chosen) == 0:
        raise DataError(f"no images of class {label} to average")
    return chosen.mean(0)


# ---- inputs: the user's image files in the model's format --------------------------------------


def load_image_files(model: VAE, paths: Sequence[str | Path]) -> torch.Tensor:
    """Image files -> float (N, C, H, W) in [0, 1], converted to the model's channels and size."""
    from vaelab.data.images import load_image

    if len(model.image_shape) != 3:
        raise DataError("this run models volumes; image files are 2-D: give indices into the run's dataset "
                        "(vaelab reconstruct also takes a volume: --images VOLUME.nii.gz)")
    c, h, w = model.image_shape
    if h != w:
        raise DataError(f"image files can only be fed to models of square images; this one is {h}×{w}")
    return to_float(torch.stack([torch.from_numpy(load_image(p, h, c).copy()) for p in paths]))


def load_image_folder(model: VAE, folder: str | Path) -> torch.Tensor:
    """Every image file directly in `folder` -> float (N, C, H, W) in the model's format."""
    from vaelab.data.images import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return load_image_files(model, files)


# ---- model-level operations: encode, operate, decode -> ImageTable ---------------------------


@dataclass
class ImageTable:
    """The tiles of one figure, `nrow` per row, and the latent code behind every tile.

    `codes[i]` is the code that tile i decodes; an input tile carries its posterior mean.
    """

    images: torch.Tensor  # (N, C, H, W) in [0, 1], on the CPU
    nrow: int
    codes: torch.Tensor  # (N, D)
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    title: str = ""


def _condition(model: VAE, y, n: int, what: str) -> Optional[torch.Tensor]:
    """Labels (n,) for a conditional model (one label is repeated); None for a plain one."""
    if not model.conditional:
        if y is not None:
            raise ConfigError(f"{what}: a label was given but this run is not conditional "
                              "(train with --conditional to generate a chosen class)")
        return None
    if y is None:
        raise ConfigError(f"{what}: this run is conditional; give the label (e.g. --label 7)")
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    if y.numel() == 1:
        y = y.expand(n)
    if y.min() < 0 or y.max() >= model.num_classes:
        raise ConfigError(f"{what}: label must be in 0..{model.num_classes - 1}")
    return y.to(model.device)


def _decode(model: VAE, z: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    return model.decode_images(z.to(model.device), y).float().cpu()


def _encode_means(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    return model.encode(x.to(model.device), y).mean.float().cpu()


def _fmt(v: float) -> str:
    return f"{v:+.2g}" if v else "0"


def prior_name(model: VAE, temperature: float = 1.0) -> str:
    """How figures name the model's prior: N(0, t² I), or e.g. 'the vamp prior'."""
    if model.prior.standard_normal:
        return f"N(0, {temperature:g}² I)"
    cfg = getattr(model, "cfg", None)
    name = f"the {cfg.prior} prior" if cfg is not None else "the prior"
    if len(layer_sizes(model)) > 1:
        name = f"the {len(layer_sizes(model))}-layer prior ({cfg.prior} on top)" if cfg is not None else name
    return name + (f" at temperature {temperature:g}" if temperature != 1 else "")


@torch.inference_mode()
def sample_images(model: VAE, n: int = 64, temperature: float = 1.0, label: Optional[int] = None, seed: int = 0,
                  nrow: Optional[int] = None, layer: Optional[int] = None, sampler=None) -> ImageTable:
    """Decodings of n draws from the model's prior (N(0, t² I) for the normal prior); a conditional
    model cycles through its labels unless `label` is given.

    `layer` l (1-based, 1 = the bottom): every row shares one prior draw of the layers above l,
    each tile draws layer l afresh and sets the layers below it to their conditional means, so a
    row shows what layer l varies. `sampler` (e.g. the fitted GMM of `vaelab.samplers`) replaces
    the prior: anything with `sample(n, generator, temperature) -> (n, D)` and a `description`.
    """
    if n < 1:
        raise ConfigError(f"-n must be at least 1, got {n}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {temperature}")
    _check_figure(n, temperature)
    if model.conditional and label is None:
        y = torch.arange(n) % model.num_classes  # column c of each row shows class c
        nrow = nrow or model.num_classes
    else:
        y = label
    y = _condition(model, y, n, "sample")
    nrow = nrow or math.ceil(math.sqrt(n))
    generator = torch.Generator().manual_seed(seed)
    if sampler is not None:
        if layer is not None:
            raise ConfigError("--layer draws from the model's own prior; leave out --sampler")
        z = sampler.sample(n, generator=generator, temperature=temperature).float().cpu()
        source = sampler.description
    elif layer is not None:
        z = _layer_samples(model, n, nrow, layer, temperature, generator)
        source = f"{prior_name(model, temperature)}, layer {layer} drawn along each row"
    else:
        z = model.prior.sample(n, generator=generator, temperature=temperature).float().cpu()
        source = prior_name(model, temperature)
    what = f"class {label}" if label is not None else ("one class per column" if model.conditional else "")
    title = f"Samples from {source}" + (f", {what}" if what else "")
    cols = [str(c) for c in range(nrow)] if model.conditional and label is None else []
    return ImageTable(_decode(model, z, y), nrow, z, col_labels=cols, title=title)


def _layer_samples(model: VAE, n: int, nrow: int, layer: int, temperature: float,
                   generator: torch.Generator) -> torch.Tensor:
    """(n, D) codes for `sample_images(..., layer=l)`: rows share the layers above l (a prior draw
    per row), tiles draw layer l from p(z_l | z_{l+1}) (or the top prior), layers below at their means."""
    layer_dims(model, layer)  # checks the layer exists
    top = len(layer_sizes(model))
    rows = math.ceil(n / nrow)
    if layer == top:  # every tile a fresh top-layer draw
        z = model.prior.sample(n, generator=generator, temperature=temperature).float().cpu()
    else:
        above = model.prior.sample(rows, generator=generator, temperature=temperature).float().cpu()  # (rows, D)
        z = above.repeat_interleave(nrow, 0)[:n]  # (n, D): one row's tiles share its draw
        z = _fill_below(model, z, layer, temperature, generator)  # draws layer l (and below) afresh
    return _fill_below(model, z, layer - 1)  # the layers below l at their conditional means


@torch.inference_mode()
def reconstruct_images(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> ImageTable:
    """Inputs x (B, C, H, W) above the decodings of their posterior means."""
    y = _condition(model, y, x.shape[0], "reconstruct")
    z = _encode_means(model, x, y)
    images = torch.cat([x.float().cpu(), _decode(model, z, y)])
    return ImageTable(images, x.shape[0], torch.cat([z, z]), ["input", "reconstruction"], [],
                      "Inputs above their reconstructions")


@torch.inference_mode()
def interpolate_images(model: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10, mode: str = "lerp",
                       y_a: Optional[int] = None, y_b: Optional[int] = None) -> ImageTable:
    """Input A, the decoded walk from A's posterior mean to B's (`steps` codes), input B.

    A conditional model decodes the first half of the walk with A's label, the rest with B's.
    """
    _check_figure(steps + 2)
    y_a_t, y_b_t = _condition(model, y_a, 1, "interpolate"), _condition(model, y_b, 1, "interpolate")
    z_a = _encode_means(model, x_a[None], y_a_t)[0]
    z_b = _encode_means(model, x_b[None], y_b_t)[0]
    walk = interpolate_codes(z_a, z_b, steps, mode)  # (S, D)
    t = torch.linspace(0.0, 1.0, steps)
    y = None if y_a_t is None else torch.where(t < 0.5, y_a_t.cpu(), y_b_t.cpu()).to(model.device)
    images = torch.cat([x_a[None].float().cpu(), _decode(model, walk, y), x_b[None].float().cpu()])
    codes = torch.cat([z_a[None], walk, z_b[None]])
    cols = ["A"] + [f"{v:.2g}" for v in t.tolist()] + ["B"]
    return ImageTable(images, steps + 2, codes, [], cols, f"{mode} from A to B")


@torch.inference_mode()
def traverse_images(model: VAE, dims: Sequence[int], base: Optional[torch.Tensor] = None,
                    span: tuple[float, float] = (-3.0, 3.0), steps: int = 9, y: Optional[int] = None,
                    kl: Optional[torch.Tensor] = None) -> ImageTable:
    """One row per dim in `dims`: z[d] = base[d] + offset * s_d for `steps` offsets across `span`,
    the other dims held at `base` (default: the prior's marginal mean, 0 for N(0, I)). s_d is the
    dimension's marginal std under the prior (1 for N(0, I)), so a learned prior's traversal covers
    its own spread. In a hierarchical model the layers below the moved dimension's layer are
    regenerated as their conditional means given it (else the move would not reach the image).
    `kl` (D,) adds each dim's average KL to its row label."""
    _check_dims(model, dims)
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    _check_figure(len(dims) * steps, float(span[0]), float(span[1]))
    centre, spread = prior_marginals(model)
    standard = bool(model.prior.standard_normal)
    base = centre.clone() if base is None else base.float().cpu()
    offsets = torch.linspace(float(span[0]), float(span[1]), steps)
    rows = []
    for d in dims:
        row = traversal_codes(base, [d], offsets * (1.0 if standard else float(spread[d])))  # (S, D)
        rows.append(_fill_below(model, row, layer_of(model, d)[0]))
    codes = torch.cat(rows)
    labels = [dim_name(model, d) + (f" KL {kl[d]:.2f}" if kl is not None else "") for d in dims]
    images = _decode(model, codes, _condition(model, y, len(codes), "traverse"))
    title = "Each row moves one latent dimension alone"
    title += "" if standard else " (offsets in prior standard deviations)"
    return ImageTable(images, steps, codes, labels, [_fmt(v) for v in offsets.tolist()], title)


@torch.inference_mode()
def manifold_images(model: VAE, dims: tuple[int, int] = (0, 1), steps: int = 15, base: Optional[torch.Tensor] = None,
                    y: Optional[int] = None) -> ImageTable:
    """Decodings over a grid through the marginal quantiles of two dims under the prior (N(0, 1)'s
    for the normal prior: Kingma & Welling 2013, Fig. 4); the other dims stay at `base` (default:
    the prior's marginal mean). In a hierarchical model the layers below the lower of the two
    dims' layers are regenerated as their conditional means."""
    from vaelab.plots import manifold_grid_codes

    if model.latent_dim < 2:
        raise ConfigError("a manifold needs at least 2 latent dimensions; use `vaelab traverse`")
    _check_dims(model, dims)
    if len(dims) != 2 or dims[0] == dims[1]:
        raise ConfigError(f"--dims takes two different dimensions, got {list(dims)}")
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    _check_figure(steps * steps)
    standard = bool(model.prior.standard_normal)
    if base is None:
        base = None if standard else prior_marginals(model)[0]
    base = None if base is None else base.float().cpu()
    quantiles = None if standard else prior_quantiles(model, torch.linspace(0.05, 0.95, steps))  # (S, D)
    values = None if quantiles is None else (quantiles[:, dims[0]], quantiles[:, dims[1]])
    codes = manifold_grid_codes(steps, (dims[0], dims[1]), model.latent_dim, base, values=values)
    codes = _fill_below(model, codes, min(layer_of(model, dims[0])[0], layer_of(model, dims[1])[0]))
    images = _decode(model, codes, _condition(model, y, len(codes), "manifold"))
    xs = codes[:steps, dims[0]].tolist()  # first row: the x values, left to right
    name_x, name_y = dim_name(model, dims[0]), dim_name(model, dims[1])
    rows = [f"{name_y}={v:.1f}" for v in codes[::steps, dims[1]].tolist()]
    grid = "Gaussian quantiles" if standard else "quantiles of the prior's marginals"
    return ImageTable(images, steps, codes, rows, [f"{v:.1f}" for v in xs], f"{name_x} across, {name_y} down ({grid})")


@torch.inference_mode()
def edit_images(model: VAE, x: torch.Tensor, direction: torch.Tensor, strengths: torch.Tensor,
                y: Optional[int] = None) -> ImageTable:
    """Input x (C, H, W), then its posterior mean moved by s * direction for each strength s."""
    _check_figure(len(strengths) + 1, *strengths.tolist(), *direction.tolist())
    y_t = _condition(model, y, 1, "edit")
    z = _encode_means(model, x[None], y_t)[0]
    codes = edit_codes(z, direction.float().cpu(), strengths)
    images = torch.cat([x[None].float().cpu(), _decode(model, codes, None if y_t is None else y_t.expand(len(codes)))])
    cols = ["input"] + [f"{s:.3g}" for s in strengths.tolist()]
    return ImageTable(images, len(codes) + 1, torch.cat([z[None], codes]), [], cols,
                      "Attribute edit: the code plus strength × direction")


@torch.inference_mode()
def relabel_images(model: VAE, x: torch.Tensor, y_from: int, y_to: int, strengths: torch.Tensor) -> ImageTable:
    """Conditional model: keep x's latent code (its style) and move the label from `y_from` to `y_to`.

    Strength s feeds the decoder the mixed one-hot (1 - s)·e_from + s·e_to (Sohn et al. 2015 train
    with one-hots only, so s = 0 and s = 1 are the trained cases; values between are a blend).
    """
    if not model.conditional:
        raise ConfigError("changing the label needs a conditional run (train with --conditional)")
    _condition(model, [y_from, y_to], 2, "edit")
    _check_figure(len(strengths) + 1, *strengths.tolist())
    z = _encode_means(model, x[None], torch.tensor([y_from], device=model.device))[0]
    s = strengths.float()[:, None]
    onehot = F.one_hot(torch.tensor([y_from, y_to]), model.num_classes).float()
    cond = (1 - s) * onehot[0] + s * onehot[1]  # (S, num_classes)
    zs = z.expand(len(s), -1)
    param = model.likelihood.param(model.decoder(zs.to(model.device), cond.to(model.device)))
    images = torch.cat([x[None].float().cpu(), model.likelihood.mean(param).float().cpu()])
    cols = ["input"] + [f"{v:.3g}" for v in strengths.tolist()]
    return ImageTable(images, len(s) + 1, torch.cat([z[None], zs]), [], cols,
                      f"Same style, label {y_from} → {y_to}")


MAX_TILES = 10_000  # one figure; beyond this a typo (-n 1e7) would only exhaust memory


def _check_figure(tiles: int, *numbers: float) -> None:
    if tiles > MAX_TILES:
        raise ConfigError(f"that figure would have {tiles} images; at most {MAX_TILES}")
    if not all(math.isfinite(v) for v in numbers):
        raise ConfigError("ranges, strengths and temperatures must be finite numbers")


def _check_dims(model: VAE, dims: Sequence[int]) -> None:
    bad = [d for d in dims if not 0 <= d < model.latent_dim]
    if bad:
        raise ConfigError(f"latent dimension {bad[0]} is out of range: this model has dims 0..{model.latent_dim - 1}")
    if not dims:
        raise ConfigError("give at least one latent dimension")

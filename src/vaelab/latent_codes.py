"""Operations on latent codes as plain tensors: walks, traversal rows, attribute edits.

No model here: `vaelab.latent` encodes inputs, applies one of these and decodes. The tests check
them against closed forms (endpoints, norms, one dimension changed at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch

from vaelab.errors import ConfigError, DataError


def lerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line: (D,), (D,), t (S,) -> (S, D) = (1 - t) z_a + t z_b."""
    t = t[:, None].to(z_a.dtype)
    return (1 - t) * z_a + t * z_b


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical walk: (D,), (D,), t (S,) -> (S, D).

    The direction moves along the great circle from z_a/|z_a| to z_b/|z_b| (Shoemake 1985) and the
    norm moves linearly from |z_a| to |z_b|, so every point's norm lies between the endpoints'.
    White 2016 ("Sampling Generative Networks") recommends this for Gaussian latents: their mass
    sits near a shell, and a straight line between two codes cuts through the rarely-seen interior.
    (Plain slerp of unnormalised vectors can overshoot both norms when the angle is wide.)
    """
    # float64 inside: near-opposite directions leave a tiny orthogonal part that float32 loses.
    a, b, tt = z_a.double(), z_b.double(), t.double()[:, None]
    r_a, r_b = a.norm(), b.norm()
    if min(r_a.item(), r_b.item()) < 1e-12:
        return lerp(z_a, z_b, t)  # a zero code has no direction
    u_a, u_b = a / r_a, b / r_b
    cos = (u_a @ u_b).clamp(-1.0, 1.0)
    w = u_b - cos * u_a  # the part of u_b orthogonal to u_a; its length is sin(omega)
    if w.norm().item() > 1e-9:
        omega = torch.atan2(w.norm(), cos)
    elif cos.item() > 0:  # the same direction: only the radius moves
        w, omega = torch.zeros_like(u_a), torch.zeros((), dtype=a.dtype)
    elif u_a.numel() == 1:
        return lerp(z_a, z_b, t)  # 1-D with opposite signs: there is no circle to walk
    else:
        # Opposite directions: every great circle joins them; take the one through the basis
        # axis least aligned with u_a.
        w = torch.zeros_like(u_a)
        w[int(u_a.abs().argmin())] = 1.0
        w = w - (w @ u_a) * u_a
        omega = torch.tensor(math.pi, dtype=a.dtype)
    if w.norm().item() > 0:
        w = w / w.norm()
    direction = torch.cos(tt * omega) * u_a + torch.sin(tt * omega) * w  # (S, D), unit rows
    radius = (1 - tt) * r_a + tt * r_b  # (S, 1)
    return (radius * direction).to(z_a.dtype)


INTERPOLATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "lerp": lerp,
    "slerp": slerp,
}


def interpolate_codes(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, mode: str = "lerp") -> torch.Tensor:
    """`steps` codes (steps, D) walking from z_a (first) to z_b (last) by `mode` (lerp or slerp)."""
    if mode not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation mode '{mode}'; choose {' or '.join(INTERPOLATIONS)}")
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {steps}")
    return INTERPOLATIONS[mode](z_a, z_b, torch.linspace(0.0, 1.0, steps))


def traversal_codes(base: torch.Tensor, dims: Sequence[int], offsets: torch.Tensor) -> torch.Tensor:
    """One row per dim: base (D,) with z[d] = base[d] + offset for each offset (S,) -> (len(dims)*S, D)."""
    rows = base.repeat(len(dims), offsets.shape[0], 1)  # (R, S, D)
    for r, d in enumerate(dims):
        rows[r, :, d] = base[d] + offsets
    return rows.reshape(-1, base.shape[0])


def attribute_vector(from_codes: torch.Tensor, toward_codes: torch.Tensor) -> torch.Tensor:
    """Mean code of the images with the feature minus that of those without: (N, D), (M, D) -> (D,)."""
    if len(from_codes) == 0 or len(toward_codes) == 0:
        raise DataError("an attribute vector needs at least one image on each side")
    return toward_codes.mean(0) - from_codes.mean(0)


def edit_codes(z: torch.Tensor, direction: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """z (D,) moved along `direction` (D,) by each strength (S,) -> (S, D) = z + s * direction."""
    return z + strengths[:, None].to(z.dtype) * direction


def random_direction(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A direction uniform on the sphere with the same norm as `like` (D,): the edit's control."""
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return v / v.norm() * like.norm()

"""JSON request and response models of the explorer's API; they are what /openapi.json documents.

Latent values are bounded here (finite, |z| <= Z_LIMIT) so that a malformed request is refused
before it reaches the model; the length of a vector depends on the run and is checked by the session.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, Field

from vaelab.explorer.session import Z_LIMIT

MAX_LATENT = 4096  # the largest latent_dim a config may have
MAX_BATCH = 64  # latent vectors per batch-decode request

LatentValue = Annotated[float, Field(ge=-Z_LIMIT, le=Z_LIMIT, allow_inf_nan=False)]
LatentVector = Annotated[list[LatentValue], Field(min_length=1, max_length=MAX_LATENT)]
Label = Annotated[Optional[int], Field(default=None, ge=0, description="class label (conditional runs only)")]
DataUrl = Annotated[str, Field(description="a PNG as a data: URL")]


class DecodeRequest(BaseModel):
    """POST /api/decode: one latent vector (and a label for conditional runs)."""
    z: LatentVector = Field(description=f"latent vector of length latent_dim, values in [-{Z_LIMIT:g}, {Z_LIMIT:g}]")
    label: Label = None


class BatchDecodeRequest(BaseModel):
    """POST /api/decode_batch: several latent vectors decoded in one call (e.g. a slider scrub)."""
    z: Annotated[list[LatentVector], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description=f"1..{MAX_BATCH} latent vectors")
    label: Label = None


class DecodedImage(BaseModel):
    """A decoded image with the (clamped) code it came from."""
    z: list[float]
    image: DataUrl


class BatchDecodeResponse(BaseModel):
    """The images of a batch decode, in request order."""
    images: list[DataUrl]


class EncodeResponse(BaseModel):
    """POST /api/encode: an uploaded image's posterior, map position and reconstruction."""
    z: list[float] = Field(description="posterior mean of the uploaded image")
    log_var: list[float]
    coords: list[float] = Field(description="the code's position on the 2-D map")
    label: Optional[int]
    input: DataUrl = Field(description="the upload as the model sees it (converted, resized)")
    reconstruction: DataUrl


class DataItem(BaseModel):
    """One image of the run's split with its code and map position."""
    index: int
    label: Optional[int]
    z: list[float] = Field(description="posterior mean")
    coords: list[float]
    image: DataUrl


class MapPoints(BaseModel):
    """The latent map: 2-D coordinates of the split's codes and the projection that made them."""
    x: list[float]
    y: list[float]
    labels: Optional[list[int]]
    projection: str = Field(description="'identity' (2-D latents) or 'pca' (the run figures' projection)")
    center: list[float] = Field(description="z -> coords = (z - center) @ components.T")
    components: list[list[float]] = Field(description="2 × latent_dim, orthonormal rows")


class Meta(BaseModel):
    """What the page needs to build itself: the model, the data, the limits, the KL-ordered sliders."""
    name: str
    dataset: Optional[str]
    arch: Optional[str]
    likelihood: Optional[str]
    latent_dim: int
    image_shape: list[int]
    conditional: bool
    num_classes: int
    class_names: list[str]
    labelled: bool
    split_size: int
    map_points: int
    projection: str
    z_limit: float
    max_upload_bytes: int
    kl_per_dim: list[float]
    dims_by_kl: list[int]
    slider_dims: list[int]


class ErrorMessage(BaseModel):
    """Every 4xx answer: one human-readable line."""
    detail: str


# ---- POST /api/anomaly (explorer/anomaly_view.py) ------------------------------------------------

class AnomalyScore(BaseModel):
    """One anomaly score of the upload (higher = more anomalous) and where it falls among normal images."""
    name: str
    value: Optional[float] = Field(description="the score (null if not finite)")
    percentile: Optional[float] = Field(description="% of the scored normal training images with a score at most this")
    definition: str


class AnomalyReference(BaseModel):
    """The normal images the upload is compared with."""
    images: int = Field(description="normal images in the reference (code Gaussian, mean image, neighbours)")
    scored: int = Field(description="of them, scored once for the percentiles")
    source: str


class AnomalyResponse(BaseModel):
    """POST /api/anomaly: an uploaded image's anomaly scores, percentiles and anomaly maps."""
    scores: list[AnomalyScore]
    reference: AnomalyReference
    iw_samples: int = Field(description="K of nll = -L_K")
    input: DataUrl = Field(description="the upload as the model sees it")
    reconstruction: DataUrl
    residual_map: DataUrl = Field(description="|x - reconstruction| over the image")
    residual_scale: float = Field(description="the residual's colour-scale maximum (normal images' 99.9th percentile)")
    weighted_map: Optional[DataUrl] = Field(description="the residual / the decoder's per-pixel std, where it has one")
    weighted_scale: Optional[float]

"""The explorer for image-to-image runs (--task translate): its own session, endpoints and page section.

`create_translate_app(model, ...)` is what `vaelab.explorer.create_app` returns for a translate
run. It shares the VAE explorer's page, static files, security headers, upload limit and error
handling (`vaelab.explorer.server`), and serves:

    GET  /api/meta                          run metadata (task "translate"): the page shows its section
    POST /api/translate                     multipart upload (+ samples, invert) -> input, mean prediction,
                                            samples, std map, the prior p(z | input) and a token
    GET  /api/translate/example/{index}     the same for test input `index` of the run (with its target)
    POST /api/translate/decode              {"token", "eps": [...]} -> PNG of the prediction at
                                            z = mean + std * eps of the prior net p(z | input)

A token names a translated input for the sliders; the last MAX_TOKENS are kept (oldest dropped).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import io
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from vaelab.data.images import decode_image
from vaelab.errors import DataError, VaelabError
from vaelab.explorer.codec import data_url, png_bytes
from vaelab.explorer.session import MAX_UPLOAD_BYTES, InputError
from vaelab.translate.figures import as_uint8, std_map

MAX_SAMPLES = 16  # samples per translate request
MAX_TOKENS = 32  # translated inputs kept for the z sliders
MAX_EXAMPLES = 500  # test inputs offered as examples
EPS_LIMIT = 5.0  # slider values: prior standard deviations from the prior mean
DEFAULT_SAMPLES = 8


class TranslateMeta(BaseModel):
    """GET /api/meta of a translate run: what the page needs to build its section."""
    task: str = Field(description="'translate': an image-to-image run")
    name: str
    dataset: Optional[str]
    arch: Optional[str]
    likelihood: Optional[str]
    latent_dim: int
    image_shape: list[int] = Field(description="the target's [C, H, W]")
    input_shape: list[int] = Field(description="the input's [C, H, W]")
    degradation: Optional[str] = Field(description="how the run's inputs were made from clean images, if synthetic")
    examples: int = Field(description="test inputs available at /api/translate/example/{index}")
    examples_note: Optional[str]
    max_samples: int
    eps_limit: float
    max_upload_bytes: int


class Translated(BaseModel):
    """An input's translation: images as PNG data URLs, the prior net's Gaussian, a token for the sliders."""
    token: str = Field(description="names this input for POST /api/translate/decode")
    input: str
    mean: str = Field(description="the mean of the samples: the prediction")
    samples: list[str]
    std: str = Field(description="the per-pixel std (RMS over channels), colour-mapped from 0 to std_max")
    std_max: float
    mean_std: float
    target: Optional[str] = Field(default=None, description="the target (examples only)")
    prior_mean: list[float] = Field(description="mean of p(z | input)")
    prior_std: list[float] = Field(description="standard deviation of p(z | input)")


EpsValue = Annotated[float, Field(ge=-EPS_LIMIT, le=EPS_LIMIT, allow_inf_nan=False)]
Token = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$", description="a token from /api/translate")]


class DecodeZ(BaseModel):
    """POST /api/translate/decode: z = prior mean + prior std * eps for the input named by `token`."""
    token: Token
    eps: Annotated[list[EpsValue], Field(min_length=1, max_length=4096)] = Field(
        description=f"one value per latent dimension, in prior standard deviations (|eps| <= {EPS_LIMIT:g})")


def std_colours(spread: np.ndarray, vmax: float) -> np.ndarray:
    """A std map (H, W) -> uint8 RGB (3, H, W) through matplotlib's magma, 0..vmax."""
    from matplotlib import colormaps

    rgb = colormaps["magma"](np.clip(spread / max(vmax, 1e-12), 0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8).transpose(2, 0, 1)


class TranslateSession:
    """A translate model for the explorer: uploads and examples in, predictions out; every request checked."""

    def __init__(self, model, *, name: str = "model", examples=None, examples_note: Optional[str] = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.model = model.eval()
        self.name = name
        self.examples = examples  # EvalPairs of test inputs and targets, or None
        self.examples_note = examples_note
        self.max_upload_bytes = int(max_upload_bytes)
        self.tokens: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.lock = threading.Lock()  # one model call at a time; guards the tokens

    def meta(self) -> dict[str, Any]:
        cfg = getattr(self.model, "run_config", None)
        degradation = None
        if cfg is not None and cfg.data.degrade is not None:
            from vaelab.data.degrade import Degradation

            degradation = Degradation(cfg.data.degrade).describe()
        return {"task": "translate", "name": self.name, "dataset": cfg.data.dataset if cfg else None,
                "arch": cfg.model.arch if cfg else None, "likelihood": cfg.model.likelihood if cfg else None,
                "latent_dim": int(self.model.latent_dim), "image_shape": list(self.model.image_shape),
                "input_shape": list(self.model.input_shape), "degradation": degradation,
                "examples": 0 if self.examples is None else len(self.examples), "examples_note": self.examples_note,
                "max_samples": MAX_SAMPLES, "eps_limit": EPS_LIMIT, "max_upload_bytes": self.max_upload_bytes}

    def check_samples(self, samples: int) -> int:
        if not 1 <= samples <= MAX_SAMPLES:
            raise InputError(f"samples must be between 1 and {MAX_SAMPLES}, got {samples}")
        return samples

    def read_upload(self, data: bytes, invert: bool) -> torch.Tensor:
        """Uploaded bytes -> the input as the model sees it, float (1, C_in, H, W)."""
        if len(data) > self.max_upload_bytes:
            raise InputError(f"upload is {len(data)} bytes; the limit is {self.max_upload_bytes}", status=413)
        if not data:
            raise InputError("upload is empty")
        channels, height, width = self.model.input_shape
        if height != width:
            raise InputError(f"uploads need a square model input; this model takes {height}×{width} images")
        try:
            image = decode_image(io.BytesIO(data), height, channels, "upload")  # uint8 (C, H, W)
        except DataError as exc:
            raise InputError(str(exc)) from None
        if invert:
            image = 255 - image
        return torch.tensor(image, dtype=torch.float32)[None] / 255.0

    def example(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Test input `index` (1, C_in, H, W) and its target (1, C, H, W)."""
        count = 0 if self.examples is None else len(self.examples)
        if not 0 <= index < count:
            note = f" ({self.examples_note})" if self.examples_note else ""
            raise InputError(f"example {index} is out of range: there are {count} (0..{count - 1}){note}", status=404)
        return self.examples.inputs[index : index + 1], self.examples.targets[0, index : index + 1]

    @torch.inference_mode()
    def translate(self, x: torch.Tensor, samples: int, target: Optional[torch.Tensor] = None) -> dict[str, Any]:
        """One input (1, C_in, H, W) -> the `Translated` payload (and a new token)."""
        samples = self.check_samples(samples)
        device = self.model.device
        with self.lock:
            generator = torch.Generator().manual_seed(0)  # the same input shows the same samples
            out = self.model.translate(x.to(device), samples, generator)
            prior = self.model.prior_given(x.to(device))
            token = secrets.token_hex(8)
            self.tokens[token] = (x.to(device), prior.mean[0].float(), prior.std[0].float())
            while len(self.tokens) > MAX_TOKENS:
                self.tokens.popitem(last=False)
        spread = std_map(out.std[0].float().cpu()).numpy()  # (H, W)
        vmax = float(spread.max())
        return {
            "token": token, "input": data_url(png_bytes(as_uint8(x)[0])),
            "mean": data_url(png_bytes(as_uint8(out.mean)[0])),
            "samples": [data_url(png_bytes(image)) for image in as_uint8(out.samples[:, 0])],
            "std": data_url(png_bytes(std_colours(spread, vmax))), "std_max": vmax, "mean_std": float(spread.mean()),
            "target": None if target is None else data_url(png_bytes(as_uint8(target)[0])),
            "prior_mean": prior.mean[0].tolist(), "prior_std": prior.std[0].tolist(),
        }

    @torch.inference_mode()
    def decode(self, token: str, eps: list[float]) -> bytes:
        """The prediction at z = prior mean + prior std * eps for the input named by `token` -> PNG."""
        with self.lock:
            entry = self.tokens.get(token)
            if entry is None:
                raise InputError("unknown or expired token: translate the image again", status=404)
            self.tokens.move_to_end(token)
            x, mean, std = entry
            if len(eps) != len(mean):
                raise InputError(f"eps must have {len(mean)} values (the latent dimension), got {len(eps)}")
            z = mean + std * torch.tensor(eps, dtype=mean.dtype, device=mean.device)
            image = self.model.decode_images(z[None], x)
        return png_bytes(as_uint8(image)[0])


def _examples(model, data_dir: Optional[str | Path], run_dir: Optional[Path]):
    """The run's first MAX_EXAMPLES test pairs (degraded inputs drawn once), or (None, why not)."""
    from vaelab.data import load_data
    from vaelab.explorer.session import _resolve_data_config
    from vaelab.translate.evaluate import fixed_pairs

    cfg = getattr(model, "run_config", None)
    if cfg is None:
        return None, "no run config: upload images instead"
    try:
        data = load_data(_resolve_data_config(cfg.data, data_dir, run_dir))
    except VaelabError as exc:
        return None, f"the run's data could not be loaded ({exc}); upload images instead"
    return fixed_pairs(data.test, "test", max_images=MAX_EXAMPLES), None


def create_translate_app(model, *, name: str = "model", run_dir: Optional[Path] = None,
                         data_dir: Optional[str | Path] = None, examples=None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                         allowed_hosts=None) -> FastAPI:
    """The explorer app of a translate run (see the module docstring); `examples` (EvalPairs)
    replaces the run's test split."""
    from vaelab.explorer.server import STATIC_DIR, guard_app

    note = None
    if examples is None:
        examples, note = _examples(model, data_dir, run_dir)
    session = TranslateSession(model, name=name, examples=examples, examples_note=note,
                               max_upload_bytes=max_upload_bytes)
    app = FastAPI(title="vaelab explorer (image to image)", version="1", docs_url=None, redoc_url=None,
                  description="Translate uploaded or test images with an image-to-image run: the mean prediction, "
                              "samples, the uncertainty map and the prediction along z ~ p(z | input).")
    app.state.session = session
    guard_app(app, max_upload_bytes, allowed_hosts)
    from vaelab.explorer.schemas import ErrorMessage

    responses = {code: {"model": ErrorMessage} for code in (404, 413, 422)}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/meta", response_model=TranslateMeta, summary="Run metadata (an image-to-image run)")
    def meta() -> dict[str, Any]:
        return session.meta()

    @app.post("/api/translate", response_model=Translated, responses=responses,
              summary="Translate an uploaded image (PNG, JPEG, TIFF, BMP, ...)")
    async def translate_upload(
        file: Annotated[UploadFile, File(description=f"the input image, at most {max_upload_bytes} bytes")],
        samples: Annotated[int, Form(ge=1, le=MAX_SAMPLES, description="samples z ~ p(z | input)")] = DEFAULT_SAMPLES,
        invert: Annotated[bool, Form(description="invert grey values (dark ink on light paper)")] = False,
    ) -> dict[str, Any]:
        data = await file.read(max_upload_bytes + 1)
        x = session.read_upload(data, invert)
        return await run_in_threadpool(session.translate, x, samples)

    @app.get("/api/translate/example/{index}", response_model=Translated, responses=responses,
             summary="Translate test input `index` of the run (its target included)")
    async def translate_example(
        index: Annotated[int, PathParam(ge=0)],
        samples: Annotated[int, Query(ge=1, le=MAX_SAMPLES)] = DEFAULT_SAMPLES,
    ) -> dict[str, Any]:
        x, target = session.example(index)
        return await run_in_threadpool(session.translate, x, samples, target)

    @app.post("/api/translate/decode", response_class=Response, responses={**responses, 200: {
        "content": {"image/png": {}}, "description": "the prediction at that z (PNG)"}},
        summary="The prediction at z = prior mean + prior std * eps")
    async def translate_decode(request: DecodeZ) -> Response:
        png = await run_in_threadpool(session.decode, request.token, request.eps)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    return app

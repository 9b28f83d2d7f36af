"""The explorer's FastAPI app: one page, static assets served locally, and a JSON + PNG API.

    GET  /                          the page (static/index.html)
    GET  /api/meta                  run metadata: latent size, labels, dimensions ranked by KL
    GET  /api/map                   the mapped split's 2-D coordinates, labels and projection
    POST /api/decode                {"z": [...], "label": k?} -> image/png
    POST /api/decode/batch          {"z": [[...], ...]} -> PNGs as data URLs (interpolation strips)
    POST /api/encode                multipart upload -> code, map position, reconstruction
    POST /api/anomaly               multipart upload -> anomaly scores, percentiles, maps (anomaly_view.py)
    GET  /api/sample?seed=N         one draw from the model's own prior
    GET  /api/data/{index}          image `index` of the mapped split with its code
    GET  /api/data/{index}/image.png

An image-to-image run (--task translate) gets its own app instead (`FAMILY_APPS`,
explorer/translate.py): the same page, which then shows its image-to-image section.

Every request value is validated (see `session.py` and `schemas.py`); a bad one gets a 4xx with
a one-line `detail`, never a 500. Request bodies larger than the upload limit are cut off with a
413 while they are still arriving. Responses carry a Content-Security-Policy that allows nothing
outside this server, so the page cannot make an external request even by mistake.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime, and
# the routes are closures whose annotations use local values (the upload limit).
import asyncio
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from vaelab.errors import VaelabError
from vaelab.explorer.anomaly_view import service_for
from vaelab.explorer.batcher import DecodeBatcher
from vaelab.explorer.codec import data_url, png_bytes
from vaelab.explorer.schemas import (
    AnomalyResponse,
    BatchDecodeRequest,
    BatchDecodeResponse,
    DataItem,
    DecodeRequest,
    EncodeResponse,
    ErrorMessage,
    MapPoints,
    Meta,
    PriorSample,
)
from vaelab.explorer.session import (
    DEFAULT_MAX_POINTS,
    DEFAULT_SLIDER_DIMS,
    MAX_UPLOAD_BYTES,
    ExplorerSession,
    InputError,
)
from vaelab.models import family_of

STATIC_DIR = Path(__file__).parent / "static"


def _translate_app(model, **kwargs):
    from vaelab.explorer.translate import create_translate_app

    return create_translate_app(model, **kwargs)


# Model family -> its explorer app (the VAE's is `create_app` itself).
FAMILY_APPS = {"translate": _translate_app}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "the decoded image (PNG)"}}
ERRORS = {code: {"model": ErrorMessage} for code in (404, 413, 422)}


def guard_app(app: FastAPI, max_upload_bytes: int, allowed_hosts: Optional[Sequence[str]]) -> None:
    """What every explorer app shares: the body limit, the security headers, the Host check
    against DNS rebinding, one-line JSON errors and the static files."""
    # The body may exceed the file by the multipart framing; the file itself is checked exactly.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes + 64 * 1024,
                       message=f"request body too large: uploads are limited to {max_upload_bytes} bytes")
    app.add_middleware(SecurityHeadersMiddleware)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def create_app(source, *, split=None, class_names: Optional[Sequence[str]] = None,
               data_dir: Optional[str | Path] = None, device: str | torch.device = "cpu",
               max_points: int = DEFAULT_MAX_POINTS, slider_dims: int = DEFAULT_SLIDER_DIMS,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_batch: int = 64,
               allowed_hosts: Optional[Sequence[str]] = None) -> FastAPI:
    """The explorer app for a run folder (or an already loaded model).

    `split` is the data to map (default: the run's test split, loaded via its config; `data_dir`
    overrides where it lives); `allowed_hosts` restricts the Host header (the CLI passes the
    loopback names when it serves on loopback, which blocks DNS-rebinding pages).
    """
    if isinstance(source, (str, Path)):
        import vaelab

        run_dir = Path(source)
        model, name = vaelab.load(run_dir, device=device), run_dir.name
    else:
        run_dir, model, name = None, source, "model"
    family_app = FAMILY_APPS.get(family_of(model))
    if family_app is not None:  # another model family's explorer (its own endpoints and page section)
        return family_app(model, name=name, run_dir=run_dir, data_dir=data_dir, max_upload_bytes=max_upload_bytes,
                          allowed_hosts=allowed_hosts)
    session = ExplorerSession.from_model(
        model, split=split, class_names=class_names, data_dir=data_dir, run_dir=run_dir, name=name,
        max_points=max_points, slider_dims=slider_dims, max_upload_bytes=max_upload_bytes)
    batcher_box: list[Optional[DecodeBatcher]] = [None]

    def batcher() -> DecodeBatcher:
        # Created on first use (and again after a shutdown), so a restarted app still decodes.
        if batcher_box[0] is None:
            batcher_box[0] = DecodeBatcher(session.decode_pngs, max_batch=max_batch)
        return batcher_box[0]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if batcher_box[0] is not None:
            batcher_box[0].close()
            batcher_box[0] = None

    app = FastAPI(title="vaelab explorer", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Decode latent vectors, encode images and browse the latent map of a trained VAE. "
                              "The interactive API pages are off because they load scripts from a CDN; "
                              "the schema is at /openapi.json.")
    app.state.session = session
    app.state.batcher = batcher
    guard_app(app, max_upload_bytes, allowed_hosts)
    map_response = JSONResponse(_map_payload(session))  # rendered once: the map never changes

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/meta", response_model=Meta, summary="Run metadata")
    def meta() -> dict[str, Any]:
        return session.meta()

    @app.get("/api/map", response_model=MapPoints, summary="The latent map of the mapped split")
    def latent_map() -> Response:
        return Response(map_response.body, media_type="application/json")

    @app.post("/api/decode", response_class=Response, responses={**PNG_RESPONSE, **ERRORS},
              summary="Decode one latent vector to a PNG")
    async def decode(request: DecodeRequest) -> Response:
        z = session.check_latent(request.z)
        label = session.check_label(request.label)
        png = await asyncio.wrap_future(batcher().submit(z, label))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/decode/batch", response_model=BatchDecodeResponse, responses=ERRORS,
              summary="Decode up to 64 latent vectors; PNGs as data URLs")
    async def decode_batch(request: BatchDecodeRequest) -> dict[str, Any]:
        rows = [session.check_latent(z, f"z[{i}]") for i, z in enumerate(request.z)]
        label = session.check_label(request.label)
        pngs = await asyncio.gather(*(asyncio.wrap_future(batcher().submit(z, label)) for z in rows))
        return {"images": [data_url(png) for png in pngs]}

    @app.post("/api/encode", response_model=EncodeResponse, responses=ERRORS,
              summary="Encode an uploaded image (PNG, JPEG, TIFF, BMP, ...)")
    async def encode(
        file: Annotated[UploadFile, File(description=f"the image, at most {max_upload_bytes} bytes")],
        label: Annotated[Optional[int], Form(ge=0, description="class label (conditional runs only)")] = None,
        invert: Annotated[bool, Form(description="invert grey values (dark ink on light paper)")] = False,
    ) -> dict[str, Any]:
        data = await file.read(max_upload_bytes + 1)
        label = session.check_label(label)
        result = await run_in_threadpool(session.encode_upload, data, label, invert)
        return {"z": result.mean.tolist(), "log_var": result.log_var.tolist(), "coords": result.coords.tolist(),
                "label": label, "input": data_url(png_bytes(result.image)),
                "reconstruction": data_url(png_bytes(result.reconstruction))}

    anomaly = service_for(session, model, run_dir, data_dir)  # its reference is built on first use

    @app.post("/api/anomaly", response_model=AnomalyResponse, responses=ERRORS,
              summary="Anomaly scores (with percentiles among normal training images) and maps of an upload")
    async def anomaly_scores(
        file: Annotated[UploadFile, File(description=f"the image, at most {max_upload_bytes} bytes")],
        invert: Annotated[bool, Form(description="invert grey values (dark ink on light paper)")] = False,
    ) -> dict[str, Any]:
        data = await file.read(max_upload_bytes + 1)
        return await run_in_threadpool(anomaly.analyse_upload, data, invert)
    @app.get("/api/sample", response_model=PriorSample, responses=ERRORS, summary="One draw from the model's prior")
    def prior_sample(seed: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0) -> dict[str, Any]:
        return {"z": session.prior_sample(seed), "seed": seed}

    @app.get("/api/data/{index}", response_model=DataItem, responses=ERRORS,
             summary="Image `index` of the mapped split, with its code")
    def data_item(index: Annotated[int, PathParam(ge=0)]) -> dict[str, Any]:
        image, label, mean = session.item(index)
        return {"index": index, "label": label, "z": mean.tolist(),
                "coords": session.projection(mean[None])[0].tolist(), "image": data_url(png_bytes(image))}

    @app.get("/api/data/{index}/image.png", response_class=Response, responses={**ERRORS, 200: {
        "content": {"image/png": {}}, "description": "the image (PNG)"}}, summary="Image `index` as a PNG")
    def data_image(index: Annotated[int, PathParam(ge=0)]) -> Response:
        image, _, _ = session.item(index)
        return Response(png_bytes(image), media_type="image/png")

    return app


def _map_payload(session: ExplorerSession) -> dict[str, Any]:
    """The static map, built once: rounded coordinates keep 10k points under 300 kB of JSON."""
    coords = session.coords.numpy().round(3)
    labels = session.encoded.labels
    return {
        "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(),
        "labels": None if labels is None else labels.tolist(),
        "projection": "identity" if session.latent_dim <= 2 else "pca",
        "center": session.projection.center.tolist(),
        "components": session.projection.components.tolist(),
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(VaelabError)
    async def vaelab_error(_request: Request, exc: VaelabError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable line ("z[3]: Input should be a finite number") plus FastAPI's usual list.
        parts = [f"{_where(err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in exc.errors()]
        errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts[:5]) or "invalid request", "errors": errors}, status_code=422)


def _where(loc: Sequence[Any]) -> str:
    """("body", "z", 3) -> "z[3]"."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "form"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`: at once from Content-Length, or as soon as the
    streamed body passes the limit (chunked uploads), before it is buffered or spooled to disk."""

    def __init__(self, app, max_bytes: int, message: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self.message}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing, so this becomes a 413.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    """Adds a CSP that allows only this origin (no CDN, no external request) and nosniff."""

    HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"))

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

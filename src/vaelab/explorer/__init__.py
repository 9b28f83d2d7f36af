"""The browser explorer: a local web page to steer a trained model's latent space.

`create_app(run_dir_or_model)` builds the FastAPI app (`server.py`); `vaelab explore RUN` serves it
with uvicorn on loopback. The explorer only *uses* a trained model (`vaelab.load`, `vaelab.latent`,
`vaelab.data`) and never imports the training code.

    session.py   the model + the mapped split: validation, encode, decode, the 2-D map
    anomaly_view.py  an upload's anomaly scores, percentiles and maps (POST /api/anomaly)
    batcher.py   micro-batching decode worker (one thread, inference mode)
    codec.py     uint8 image arrays <-> PNG bytes / data URLs
    schemas.py   the JSON request/response models (they document /openapi.json)
    server.py    the FastAPI app: routes, upload size limit, error handling, static files
    static/      index.html, app.js (+ anomaly.js, the anomaly panel), style.css: hand-written,
                 no build step, nothing external
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """Build the explorer's FastAPI app (see `vaelab.explorer.server.create_app`)."""
    from vaelab.explorer.server import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]

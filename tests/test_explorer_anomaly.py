"""The explorer's anomaly endpoint (POST /api/anomaly) through FastAPI's TestClient.

References: `vaelab.anomaly.score` called directly on the same image and the run's normal
training images, and numpy for the percentiles.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

import vaelab  # noqa: E402
from vaelab.anomaly import SCORE_NAMES, fit_reference, score  # noqa: E402
from vaelab.cli import main  # noqa: E402
from vaelab.data import load_data  # noqa: E402
from vaelab.explorer import create_app  # noqa: E402


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def normal_run(fake_mnist, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--train-classes", "0,1,2,3",
                 "--epochs", "2", "--batch-size", "16", "--hidden", "32,16", "--latent-dim", "3", "--out", str(run),
                 "--quiet"]) == 0
    return run


def test_upload_gets_scores_percentiles_and_maps(normal_run):
    client = TestClient(create_app(normal_run))
    bar = np.zeros((28, 28), np.uint8)
    bar[20:24, 4:24] = 255  # a bar lower than any normal class's (0..3 are near the top)
    response = client.post("/api/anomaly", files={"file": ("bar.png", _png(bar), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["name"] for s in body["scores"]] == list(SCORE_NAMES)
    model = vaelab.load(normal_run)
    train = load_data(model.run_config.data).train
    assert body["reference"]["images"] == len(train)  # the normal classes' training images only
    assert set(train.labels.tolist()) == {0, 1, 2, 3} and "classes 0,1,2,3" in body["reference"]["source"]
    # The same numbers as vaelab.anomaly.score on the image against the same reference.
    image = torch.from_numpy(bar)[None, None]
    direct = score(model, image, fit_reference(model, train.images), iw_samples=body["iw_samples"])
    for s in body["scores"]:
        assert s["value"] == pytest.approx(float(direct[s["name"]][0]), rel=1e-5, abs=1e-6), s["name"]
        assert 0 <= s["percentile"] <= 100
    got = {s["name"]: s for s in body["scores"]}
    assert got["nearest_neighbour_distance"]["percentile"] == 100.0  # farther than every normal image from its own
    for key in ("input", "reconstruction", "residual_map", "weighted_map"):
        png = Image.open(io.BytesIO(__import__("base64").b64decode(body[key].split(",", 1)[1])))
        assert png.size[0] >= 28 * 6, key
    assert body["weighted_scale"] > 0 and body["residual_scale"] > 0


def test_percentiles_place_a_normal_image_lower(normal_run):
    client = TestClient(create_app(normal_run))
    model = vaelab.load(normal_run)
    train = load_data(model.run_config.data).train
    normal = train.images[0, 0].numpy()
    odd = 255 - normal  # inverted: far from every training image
    rank = {}
    for name, image in (("normal", normal), ("odd", odd)):
        body = client.post("/api/anomaly", files={"file": ("x.png", _png(image), "image/png")}).json()
        rank[name] = {s["name"]: s["percentile"] for s in body["scores"]}
    # (Not the nearest neighbour: fake_mnist's images of one class are identical, so every normal
    # image, the upload included, is at distance 0 from its neighbour: all at the 100th percentile.)
    for name in ("recon_mse", "mean_image_distance", "nll"):
        assert rank["odd"][name] > rank["normal"][name], name


def test_bad_uploads_and_conditional_runs_are_4xx(normal_run, fake_mnist, tmp_path):
    client = TestClient(create_app(normal_run))
    assert client.post("/api/anomaly", files={"file": ("x.png", b"not an image", "image/png")}).status_code == 422
    assert client.post("/api/anomaly", files={"file": ("x.png", b"", "image/png")}).status_code == 422
    assert client.post("/api/anomaly").status_code == 422  # no file
    small = TestClient(create_app(normal_run, max_upload_bytes=100))
    big = _png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    assert small.post("/api/anomaly", files={"file": ("x.png", big, "image/png")}).status_code == 413
    cond = tmp_path / "cond"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--conditional", "--epochs", "1",
                 "--batch-size", "32", "--hidden", "16", "--out", str(cond), "--quiet"]) == 0
    response = TestClient(create_app(cond)).post(
        "/api/anomaly", files={"file": ("x.png", _png(np.zeros((28, 28), np.uint8)), "image/png")})
    assert response.status_code == 422 and "unconditional" in response.json()["detail"]

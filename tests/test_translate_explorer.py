"""The explorer of image-to-image runs (explorer/translate.py) through FastAPI's TestClient, against
the model's own `translate`, `prior_given` and `decode_images`; and a schemathesis fuzz of its API."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from vaelab.config import ModelConfig  # noqa: E402
from vaelab.explorer import create_app  # noqa: E402
from vaelab.explorer.translate import create_translate_app  # noqa: E402
from vaelab.models import build_model  # noqa: E402
from vaelab.translate.evaluate import EvalPairs  # noqa: E402


@pytest.fixture(autouse=True)
def _no_flush_to_zero_left_behind():
    """`vaelab train` in this process turns subnormal flushing on first (vaelab.runtime); a run that
    fails before training leaves it on, and later tests (hypothesis' floats) would see it."""
    yield
    torch.set_flush_denormal(False)



def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", task="translate", latent_dim=3, hidden=[4, 8], image_shape=[1, 16, 16])
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.prior_net.head.bias[3:].fill_(1.0)  # a visible spread of z
    return model


def examples(n: int = 5) -> EvalPairs:
    gen = torch.Generator().manual_seed(1)
    targets = torch.rand(n, 1, 16, 16, generator=gen)
    return EvalPairs((targets + 0.1 * torch.randn(targets.shape, generator=gen)).clamp(0, 1), targets[None], "test")


@pytest.fixture(scope="module")
def client():
    model = tiny_model()
    return TestClient(create_translate_app(model, examples=examples())), model


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def from_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_meta_says_translate(client):
    c, model = client
    meta = c.get("/api/meta").json()
    assert meta["task"] == "translate" and meta["latent_dim"] == 3 and meta["examples"] == 5
    assert meta["image_shape"] == [1, 16, 16] and meta["input_shape"] == [1, 16, 16]
    assert c.get("/").status_code == 200 and c.get("/static/translate.js").status_code == 200


def test_upload_gives_the_models_translation(client):
    c, model = client
    image = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    r = c.post("/api/translate", files={"file": ("x.png", png(image), "image/png")}, data={"samples": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    x = torch.tensor(image, dtype=torch.float32)[None, None] / 255
    want = model.translate(x, 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(from_url(body["mean"]) / 255, want.mean[0, 0].numpy(), atol=0.5 / 255 + 1e-6)
    assert len(body["samples"]) == 4 and body["target"] is None
    assert body["std_max"] == pytest.approx(float(want.std.max()), rel=1e-5)
    assert from_url(body["std"]).shape == (16, 16, 3)  # colour-mapped
    prior = model.prior_given(x)
    np.testing.assert_allclose(body["prior_mean"], prior.mean[0].tolist(), rtol=1e-5, atol=1e-6)
    # The sliders: eps = 0 is the prior mean; eps = 1 moves z by one prior std per dimension.
    for eps in ([0.0, 0.0, 0.0], [1.0, -0.5, 2.0]):
        r = c.post("/api/translate/decode", json={"token": body["token"], "eps": eps})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        z = prior.mean + prior.std * torch.tensor([eps])
        want_image = model.decode_images(z, x)[0, 0].numpy()
        np.testing.assert_allclose(np.asarray(Image.open(io.BytesIO(r.content))) / 255, want_image,
                                   atol=0.5 / 255 + 1e-6)


def test_examples_include_their_target(client):
    c, _ = client
    body = c.get("/api/translate/example/2?samples=2").json()
    np.testing.assert_allclose(from_url(body["target"]) / 255, examples().targets[0, 2, 0].numpy(), atol=0.5 / 255)
    assert len(body["samples"]) == 2


@pytest.mark.parametrize("request_kind, status, message", [
    ("bad_token", 404, "unknown or expired token"),
    ("malformed_token", 422, "token"),
    ("eps_length", 422, "eps must have 3 values"),
    ("eps_range", 422, "eps"),
    ("samples", 422, "samples"),
    ("empty", 422, "upload is empty"),
    ("not_image", 422, "not a readable image"),
    ("example", 404, "out of range"),
])
def test_bad_requests_are_one_line_4xx(client, request_kind, status, message):
    c, _ = client
    good = c.get("/api/translate/example/0?samples=1").json()["token"]
    if request_kind == "bad_token":
        r = c.post("/api/translate/decode", json={"token": "0" * 16, "eps": [0, 0, 0]})
    elif request_kind == "malformed_token":
        r = c.post("/api/translate/decode", json={"token": "../../etc", "eps": [0, 0, 0]})
    elif request_kind == "eps_length":
        r = c.post("/api/translate/decode", json={"token": good, "eps": [0, 0]})
    elif request_kind == "eps_range":
        r = c.post("/api/translate/decode", json={"token": good, "eps": [0, 99, 0]})
    elif request_kind == "samples":
        r = c.post("/api/translate", files={"file": ("x.png", png(np.zeros((16, 16), np.uint8)), "image/png")},
                   data={"samples": "0"})
    elif request_kind == "empty":
        r = c.post("/api/translate", files={"file": ("x.png", b"", "image/png")})
    elif request_kind == "not_image":
        r = c.post("/api/translate", files={"file": ("x.png", b"hello", "image/png")})
    else:
        r = c.get("/api/translate/example/99")
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_create_app_dispatches_translate_runs(tmp_path, fake_mnist):
    from vaelab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "translate", "--arch", "unet", "--hidden", "4,8", "--latent-dim", "2",
                 "--dataset", "mnist", "--data-dir", str(fake_mnist), "--degrade", "downsample=2", "--epochs", "1",
                 "--batch-size", "32", "--out", str(run), "--quiet"]) == 0
    c = TestClient(create_app(run))
    meta = c.get("/api/meta").json()
    assert meta["task"] == "translate" and meta["examples"] == 40 and "downsampling" in meta["degradation"]
    assert c.get("/api/map").status_code == 404  # the VAE endpoints are not there
    assert c.get("/api/translate/example/39?samples=1").status_code == 200


schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

schema = schemathesis.openapi.from_asgi("/openapi.json", create_translate_app(tiny_model(), examples=examples()))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_translate_api_has_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])

"""The explorer's HTTP API through FastAPI's TestClient, on runs trained here on `fake_mnist`.

References are independent of the server code: the model's own encode/decode, scikit-learn's PCA,
`torch.distributions` for the per-dimension KL, and PIL for reading the PNGs back.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

import vaelab  # noqa: E402
from vaelab.cli import main  # noqa: E402
from vaelab.cli.explore_cmd import LOOPBACK_NAMES, is_loopback  # noqa: E402
from vaelab.data import load_data  # noqa: E402
from vaelab.explorer import create_app  # noqa: E402

STATIC = Path(vaelab.__file__).parent / "explorer" / "static"

# Runs are trained once per test session (the first test that asks for them), on the fake_mnist
# folder of that test, which lives until the session ends.
_RUNS: dict[str, Path] = {}
_APPS: dict[str, object] = {}


def _train(out: Path, data_dir: Path, *extra: str) -> Path:
    code = main(["train", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
                 "--hidden", "32,16", "--out", str(out), "--quiet", *extra])
    assert code == 0
    return out


@pytest.fixture
def runs(fake_mnist, tmp_path_factory) -> dict[str, Path]:
    if not _RUNS:
        base = tmp_path_factory.mktemp("explorer-runs")
        _RUNS["plain"] = _train(base / "plain", fake_mnist)  # 2-D latent, unconditional
        _RUNS["cond"] = _train(base / "cond", fake_mnist, "--latent-dim", "5", "--conditional")
    return _RUNS


@pytest.fixture
def plain(runs) -> TestClient:
    if "plain" not in _APPS:
        _APPS["plain"] = TestClient(create_app(runs["plain"]))
    return _APPS["plain"]


@pytest.fixture
def cond(runs) -> TestClient:
    # Only 3 of the 5 dimensions get sliders, to exercise the ranking by KL.
    if "cond" not in _APPS:
        _APPS["cond"] = TestClient(create_app(runs["cond"], slider_dims=3))
    return _APPS["cond"]


def model_and_test(run: Path):
    model = vaelab.load(run)
    return model, load_data(model.run_config.data).test


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img)


def data_url_array(url: str) -> np.ndarray:
    import base64

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return png_array(base64.b64decode(url[len(prefix):]))


def expected_image(model, z, label=None) -> np.ndarray:
    """The model's decoded mean for z (D,), as the uint8 (H, W) a PNG of it must hold."""
    y = None if label is None else torch.tensor([label])
    x = model.decode_images(torch.tensor([z], dtype=torch.float32), y)[0, 0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def png_upload(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


# ---- what the endpoints return ---------------------------------------------------------------------


def test_meta_describes_the_run_and_ranks_dimensions_by_kl(runs, plain, cond):
    meta = plain.get("/api/meta").json()
    assert meta["latent_dim"] == 2 and meta["image_shape"] == [1, 28, 28]
    assert meta["conditional"] is False and meta["projection"] == "identity"
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["split_size"] == 40
    assert meta["z_limit"] == 10 and meta["max_upload_bytes"] == 5 * 1024 * 1024

    meta = cond.get("/api/meta").json()
    assert meta["conditional"] is True and meta["num_classes"] == 10 and meta["projection"] == "pca"
    model, test = model_and_test(runs["cond"])
    with torch.no_grad():
        q = model.encode(test.images.float() / 255, test.labels)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, (0.5 * q.log_var).exp()),
                                           torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert meta["kl_per_dim"] == pytest.approx(kl.tolist(), abs=1e-4)
    order = torch.argsort(kl, descending=True).tolist()
    assert meta["dims_by_kl"] == order and meta["slider_dims"] == order[:3]


def test_map_of_a_2d_latent_is_the_posterior_means(runs, plain):
    points = plain.get("/api/map").json()
    model, test = model_and_test(runs["plain"])
    with torch.no_grad():
        mean = model.encode(test.images.float() / 255).mean
    assert points["projection"] == "identity"
    np.testing.assert_allclose(np.c_[points["x"], points["y"]], mean.numpy(), atol=1e-3)
    assert points["labels"] == test.labels.tolist()


def test_map_of_a_larger_latent_is_the_pca_of_the_means(runs, cond):
    from sklearn.decomposition import PCA

    points = cond.get("/api/map").json()
    model, test = model_and_test(runs["cond"])
    with torch.no_grad():
        mean = model.encode(test.images.float() / 255, test.labels).mean.numpy()
    reference = PCA(n_components=2).fit_transform(mean)
    coords = np.c_[points["x"], points["y"]]
    signs = np.sign((coords * reference).sum(0))  # PCA directions are defined up to sign
    np.testing.assert_allclose(coords, reference * signs, atol=2e-3)
    components = np.array(points["components"])
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(points["center"], mean.mean(0), atol=1e-5)


def test_decode_returns_the_models_image_as_png(runs, plain, cond):
    model = vaelab.load(runs["plain"])
    for z in ([0.0, 0.0], [1.5, -2.25], [-10.0, 10.0]):
        response = plain.post("/api/decode", json={"z": z})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        np.testing.assert_allclose(png_array(response.content), expected_image(model, z), atol=1)

    model = vaelab.load(runs["cond"])
    z = [0.3, -0.7, 1.1, 0.0, -1.9]
    images = []
    for label in (2, 7):
        response = cond.post("/api/decode", json={"z": z, "label": label})
        assert response.status_code == 200
        images.append(png_array(response.content))
        np.testing.assert_allclose(images[-1], expected_image(model, z, label), atol=1)
    assert not np.array_equal(images[0], images[1])  # the label changes the image


def test_batch_decode_matches_single_decodes(runs, plain):
    model = vaelab.load(runs["plain"])
    zs = [[t, -t] for t in np.linspace(-3, 3, 7).tolist()]
    response = plain.post("/api/decode/batch", json={"z": zs})
    assert response.status_code == 200
    images = response.json()["images"]
    assert len(images) == len(zs)
    for url, z in zip(images, zs):
        np.testing.assert_allclose(data_url_array(url), expected_image(model, z), atol=1)


def test_batcher_gives_every_caller_its_own_image_and_batches(runs, plain):
    plain.get("/api/meta")
    session = plain.app.state.session
    batcher = plain.app.state.batcher()
    zs = torch.linspace(-4, 4, 96).reshape(48, 2)
    before_batches, before_items = batcher.batches, batcher.items
    futures = [batcher.submit(z.tolist()) for z in zs]  # queued faster than the worker drains them
    results = [f.result(timeout=10) for f in futures]
    assert batcher.items - before_items == 48
    assert batcher.batches - before_batches < 48  # at least some requests shared a forward pass
    for z, png in zip(zs, results):
        np.testing.assert_allclose(png_array(png), session.decode_uint8(z[None])[0, 0], atol=1)


def test_data_item_and_its_png(runs, plain, cond):
    model, test = model_and_test(runs["plain"])
    item = plain.get("/api/data/5").json()
    assert item["index"] == 5 and item["label"] == int(test.labels[5])
    np.testing.assert_array_equal(data_url_array(item["image"]), test.images[5, 0].numpy())
    with torch.no_grad():
        mean = model.encode(test.images[5:6].float() / 255).mean[0]
    np.testing.assert_allclose(item["z"], mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(item["coords"], mean.numpy(), atol=1e-5)  # identity map for 2-D
    response = plain.get("/api/data/5/image.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(png_array(response.content), test.images[5, 0].numpy())

    model, test = model_and_test(runs["cond"])
    item = cond.get("/api/data/39").json()
    with torch.no_grad():
        mean = model.encode(test.images[39:40].float() / 255, test.labels[39:40]).mean[0]
    np.testing.assert_allclose(item["z"], mean.numpy(), atol=1e-5)


def test_encode_an_upload_gives_its_code_position_and_reconstruction(runs, plain):
    model, test = model_and_test(runs["plain"])
    image = test.images[3, 0].numpy()
    response = plain.post("/api/encode", files={"file": ("digit.png", png_upload(image), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    x = torch.from_numpy(image)[None, None].float() / 255
    with torch.no_grad():
        mean = model.encode(x).mean[0]
    np.testing.assert_allclose(body["z"], mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["coords"], mean.numpy(), atol=1e-5)
    np.testing.assert_array_equal(data_url_array(body["input"]), image)
    recon = (model.reconstruct(x)[0, 0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_allclose(data_url_array(body["reconstruction"]), recon, atol=1)


def test_encode_converts_size_and_mode_and_can_invert(plain):
    rgb = np.zeros((56, 56, 3), np.uint8)
    rgb[10:46, 20:36] = (255, 255, 255)
    response = plain.post("/api/encode", files={"file": ("big.jpg", png_upload(rgb, "JPEG"), "image/jpeg")})
    assert response.status_code == 200, response.text
    converted = data_url_array(response.json()["input"])
    assert converted.shape == (28, 28)  # grey, resized to the model's input
    assert converted[14, 14] > 200 and converted[2, 2] < 30

    grey = np.full((28, 28), 230, np.uint8)
    grey[5:20, 10:14] = 10
    response = plain.post("/api/encode", files={"file": ("ink.png", png_upload(grey), "image/png")},
                          data={"invert": "true"})
    assert response.status_code == 200
    np.testing.assert_array_equal(data_url_array(response.json()["input"]), 255 - grey)


def test_conditional_encode_uses_the_label(runs, cond):
    model, test = model_and_test(runs["cond"])
    image = test.images[0, 0].numpy()
    x = torch.from_numpy(image)[None, None].float() / 255
    for label in (1, 8):
        response = cond.post("/api/encode", files={"file": ("d.png", png_upload(image), "image/png")},
                             data={"label": str(label)})
        assert response.status_code == 200, response.text
        with torch.no_grad():
            mean = model.encode(x, torch.tensor([label])).mean[0]
        np.testing.assert_allclose(response.json()["z"], mean.numpy(), atol=1e-5)
        assert response.json()["label"] == label


# ---- every invalid input is a 4xx with a message ---------------------------------------------------


def post_raw(client, path, text):
    return client.post(path, content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize("text, needle", [
    ('{"z": [0.1, 0.2, 0.3]}', "must have 2 values"),
    ('{"z": [0.1]}', "must have 2 values"),
    ('{"z": []}', "z"),
    ('{"z": [NaN, 0]}', "finite"),
    ('{"z": [Infinity, 0]}', "finite"),
    ('{"z": [0, -Infinity]}', "finite"),
    ('{"z": [0, 1e400]}', "finite"),
    ('{"z": [10.5, 0]}', "less than or equal to 10"),
    ('{"z": [0, -11]}', "greater than or equal to -10"),
    ('{"z": ["a", 0]}', "z[0]"),
    ('{"z": [0, 0], "label": 3}', "not conditional"),
    ('{"w": [0, 0]}', "z"),
    ('[0, 0]', "request"),
    ('not json', "JSON"),
])
def test_decode_refuses_bad_vectors(plain, text, needle):
    response = post_raw(plain, "/api/decode", text)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and needle in detail


@pytest.mark.parametrize("body, needle", [
    ({"z": [0, 0, 0, 0, 0]}, "conditional: give a 'label'"),
    ({"z": [0, 0, 0, 0, 0], "label": 10}, "label must be in 0..9"),
    ({"z": [0, 0, 0, 0, 0], "label": -1}, "greater than or equal to 0"),
    ({"z": [0, 0, 0, 0, 0], "label": "two"}, "label"),
    ({"z": [0, 0, 0, 0], "label": 1}, "must have 5 values"),
])
def test_conditional_decode_refuses_bad_labels(cond, body, needle):
    response = cond.post("/api/decode", json=body)
    assert response.status_code == 422
    assert needle in response.json()["detail"]


def test_batch_decode_refuses_bad_rows_and_too_many(plain):
    response = plain.post("/api/decode/batch", json={"z": [[0, 0], [0, 0, 0]]})
    assert response.status_code == 422 and "z[1] must have 2 values" in response.json()["detail"]
    response = plain.post("/api/decode/batch", json={"z": [[0, 0]] * 65})
    assert response.status_code == 422
    response = post_raw(plain, "/api/decode/batch", '{"z": [[0, 0], [NaN, 0]]}')
    assert response.status_code == 422 and "finite" in response.json()["detail"]
    assert plain.post("/api/decode/batch", json={"z": []}).status_code == 422


@pytest.mark.parametrize("path, status", [
    ("/api/data/40", 404), ("/api/data/100000", 404), ("/api/data/-1", 422), ("/api/data/abc", 422),
    ("/api/data/1.5", 422), ("/api/data/40/image.png", 404), ("/api/data/-3/image.png", 422),
])
def test_bad_data_index(plain, path, status):
    response = plain.get(path)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)
    if status == 404:
        assert "out of range" in response.json()["detail"] and "0..39" in response.json()["detail"]


@pytest.mark.parametrize("payload, needle", [
    (b"hello, this is not an image", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),  # a PNG signature and nothing valid
    (b"", "empty"),
])
def test_encode_refuses_files_that_are_not_images(plain, payload, needle):
    response = plain.post("/api/encode", files={"file": ("x.png", payload, "image/png")})
    assert response.status_code == 422
    assert needle in response.json()["detail"]


def test_encode_refuses_a_truncated_png(plain):
    data = png_upload(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    response = plain.post("/api/encode", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert response.status_code == 422 and "not a readable image" in response.json()["detail"]


def test_encode_refuses_missing_file_and_bad_labels(plain, cond):
    assert plain.post("/api/encode", data={"invert": "true"}).status_code == 422
    image = png_upload(np.zeros((28, 28), np.uint8))
    response = plain.post("/api/encode", files={"file": ("a.png", image, "image/png")}, data={"label": "3"})
    assert response.status_code == 422 and "not conditional" in response.json()["detail"]
    for label, needle in (("12", "0..9"), ("-2", "greater than or equal to 0"), ("x", "label")):
        response = cond.post("/api/encode", files={"file": ("a.png", image, "image/png")}, data={"label": label})
        assert response.status_code == 422 and needle in response.json()["detail"]
    response = cond.post("/api/encode", files={"file": ("a.png", image, "image/png")})
    assert response.status_code == 422 and "conditional" in response.json()["detail"]


def test_oversized_uploads_are_refused_with_413(runs, plain):
    big = b"\x00" * (5 * 1024 * 1024 + 1)
    response = plain.post("/api/encode", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "5242880" in response.json()["detail"]

    # A small limit: a file just over it (inside the multipart allowance) and a streamed body
    # without Content-Length are both refused.
    small = TestClient(create_app(runs["plain"], max_upload_bytes=2000))
    response = small.post("/api/encode", files={"file": ("a.png", b"\x00" * 2001, "image/png")})
    assert response.status_code == 413 and "2000" in response.json()["detail"]

    def chunks():
        for _ in range(100):
            yield b"\x00" * 4096

    response = small.post("/api/encode", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413
    ok = small.post("/api/encode", files={"file": ("a.png", png_upload(np.zeros((28, 28), np.uint8)), "image/png")})
    assert ok.status_code == 200


# ---- the page, the schema, the server's boundaries ----------------------------------------------


def test_openapi_documents_every_endpoint(plain):
    schema = plain.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/meta", "/api/map", "/api/decode", "/api/decode/batch", "/api/encode", "/api/data/{index}",
                 "/api/data/{index}/image.png"):
        assert path in paths, path
    assert "image/png" in paths["/api/decode"]["post"]["responses"]["200"]["content"]
    assert "multipart/form-data" in paths["/api/encode"]["post"]["requestBody"]["content"]
    z_items = schema["components"]["schemas"]["DecodeRequest"]["properties"]["z"]["items"]
    assert z_items["maximum"] == 10 and z_items["minimum"] == -10
    assert plain.get("/docs").status_code == 404  # the CDN-backed docs page is off


def test_page_and_assets_are_local_only(plain):
    page = plain.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    import re

    for url in re.findall(r'(?:src|href)="([^"]*)"', page.text):
        assert url.startswith(("/", "data:")) and not url.startswith("//"), url
    for name in ("app.js", "style.css"):
        response = plain.get(f"/static/{name}")
        assert response.status_code == 200 and response.text
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", response.text), name
    assert plain.get("/static/missing.js").status_code == 404


def test_loopback_host_check(runs):
    app = create_app(runs["plain"], allowed_hosts=LOOPBACK_NAMES)
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/meta").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/meta").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/api/meta").status_code == 400


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_explore_cli_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["explore", str(tmp_path / "no-such-run"), "--port", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vaelab: error:") and "run folder not found" in err[-1]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["explore", str(runs["plain"]), "--port", str(port)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen on 127.0.0.1" in err[0]
    assert main(["explore", str(runs["plain"]), "--port", "70000"]) != 0
    assert "--port must be in 0..65535" in capsys.readouterr().err


def test_conditional_map_carries_the_labels_it_was_encoded_with(runs, cond):
    """A conditional model's codes depend on the label: the map's points are the codes of the
    test images encoded with their own labels (the ones it reports), not with any other."""
    points = cond.get("/api/map").json()
    model, test = model_and_test(runs["cond"])
    assert len(points["x"]) == len(points["y"]) == 40 and points["labels"] == test.labels.tolist()
    projection = cond.app.state.session.projection
    coords = np.c_[points["x"], points["y"]]

    def mapped(labels: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return projection(model.encode(test.images.float() / 255, labels).mean).numpy()

    np.testing.assert_allclose(coords, mapped(test.labels), atol=1e-3)  # the map rounds to 3 decimals
    assert np.abs(coords - mapped((test.labels + 1) % 10)).max() > 5e-3  # other labels: another map


def test_large_splits_are_subsampled_on_the_map_but_served_whole(runs):
    from vaelab.latent import subsample

    client = TestClient(create_app(runs["plain"], max_points=15))
    points = client.get("/api/map").json()
    model, test = model_and_test(runs["plain"])
    subset = subsample(test, 15)
    assert len(points["x"]) == 15 and points["labels"] == subset.labels.tolist()
    with torch.no_grad():
        mean = model.encode(subset.images.float() / 255).mean
    np.testing.assert_allclose(np.c_[points["x"], points["y"]], mean.numpy(), atol=1e-3)
    assert client.get("/api/meta").json()["map_points"] == 15
    assert client.get("/api/data/39").status_code == 200  # every image of the split stays reachable


def test_explorer_never_imports_the_training_code(runs):
    import subprocess
    import sys

    code = ("import sys, vaelab.cli.explore_cmd; from vaelab.explorer import create_app; "
            f"create_app({str(runs['plain'])!r}); "
            "bad = [m for m in sys.modules if m == 'vaelab.training' or m.startswith('vaelab.training.')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

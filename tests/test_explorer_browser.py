"""End to end in real headless Chromium: `vaelab explore` serves a run trained here, and the page
is driven like a user would (slider, map, interpolation, upload).

Needs Debian's /usr/bin/chromium and the Python `playwright` package (no `playwright install`:
the system Chromium is launched through `executable_path`). Skipped, with the reason, when either
is missing.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]

pytestmark = pytest.mark.browser


@pytest.fixture
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test needs the playwright package (pip install 'vaelab[browser]')")
    pytest.importorskip("uvicorn")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def served_run(fake_mnist, tmp_path):
    """`vaelab explore RUN --port 0` in a subprocess on loopback; yields the page's URL."""
    from vaelab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "1", "--batch-size",
                 "32", "--hidden", "32,16", "--latent-dim", "3", "--out", str(run), "--quiet"]) == 0
    yield from _serve(run)


@pytest.fixture
def served_translate_run(fake_mnist, tmp_path):
    """An image-to-image run (--task translate, denoising) served the same way."""
    from vaelab.cli import main

    run = tmp_path / "translate-run"
    assert main(["train", "--task", "translate", "--arch", "unet", "--hidden", "4,8", "--latent-dim", "3",
                 "--dataset", "mnist", "--data-dir", str(fake_mnist), "--degrade", "noise=0.2", "--epochs", "1",
                 "--batch-size", "32", "--out", str(run), "--quiet"]) == 0
    yield from _serve(run)


def _serve(run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "explore", str(run), "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, seen = None, []
    try:
        while url is None:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail(f"the explorer did not start within 60 s: {''.join(seen)}")
            seen.append(line)
            if line.startswith("vaelab explorer: "):
                url = line.split()[2]
            elif proc.poll() is not None:
                pytest.fail(f"the explorer exited: {''.join(seen)}")
        yield url, run
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def canvas_data(page, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL()")


def wait_for_new_image(page, selector: str, before: str) -> str:
    page.wait_for_function("([sel, before]) => document.querySelector(sel).toDataURL() !== before",
                           arg=[selector, before], timeout=10_000)
    return canvas_data(page, selector)


def test_explorer_page_in_chromium(browser, served_run, tmp_path):
    from PIL import Image

    import vaelab
    from vaelab.latent import Projection

    url, run = served_run
    assert url.startswith("http://127.0.0.1:")
    origin = url.rstrip("/")
    requests, errors = [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium logs every 4xx as "Failed to load resource"; the error part below causes two on purpose.
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    page.wait_for_function("() => Number(document.querySelector('#decoded').dataset.draws) >= 1")
    assert page.locator("#sliders input[type=range]").count() == 3  # one per latent dimension
    assert page.locator("#legend li").count() >= 2

    # -- a slider: click the track near its right end; the decoded image must change
    before = canvas_data(page, "#decoded")
    slider = page.locator("#sliders input[type=range]").first
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    wait_for_new_image(page, "#decoded", before)
    dim = int(slider.get_attribute("data-dim"))
    value = float(slider.input_value())
    assert value > 2.5
    assert page.evaluate(f"window.vaelabExplorer.state.z[{dim}]") == pytest.approx(value)

    # -- the map: click a point; the image changes and z moves within the PCA plane through the old z
    z_before = torch.tensor(page.evaluate("window.vaelabExplorer.state.z"))
    page.mouse.move(0, 0)  # away from the map, so the pinned z is what is shown
    before = canvas_data(page, "#decoded")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
    wait_for_new_image(page, "#decoded", before)
    z_after = torch.tensor(page.evaluate("window.vaelabExplorer.state.z"))
    assert not torch.allclose(z_after, z_before)
    projection_json = page.evaluate("window.vaelabExplorer.state.map")
    projection = Projection(torch.tensor(projection_json["center"]), torch.tensor(projection_json["components"]))
    # The readout shows the map position under the mouse; the pinned z must project onto it, and
    # differ from the old z only within the map's plane (`Projection.inverse` with base = old z).
    clicked = torch.tensor([float(v) for v in page.inner_text("#map-readout").strip("() ").split(",")])
    coords = projection(z_after[None])
    torch.testing.assert_close(coords[0], clicked, atol=0.006, rtol=0)
    torch.testing.assert_close(projection.inverse(coords, base=z_before)[0], z_after, atol=1e-4, rtol=0)

    # -- interpolation: scrubbing t re-decodes the middle image
    page.wait_for_function("() => document.querySelectorAll('#strip img').length === 9")
    before = canvas_data(page, "#interp-out")
    page.locator("#interp-t").fill("0.05")
    wait_for_new_image(page, "#interp-out", before)

    # -- upload: the reconstruction appears and the code is pinned
    model = vaelab.load(run)
    bar = np.zeros((28, 28), np.uint8)
    bar[8:12, 4:24] = 255
    upload = tmp_path / "bar.png"
    Image.fromarray(bar).save(upload)
    page.set_input_files("#upload", str(upload))
    page.wait_for_selector("#upload-result:not([hidden])")
    assert page.get_attribute("#upload-recon", "src").startswith("data:image/png;base64,")
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(bar)[None, None].float() / 255).mean[0]
    page.wait_for_function("() => window.vaelabExplorer.state.upload !== null")
    torch.testing.assert_close(torch.tensor(page.evaluate("window.vaelabExplorer.state.z")), expected,
                               atol=1e-4, rtol=0)

    # -- the anomaly panel: the same upload is scored against the normal training images
    from vaelab.anomaly import SCORE_NAMES, score

    page.wait_for_selector("#anomaly-result:not([hidden])")
    page.wait_for_function("() => window.vaelabAnomaly.last !== null")
    result = page.evaluate("window.vaelabAnomaly.last")
    assert page.locator("#anomaly-table tbody tr").count() == len(SCORE_NAMES)
    direct = score(model, torch.from_numpy(bar)[None, None], scores=["recon_mse"])["recon_mse"][0]
    shown = {s["name"]: s for s in result["scores"]}
    assert shown["recon_mse"]["value"] == pytest.approx(float(direct), rel=1e-5)
    assert all(0 <= s["percentile"] <= 100 for s in result["scores"])
    cells = page.locator("#anomaly-table tbody tr[data-score='nll'] td")
    assert cells.nth(2).inner_text().endswith("th")  # the percentile column
    for selector in ("#anomaly-input", "#anomaly-recon", "#anomaly-map"):
        assert page.get_attribute(selector, "src").startswith("data:image/png;base64,")
    # Its own upload button scores another image (an inverted bar: far more unusual).
    before = page.evaluate("window.vaelabAnomaly.requests")
    Image.fromarray(255 - bar).save(tmp_path / "inverted.png")
    page.set_input_files("#anomaly-upload", str(tmp_path / "inverted.png"))
    page.wait_for_function(f"() => window.vaelabAnomaly.requests > {before} && "
                           "window.vaelabAnomaly.last.scores.find(s => s.name === 'recon_mse').value !== "
                           f"{shown['recon_mse']['value']}")
    inverted = {s["name"]: s for s in page.evaluate("window.vaelabAnomaly.last")["scores"]}
    assert inverted["recon_mse"]["value"] > shown["recon_mse"]["value"]

    # -- errors from the API are shown on the page, which keeps working
    page.fill("#slot-a .index", "999999")
    page.click("#slot-a .load")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('out of range')")
    assert "error" in page.get_attribute("#status", "class")
    page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png",
                                            "buffer": b"not an image at all"}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('not a readable image')")

    # -- nothing left this machine (the CSP would also block it, but the page must not even try)
    assert requests, "the page made no requests at all?"
    outside = [u for u in requests if not (u.startswith(origin + "/") or u.startswith(("data:", "blob:")))]
    assert not outside, f"requests to other hosts: {outside}"
    assert not errors, errors
    page.close()


def test_translate_page_in_chromium(browser, served_translate_run, tmp_path):
    """A translate run's page: its own section (no latent map), a test input's mean, samples and std
    map, an uploaded image translated, and the z sliders re-decoding the prediction."""
    from PIL import Image

    import vaelab

    url, run = served_translate_run
    origin = url.rstrip("/")
    requests, errors = [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.is_visible("#translate-main") and not page.is_visible("#map")  # the VAE panels are hidden
    assert "image to image" in page.inner_text("#run-info")
    # Test input #0 is translated on load: input, mean, std map and target, K samples in the strip.
    for selector in ("#translate-input", "#translate-mean", "#translate-std", "#translate-target"):
        assert page.get_attribute(selector, "src").startswith("data:image/png;base64,"), selector
    assert page.locator("#translate-strip img").count() == 8
    assert page.locator("#translate-sliders input[type=range]").count() == 3  # one per latent dimension
    page.wait_for_function("() => Number(document.querySelector('#translate-decoded').dataset.draws) >= 1")

    # -- a slider: eps moves, the prediction at z = mu + sigma * eps is decoded again
    draws = int(page.get_attribute("#translate-decoded", "data-draws"))
    slider = page.locator("#translate-sliders input[type=range]").first
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.95, box["y"] + box["height"] / 2)
    page.wait_for_function(f"() => Number(document.querySelector('#translate-decoded').dataset.draws) > {draws}")
    assert page.evaluate("window.vaelabTranslate.state.eps[0]") > 2.0

    # -- upload: the translation of the uploaded image replaces the example (no target then)
    model = vaelab.load(run)
    bar = np.zeros((28, 28), np.uint8)
    bar[8:12, 4:24] = 255
    upload = tmp_path / "bar.png"
    Image.fromarray(bar).save(upload)
    page.fill("#translate-samples", "4")
    token = page.evaluate("window.vaelabTranslate.state.token")
    page.set_input_files("#translate-upload", str(upload))
    page.wait_for_function(f"() => window.vaelabTranslate.state.token !== '{token}'")
    assert page.locator("#translate-strip img").count() == 4
    assert not page.is_visible("#translate-target")
    with torch.no_grad():
        prior = model.prior_given(torch.from_numpy(bar)[None, None].float() / 255)
    np.testing.assert_allclose(page.evaluate("window.vaelabTranslate.state.prior.mean"), prior.mean[0].tolist(),
                               rtol=1e-4, atol=1e-5)

    # -- errors are shown on the page, which keeps working
    page.fill("#translate-index", "99999")
    page.click("#translate-load")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('out of range')")
    page.set_input_files("#translate-upload", files=[{"name": "notes.png", "mimeType": "image/png",
                                                      "buffer": b"not an image at all"}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('not a readable image')")

    outside = [u for u in requests if not (u.startswith(origin + "/") or u.startswith(("data:", "blob:")))]
    assert not outside, f"requests to other hosts: {outside}"
    assert not errors, errors
    page.close()

"""Regression tests for the defects of issue 20, each written to fail before its fix.

1. A damaged 16-bit TIFF on which PIL raises TypeError (not one of the exception types the
   decoder used to catch) crashed `vaelab train` with a traceback and `/api/encode` with a 500.
2. `vaelab explore --host 127.0.0.5` answered 400 to every request: the address counts as
   loopback (so the Host header is checked) but was not among the allowed Host names.
4. An unwritable classifier cache made `vaelab eval` fail: the cache writer raises RunError,
   the fallback caught only OSError.
5. Config validation stopped at the first type error or unknown key instead of naming every bad
   field at once.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explorer_server import ExploreServer, http_get
from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TIFF_FLOAT, TIFF_UNDEFINED = 11, 7  # TIFF field types (TIFF 6.0, section 2)
STRIP_OFFSETS = 273


# ---- 1. any exception from the image decoder is one DataError naming the file --------------------------

def tiff16(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="TIFF")
    return buffer.getvalue()


def retype_tiff_tag(data: bytes, tag: int, field_type: int) -> bytes:
    """`data` (a little-endian TIFF) with the field type of `tag` in the first IFD replaced.

    This is the damage a seeded byte-flip search found (6,000 tries, flips in the first 300 bytes):
    StripOffsets typed FLOAT makes PIL seek to a float, typed UNDEFINED to a bytes object, and
    `Image.load()` raises TypeError.
    """
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    out = bytearray(data)
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<H", out, entry + 2, field_type)
            return bytes(out)
    raise AssertionError(f"tag {tag} not in the first IFD")


def damaged_tiffs() -> dict[str, bytes]:
    good = tiff16(np.random.default_rng(0).integers(0, 65535, (12, 12)))
    return {name: retype_tiff_tag(good, STRIP_OFFSETS, kind)
            for name, kind in (("offsets-float.tif", TIFF_FLOAT), ("offsets-undefined.tif", TIFF_UNDEFINED))}


@pytest.mark.parametrize("name", sorted(damaged_tiffs()))
def test_pil_really_raises_typeerror_on_the_damaged_tiff(name):
    """The reproduction is faithful: PIL itself fails with TypeError, outside the old list."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL also warns about the odd tag type
        img = Image.open(io.BytesIO(damaged_tiffs()[name]))
        with pytest.raises(TypeError):
            img.load()


@pytest.mark.parametrize("name", sorted(damaged_tiffs()))
def test_damaged_tiff_is_one_data_error_naming_the_file(tmp_path, name):
    from vaelab.data.images import load_image

    path = tmp_path / name
    path.write_bytes(damaged_tiffs()[name])
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*not a readable image") as info:
        load_image(path, 8, 1)
    assert "\n" not in str(info.value)


def test_train_on_a_folder_with_the_damaged_tiff_is_one_line(tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        (folder / f"ok{i}.tif").write_bytes(tiff16(rng.integers(0, 65535, (12, 12))))
    (folder / "damaged.tif").write_bytes(damaged_tiffs()["offsets-float.tif"])
    out = tmp_path / "out"
    code = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), "--epochs", "1",
                 "--batch-size", "2", "--hidden", "8", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("vaelab: error: ") and "damaged.tif" in err[0], err
    assert not out.exists()


def deflate_tiff_with_a_bad_checksum() -> bytes:
    """An RGB TIFF (deflate-compressed, so PIL decodes it with libtiff) whose zlib stream's
    checksum is wrong: libtiff fails with "ZIPDecode: Decoding error ... incorrect data check"."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
        buffer, format="TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buffer.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as img:
        offset, count = img.tag_v2[STRIP_OFFSETS][0], img.tag_v2[279][0]  # StripOffsets, StripByteCounts
    data[offset + count - 1] ^= 0xFF  # the last byte of the Adler-32 checksum
    return bytes(data)


def test_libtiff_prints_nothing_beside_the_one_line(tmp_path, capfd):
    """libtiff writes its own diagnostics to stderr (file descriptor 2, past Python): the CLI
    must still print exactly one line for a damaged compressed TIFF."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.tif")
    (folder / "bad.tif").write_bytes(deflate_tiff_with_a_bad_checksum())
    capfd.readouterr()
    code = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(tmp_path / "out"),
                 "--epochs", "1", "--quiet"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("vaelab: error: ") and "bad.tif" in err[0], err


def tiny_explorer_app(**kwargs):
    from vaelab.config import ModelConfig
    from vaelab.data.base import Split
    from vaelab.explorer import create_app
    from vaelab.models import VAE

    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden=[16, 8], latent_dim=2, image_shape=[1, 28, 28])).eval()
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (20,), generator=generator))
    return create_app(model, split=split, class_names=[str(d) for d in range(10)], **kwargs)


def test_explorer_answers_422_for_the_damaged_tiff():
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    client = TestClient(tiny_explorer_app(), raise_server_exceptions=False)
    for name, data in damaged_tiffs().items():
        response = client.post("/api/encode", files={"file": (name, data, "image/tiff")})
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert "not a readable image" in response.json()["detail"]


def test_bugs_outside_the_decoder_are_not_disguised_as_bad_files(monkeypatch, tmp_path):
    """Only the decoder's exceptions become DataError: a fault in vaelab's own conversion code
    (here: the intensity scaling, made to fail) still surfaces as what it is."""
    import vaelab.data.images as images

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in vaelab, not in the file")

    monkeypatch.setattr(images, "scale_to_uint8", broken)
    path = tmp_path / "fine.tif"
    path.write_bytes(tiff16(np.arange(144).reshape(12, 12) * 300))
    with pytest.raises(ZeroDivisionError):
        images.load_image(path, 8, 1)


# ---- 2. explore --host on any loopback address works, and still checks the Host header ------------------

def _tiny_run(tmp_path: Path, fake_mnist: Path) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "1", "--batch-size", "32",
                 "--hidden", "16", "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> Path:
    """One tiny trained run for the explore tests (its data: a small fake MNIST folder)."""
    from conftest import write_idx

    base = tmp_path_factory.mktemp("explore")
    rng = np.random.default_rng(0)
    (base / "mnist").mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(base / "mnist" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(base / "mnist" / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return _tiny_run(base, base / "mnist")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "127.1.2.3", "localhost", "::1", "[::1]"])
def test_explore_cli_app_accepts_its_own_loopback_host(shared_run, monkeypatch, capsys, host):
    """The app the `explore` command builds (captured where uvicorn would serve it) answers a
    browser that uses the address the server was started on, and refuses a rebinding page."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    from vaelab.cli import explore_cmd

    served = {}

    def fake_run(self, sockets=None):
        served["app"], served["port"] = self.config.app, sockets[0].getsockname()[1]

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    if ":" in host:  # IPv6 needs a stack with ::1
        try:
            explore_cmd.bind_socket(host, 0).close()
        except ConfigError:
            pytest.skip("no IPv6 loopback here")
    assert main(["explore", str(shared_run), "--host", host, "--port", "0"]) == 0
    url_host = f"[{host.strip('[]')}]" if ":" in host else host
    assert f"vaelab explorer: http://{url_host}:{served['port']}/" in capsys.readouterr().out
    ok = TestClient(served["app"], base_url=f"http://{url_host}:{served['port']}")
    assert ok.get("/api/meta").status_code == 200
    rebinding = TestClient(served["app"], base_url=f"http://attacker.example:{served['port']}")
    assert rebinding.get("/api/meta").status_code == 400


def test_explore_on_127_0_0_5_serves_a_real_browser_request(shared_run):
    """End to end: `vaelab explore --host 127.0.0.5` in its own process, asked over HTTP the way a
    browser asks (Host: 127.0.0.5:PORT)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    with ExploreServer(shared_run, "--host", "127.0.0.5") as server:
        assert server.url.startswith("http://127.0.0.5:")
        status, body = http_get(server.url + "api/meta")
        assert status == 200 and json.loads(body)["latent_dim"] == 2
        status, _ = http_get(server.url + "api/meta", host="evil.example")
        assert status == 400


# ---- 4. an unwritable classifier cache: eval falls back to the freshly trained classifier ---------------

def test_eval_with_an_unwritable_classifier_cache_still_reports_fid(tmp_path, fake_mnist, monkeypatch, capsys):
    import vaelab.checkpoint as checkpoint_module
    import vaelab.classifier as classifier_module
    from vaelab.checkpoint import FAULT_ENV
    from vaelab.classifier import cache_key
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    monkeypatch.setattr(classifier_module, "MIN_STEPS", 2)  # a smaller job; the cache logic is the same
    run = _tiny_run(tmp_path, fake_mnist)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAELAB_DATA", str(cache))
    key = cache_key(load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist))), "mnist")
    for target in (f"{key}.safetensors", f"{key}.json"):  # a full disk at either of the two cache writes
        monkeypatch.setattr(checkpoint_module, "_write_counts", {})
        monkeypatch.setenv(FAULT_ENV, f"enospc:{target}:1")
        capsys.readouterr()
        assert main(["eval", str(run), "--iw-samples", "5", "--json"]) == 0, capsys.readouterr().err
        result = json.loads(capsys.readouterr().out)
        assert result["fid"] is not None and result["fid_samples"] == 40 and 0 <= result["recon_accuracy"] <= 1
        assert not list((cache / "classifiers").glob(f"{key}.safetensors"))  # nothing half-cached
    # With a writable cache the same evaluation caches the classifier (and gives the same FID).
    monkeypatch.delenv(FAULT_ENV)
    assert main(["eval", str(run), "--iw-samples", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(result["fid"], rel=1e-9)
    assert (cache / "classifiers" / f"{key}.safetensors").is_file()


# ---- 5. every bad field at once: type errors and unknown keys included ------------------------------------

def test_type_errors_and_range_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"train": {"epochs": 0}, "model": {"latent_dim": "z"}})
    message = str(info.value)
    assert "config 'model.latent_dim' must be an integer, got 'z'" in message
    assert "epochs must be >= 1, got 0" in message
    assert "\n" not in message


def test_unknown_keys_type_errors_and_ranges_across_every_section():
    raw = {"data": {"dataset": "cifar", "val_fraction": 1.5, "colour": True},
           "model": {"latent_dim": "z", "hidden": [8, "wide"], "latent-dim": 3},
           "train": {"epochs": 0, "lr": "fast", "warmup": 1},
           "extra": {}}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    message = str(info.value)
    for expected in ("config 'data.dataset' must be one of", "val_fraction must be in (0, 1), got 1.5",
                     "unknown config key 'data.colour'", "config 'model.latent_dim' must be an integer",
                     "config 'model.hidden[1]' must be an integer", "unknown config key 'model.latent-dim'",
                     "epochs must be >= 1, got 0", "config 'train.lr' must be a number",
                     "unknown config key 'train.warmup'", "unknown config key 'extra'"):
        assert expected in message, expected
    assert "\n" not in message


def test_a_config_file_names_every_unknown_key(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text("[model]\nlatent-dim = 4\n[train]\nkl_warmup = 2\nepochs = 0\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'model.latent-dim'" in err[0] and "'train.kl_warmup'" in err[0]
    assert "did you mean 'model.latent_dim'" in err[0] and "'train.kl_warmup_epochs'" in err[0]


# ---- found by the fuzz test: a constant scan of huge magnitude -----------------------------------------

def test_a_constant_scan_of_huge_magnitude_gets_a_usable_window(tmp_path):
    """A NIfTI volume whose (damaged) scaling makes every voxel -2.4e24: the per-series window must
    still have a width (low + 1.0 == low at that magnitude, and 0 / 0 made NaN pixels and a
    RuntimeWarning line on stderr)."""
    pytest.importorskip("nibabel")
    from vaelab.data.medical import robust_window, window_series
    from vaelab.data.nifti import NiftiUnit
    from vaelab.data.synthetic_scans import write_nifti

    window = robust_window([np.full(16, -2.4178516e24, np.float32)])
    assert window.high > window.low
    path = write_nifti(tmp_path / "constant.nii", np.full((6, 5, 4), -2.4178516392292583e24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _ = window_series(NiftiUnit(path, path.name, None).slices, None, 8, 1, True)
    assert images.dtype == np.uint8 and (images == 0).all()  # a constant series is all black

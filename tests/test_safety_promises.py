"""Promises of "Your work is safe" checked end to end, with the default limits:

- `--force` removes only vaelab's own files from a run folder (yours survive);
- decompression bombs (a gzip IDX file, PNG and TIFF images declaring huge sizes) are refused
  with one line through `vaelab train`, and with a 4xx through the explorer, at the limits a user
  gets (not a lowered test limit), without inflating them;
- the explorer's 5 MB upload limit holds on a real `vaelab explore` (uvicorn) server, for a
  streamed body without Content-Length, which is answered 413 while it is still arriving;
- `vaelab export` records the measured difference from vaelab's own output, and refuses (and
  does not write) a file whose difference is above the tolerance.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from explorer_server import ExploreServer, http_get, multipart, post_encode, post_streamed
from vaelab.cli import main
from vaelab.data.idx import MAX_IDX_BYTES
from vaelab.data.images import MAX_PIXELS

UPLOAD_LIMIT = 5 * 1024 * 1024  # the explorer's documented default


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("vaelab: error: "), err
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("mnist")
    for prefix, n in (("train", 80), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


TINY = ["--epochs", "1", "--batch-size", "24", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_dir) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), *TINY, "--out", str(run)]) == 0
    return run


# ---- --force removes only vaelab's own files --------------------------------------------------------------

def test_force_replaces_vaelabs_files_and_keeps_the_users(tmp_path, mnist_dir):
    run = tmp_path / "run"
    flags = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), *TINY, "--out", str(run)]
    assert main([*flags, "--seed", "1"]) == 0
    old_weights = (run / "model.safetensors").read_bytes()
    # What a user keeps beside a run, and what vaelab's other commands (and a killed run) leave there.
    mine = {"notes.txt": b"my notes", "analysis/plot.py": b"print(1)", "analysis/data.csv": b"a,b\n1,2\n",
            ".hidden-settings": b"x=1", "model.safetensors.bak": old_weights, "config.json.orig": b"{}",
            ".notes.tmp": b"an editor's swap file"}
    for name, data in mine.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    vaelabs = {"eval.json": b"{}", "report.html": b"<html>", "export/decoder.onnx": b"onnx",
               "export/export.json": b"{}", "tensorboard/events.out.tfevents.1": b"tb",
               ".checkpoint.safetensors.abc123.tmp": b"half a checkpoint", "figures/sample.png": b"png"}
    for name, data in vaelabs.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)

    assert main([*flags, "--seed", "2"]) != 0  # without --force: refused, nothing touched
    assert main([*flags, "--seed", "2", "--force"]) == 0
    for name, data in mine.items():
        assert (run / name).read_bytes() == data, name
    for name in vaelabs:
        assert not (run / name).exists(), name
    assert not (run / "export").exists() and not (run / "tensorboard").exists()
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 2
    assert (run / "model.safetensors").read_bytes() != old_weights  # really the new run's weights
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


# ---- decompression bombs, default limits ---------------------------------------------------------------

def _gzip_bomb(header_shape: tuple[int, ...], inflated: int) -> bytes:
    """A gzip IDX file: `header_shape` in the header, then `inflated` zero bytes, as repeated gzip
    members of 16 MiB each (about 16 kB compressed apiece)."""
    block = 16 * 1024 * 1024
    header = bytes([0, 0, 8, len(header_shape)]) + b"".join(d.to_bytes(4, "big") for d in header_shape)
    first = gzip.compress(header + bytes(block), compresslevel=9)
    rest = gzip.compress(bytes(block), compresslevel=9)
    return first + rest * (inflated // block - 1)


def _bomb_folder(tmp_path: Path, mnist_dir: Path, payload: bytes) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir()
    for item in mnist_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "train-images-idx3-ubyte.gz").write_bytes(payload)
    return folder


def test_gzip_idx_bomb_inflating_to_10_gb_costs_only_what_its_header_declares(tmp_path, mnist_dir, capsys):
    """10 GiB of zeros (a 10 MB file) behind a header that declares 80×28×28: refused after
    inflating the 62,736 declared bytes, not 2 GiB (the default limit) and not 10 GiB."""
    payload = _gzip_bomb((80, 28, 28), 10 * 1024**3)
    assert len(payload) < 12 * 1024**2
    folder = _bomb_folder(tmp_path, mnist_dir, payload)
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(folder), *TINY, "--out", str(out)],
                       "train-images-idx3-ubyte.gz", "decompresses to more than 62736 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, f"{peak / 1024**2:.0f} MiB allocated while refusing the bomb"
    assert not out.exists()


def test_gzip_idx_header_declaring_more_than_the_limit_is_refused_before_inflating(tmp_path, mnist_dir, capsys):
    declared = (100_000, 10_000, 1_000)  # 10**12 bytes
    assert np.prod(declared, dtype=np.float64) > MAX_IDX_BYTES
    folder = _bomb_folder(tmp_path, mnist_dir, _gzip_bomb(declared, 64 * 1024**2))
    one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(folder), *TINY, "--out",
                            str(tmp_path / "out")], f"more than the {MAX_IDX_BYTES} allowed")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height and holds almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b"")


def tiff_header_only(width: int, height: int, bits: int = 16) -> bytes:
    """A little-endian TIFF whose IFD declares width×height grey pixels of `bits`, with one
    8-byte strip of actual data (TIFF 6.0 baseline tags)."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 8)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    entries = [(tag, kind, data_offset if tag == 273 else value) for tag, kind, value in entries]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + bytes(8)


BOMBS = {  # name -> file; every one declares more than MAX_PIXELS (64 M) pixels
    "bomb-9000.png": png_header_only(9_000, 8_500),  # above vaelab's limit, below PIL's warning (89 M)
    "bomb-20000.png": png_header_only(20_000, 19_500),  # above PIL's own error limit (179 M)
    "bomb-9000.tif": tiff_header_only(9_000, 8_000),
    "bomb-100000.tif": tiff_header_only(100_000, 100_000),
}


def test_the_bombs_declare_what_they_claim(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # let PIL read the headers it would refuse
    for name, data in BOMBS.items():
        with Image.open(io.BytesIO(data)) as img:  # PIL reads the header without decoding
            assert img.width * img.height > MAX_PIXELS, name


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_image_bombs_through_train_are_one_line(tmp_path, capsys, name):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / name).write_bytes(BOMBS[name])
    out = tmp_path / "out"
    line = one_line_error(capsys, ["train", "--dataset", "folder", "--data-dir", str(folder), *TINY, "--out",
                                   str(out)], name)
    assert "too large" in line or "not a readable image" in line
    assert not out.exists()


# ---- through a real `vaelab explore` server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(trained_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    with ExploreServer(trained_run) as running:
        yield running


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_image_bombs_uploaded_to_the_explorer_get_a_4xx(server, name):
    status, body = post_encode(server, name, BOMBS[name])
    assert status == 422, (status, body[:200])
    detail = json.loads(body)["detail"]
    assert "too large" in detail or "not a readable image" in detail
    assert http_get(server.url + "api/meta")[0] == 200  # and the server is still there


def _chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_a_streamed_upload_over_5_mb_is_cut_off_with_413_while_it_arrives(server):
    body, content_type = multipart("big.png", b"\x00" * (6 * 1024 * 1024))
    # The body is never finished: any answer comes while it is still arriving.
    status, answer, sent = post_streamed(server, _chunks(body[:UPLOAD_LIMIT + 512 * 1024]), content_type, finish=False)
    assert status == 413, (status, answer[:200])
    assert str(UPLOAD_LIMIT) in json.loads(answer)["detail"]
    assert sent > UPLOAD_LIMIT  # (how far past the limit the answer overtakes the sender depends on timing)
    # A declared Content-Length over the limit is refused the same way, and the server still serves.
    assert post_encode(server, "big.png", b"\x00" * (UPLOAD_LIMIT + 1))[0] == 413
    assert http_get(server.url + "api/meta")[0] == 200


def test_a_streamed_upload_just_under_5_mb_is_accepted(server):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1240, 1400, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=0)
    png = buffer.getvalue()
    assert UPLOAD_LIMIT - 200_000 < len(png) <= UPLOAD_LIMIT
    body, content_type = multipart("noise.png", png)
    status, answer, sent = post_streamed(server, _chunks(body), content_type)
    assert status == 200, answer[:300]
    assert sent == len(body) and len(json.loads(answer)["z"]) == 2


# ---- export: the recorded difference is the measured one; above the tolerance nothing is written ---------

def _model_run(root: Path) -> Path:
    from vaelab.checkpoint import WEIGHTS_FILE, save_weights
    from vaelab.config import ModelConfig, RunConfig
    from vaelab.models import VAE
    from vaelab.runs import CONFIG_FILE

    cfg = RunConfig(model=ModelConfig(image_shape=[1, 8, 8], hidden=[16], latent_dim=3)).validate()
    torch.manual_seed(0)
    root.mkdir()
    (root / CONFIG_FILE).write_text(cfg.to_json())
    save_weights(VAE(cfg.model), root / WEIGHTS_FILE)
    return root


class _Offset(torch.nn.Module):
    """The exported decoder with `offset` added to both outputs: a graph known to be wrong by that much."""

    def __init__(self, graph: torch.nn.Module, offset: float) -> None:
        super().__init__()
        self.graph, self.offset = graph, offset

    def forward(self, z):
        param, image = self.graph(z)
        return param + self.offset, image + self.offset


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_export_records_the_measured_difference_and_refuses_above_tolerance(tmp_path, monkeypatch, capsys):
    import vaelab.export as export

    run = _model_run(tmp_path / "run")
    out = run / "export"
    argv = ["export", str(run), "--format", "torchscript", "--part", "decoder"]
    decoder = export.PARTS["decoder"]

    def exported_off_by(offset: float) -> None:
        monkeypatch.setitem(export.PARTS, "decoder", dataclasses.replace(
            decoder, graph=lambda model: _Offset(decoder.graph(model), offset)))

    assert main(argv) == 0  # the honest export: a rounding-level difference
    honest = json.loads((out / "export.json").read_text())["files"]["decoder.pt"]["max_abs_diff"]
    assert 0 <= honest < 1e-6
    good = (out / "decoder.pt").read_bytes()

    exported_off_by(3e-5)  # below the tolerance (1e-4): written, and the number recorded is 3e-5
    assert main(argv) == 0
    recorded = json.loads((out / "export.json").read_text())["files"]["decoder.pt"]["max_abs_diff"]
    assert recorded == pytest.approx(3e-5, abs=1e-6)
    assert f"max |diff| vs vaelab {recorded:.2g}" in capsys.readouterr().out

    monkeypatch.setitem(export.PARTS, "decoder", decoder)
    assert main(argv) == 0
    good = (out / "decoder.pt").read_bytes()
    before = _tree(out)
    exported_off_by(0.01)  # above it: refused in one line, nothing written, the earlier file intact
    line = one_line_error(capsys, argv, "differs from vaelab's by 0.01 (> 0.0001)", "decoder.pt there is unchanged")
    assert "not written" in line
    assert _tree(out) == before and (out / "decoder.pt").read_bytes() == good

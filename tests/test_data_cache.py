"""The decoded-image cache (vaelab.data.cache): a folder is decoded once, later loads map the cache
file instead of decoding; any change of the files or the decoding parameters, and any damage to the
cache file, means decoding again; an unwritable cache folder falls back to decoding with one warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab.data.folder as folder_module
from vaelab.cli import main
from vaelab.config import DataConfig
from vaelab.data import load_data
from vaelab.data.batches import iterate_batches
from vaelab.data.cache import cache_root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


def _write_folder(root: Path, n_per_class: int = 6, size: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / label / f"{i}.png")


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="folder", data_dir=str(root), image_size=8, channels=3, **kw)


def _same(a, b) -> None:
    for name in ("train", "val", "test"):
        sa, sb = a.split(name), b.split(name)
        assert torch.equal(sa.images, sb.images), name
        assert torch.equal(sa.labels, sb.labels), name


def _mapping_of(tensor: torch.Tensor) -> str:
    """The file a tensor's memory is mapped from ('' for anonymous memory), from /proc/self/maps."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) > 5 else ""
    return ""


def _no_decoding(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded an image although the cache was current")
    monkeypatch.setattr(folder_module, "load_image", fail)


def test_second_load_maps_the_cache_without_decoding(tmp_path, cache, monkeypatch):
    _write_folder(tmp_path / "imgs")
    fresh = load_data(_cfg(tmp_path / "imgs", cache=False))  # decoded in memory, no cache
    assert not cache.exists()
    first = load_data(_cfg(tmp_path / "imgs"))
    files = list(cache.glob("folder-*.bin"))
    assert len(files) == 1
    _same(first, fresh)  # the cached splits are the very splits an uncached load makes
    _no_decoding(monkeypatch)
    second = load_data(_cfg(tmp_path / "imgs"))
    _same(second, fresh)
    if Path("/proc/self/maps").is_file():  # the images are pages of the cache file, not a copy
        for name in ("train", "val", "test"):
            assert _mapping_of(second.split(name).images) == str(files[0].resolve())


def test_batches_and_in_place_writes_leave_the_cache_file_alone(tmp_path, cache):
    _write_folder(tmp_path / "imgs")
    load_data(_cfg(tmp_path / "imgs"))
    data = load_data(_cfg(tmp_path / "imgs"))
    train = data.train
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    got = torch.cat([x for x, _ in iterate_batches(train, 3, shuffle=True, generator=gen)])
    assert torch.equal(got, train.images[order].float() / 255.0)  # gathered rows, in the epoch's order
    before = (next(cache.glob("*.bin"))).read_bytes()
    train.images.zero_()  # copy-on-write: the mapping is private
    assert next(cache.glob("*.bin")).read_bytes() == before
    assert not torch.equal(load_data(_cfg(tmp_path / "imgs")).train.images, train.images)


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_changing_adding_or_removing_a_file_invalidates(tmp_path, cache):
    root = tmp_path / "imgs"
    _write_folder(root)
    n = len(load_data(_cfg(root)).train) + len(load_data(_cfg(root)).val) + len(load_data(_cfg(root)).test)
    assert n == 12
    # Changed content (same size, new mtime): the new pixels are decoded.
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(root / "cats" / "0.png")
    _touch_later(root / "cats" / "0.png")
    data = load_data(_cfg(root))
    everything = torch.cat([data.train.images, data.val.images, data.test.images])
    assert (everything == 7).all(dim=(1, 2, 3)).sum() == 1
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "dogs" / "new.png")
    assert sum(len(s) for s in (load_data(_cfg(root)).train, load_data(_cfg(root)).val,
                                load_data(_cfg(root)).test)) == 13
    (root / "dogs" / "new.png").unlink()
    (root / "dogs" / "1.png").unlink()
    assert sum(len(load_data(_cfg(root)).split(s)) for s in ("train", "val", "test")) == 11
    assert len(list(cache.glob("*.bin"))) == 1  # one slot per folder and set-up: replaced, not piled up


def test_every_decoding_and_split_parameter_keys_the_cache(tmp_path, cache, monkeypatch):
    root = tmp_path / "imgs"
    _write_folder(root)
    base = load_data(_cfg(root))
    variants = [_cfg(root, split_seed=1), _cfg(root, val_fraction=0.3),
                DataConfig(dataset="folder", data_dir=str(root), image_size=6, channels=3),
                DataConfig(dataset="folder", data_dir=str(root), image_size=8, channels=1),
                _cfg(root, intensity_window=[10.0, 200.0])]
    for cfg in variants:
        other = load_data(cfg)
        fresh = load_data(DataConfig(**{**cfg.__dict__, "cache": False}))
        _same(other, fresh)  # each set-up gets its own, correct, cache
    assert len(list(cache.glob("*.bin"))) == 1 + len(variants)
    _no_decoding(monkeypatch)
    _same(load_data(_cfg(root)), base)


@pytest.mark.parametrize("damage", ["flip-payload", "flip-header", "truncate", "garbage", "empty"])
def test_damaged_cache_files_are_detected_and_rebuilt(tmp_path, cache, capsys, damage):
    root = tmp_path / "imgs"
    _write_folder(root)
    reference = load_data(_cfg(root, cache=False))
    load_data(_cfg(root))
    path = next(cache.glob("*.bin"))
    raw = bytearray(path.read_bytes())
    if damage == "flip-payload":
        raw[len(raw) // 4] ^= 0x40  # inside the train images
    elif damage == "flip-header":
        raw[-80] ^= 0x01  # inside the JSON header
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    data = load_data(_cfg(root))
    _same(data, reference)  # never the damaged pixels
    assert "damaged; decoding again" in capsys.readouterr().err
    assert load_data(_cfg(root)).train.images.shape == reference.train.images.shape
    assert path.read_bytes() != bytes(raw)  # rewritten


def test_unwritable_cache_folder_decodes_with_one_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VAELAB_DATA", str(blocker))
    monkeypatch.setattr("vaelab.data.cache._warned", set())
    _write_folder(tmp_path / "imgs")
    reference = load_data(_cfg(tmp_path / "imgs", cache=False))
    _same(load_data(_cfg(tmp_path / "imgs")), reference)
    _same(load_data(_cfg(tmp_path / "imgs")), reference)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the decoded-image cache" in err[0]


def test_a_failed_decode_leaves_no_cache_file(tmp_path, cache):
    root = tmp_path / "imgs"
    _write_folder(root)
    (root / "cats" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Exception, match="not a readable image"):
        load_data(_cfg(root))
    assert list(cache.iterdir()) == []  # neither a cache file nor a temp file


def test_cache_header_holds_no_paths(tmp_path, cache):
    root = tmp_path / "secret-patient-folder"
    _write_folder(root)
    load_data(_cfg(root))
    raw = next(cache.glob("*.bin")).read_bytes()
    assert b"secret-patient-folder" not in raw and b".png" not in raw
    header_len = int.from_bytes(raw[-48:-40], "little")
    header = json.loads(raw[-48 - header_len : -48])
    assert header["class_names"] == ["cats", "dogs"] and set(header["splits"]) == {"train", "val", "test"}


def test_second_training_run_uses_the_cache_and_matches(tmp_path, cache):
    root = tmp_path / "imgs"
    _write_folder(root, n_per_class=8)
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main(["train", "--dataset", "folder", "--data-dir", str(root), "--image-size", "8", "--channels", "3",
                     "--epochs", "1", "--batch-size", "4", "--hidden", "16", "--out", str(out), "--quiet"]) == 0
        runs.append((out / "metrics.jsonl").read_text())
    strip = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]
             for text in runs]
    assert strip[0] == strip[1]  # same data, same seed: the same run, from decoded files or from the cache
    assert len(list(cache.glob("folder-*.bin"))) == 1
    assert cache_root() == cache

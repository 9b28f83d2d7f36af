"""Property-based tests (hypothesis): the parsers and config validation on arbitrary input.

- IDX: any uint8 array of 1-4 dims written in IDX form parses back identically; any byte string
  (raw or gzip'ed) either parses or raises `DataError`, nothing else.
- npz: random MedMNIST-style archives load back with the same pixels and labels; any arrays under
  the six keys, and any bytes in a `.npz` file, either load or raise `DataError`.
- config: random JSON-like dicts (random keys, random values, near-valid configs with one field
  mutated) either build a valid `RunConfig` or raise `ConfigError`, nothing else.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from vaelab.config import DataConfig, RunConfig
from vaelab.data.idx import parse_idx, read_idx
from vaelab.data.npz import KEYS, load_npz, read_npz
from vaelab.errors import ConfigError, DataError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def idx_bytes(array: np.ndarray) -> bytes:
    """An independent IDX writer (LeCun's layout): 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


# ---- IDX ---------------------------------------------------------------------------------------

@SETTINGS
@given(arrays(np.uint8, array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)))
def test_idx_round_trip(array):
    parsed = parse_idx(idx_bytes(array))
    assert parsed.dtype == np.uint8 and parsed.shape == array.shape
    assert np.array_equal(parsed, array)


@SETTINGS
@given(st.binary(max_size=300))
def test_idx_arbitrary_bytes_only_raise_data_error(raw):
    try:
        parsed = parse_idx(raw)
    except DataError:
        return
    assert parsed.nbytes == len(raw) - 4 - 4 * parsed.ndim  # it parsed: the header must be consistent


@SETTINGS
@given(arrays(np.uint8, array_shapes(min_dims=1, max_dims=3, max_side=5)), st.integers(0, 40), st.binary(max_size=8))
def test_idx_corrupted_valid_file_only_raises_data_error(array, cut, junk):
    raw = idx_bytes(array)
    for damaged in (raw[: max(0, len(raw) - 1 - cut)], raw + junk if junk else raw[:3], b"\x01" + raw[1:],
                    raw[:4] + (2**32 - 1).to_bytes(4, "big") * array.ndim + raw[4 + 4 * array.ndim:]):
        with pytest.raises(DataError):
            parse_idx(damaged)


@SETTINGS
@given(st.binary(max_size=200), st.booleans())
def test_read_idx_file_with_arbitrary_bytes(tmp_path, raw, compress):
    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    try:
        read_idx(path)
    except DataError as exc:
        assert str(path) in str(exc)


def test_read_idx_gzip_truncated_and_bomb_are_data_errors(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    packed = gzip.compress(idx_bytes(array))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(path)
    path.write_bytes(packed)
    assert np.array_equal(read_idx(path), array)


# ---- npz ---------------------------------------------------------------------------------------

def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@st.composite
def medmnist_arrays(draw):
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    channels = draw(st.sampled_from([None, 1, 3]))
    classes = draw(st.integers(1, 5))
    out = {}
    for split in ("train", "val", "test"):
        n = draw(st.integers(1, 5))
        shape = (n, h, w) if channels is None else (n, h, w, channels)
        out[f"{split}_images"] = draw(arrays(np.uint8, shape))
        labels = draw(arrays(np.int64, (n,), elements=st.integers(0, classes - 1)))
        out[f"{split}_labels"] = labels[:, None] if draw(st.booleans()) else labels
    return out


@SETTINGS
@given(medmnist_arrays())
def test_npz_round_trip(tmp_path, data):
    path = tmp_path / "d.npz"
    _save_npz(path, data)
    loaded = load_npz(DataConfig(dataset="npz", data_path=str(path)))
    for split in ("train", "val", "test"):
        images = data[f"{split}_images"]
        expected = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        got = getattr(loaded, split)
        assert torch.equal(got.images, torch.from_numpy(np.ascontiguousarray(expected)))
        assert torch.equal(got.labels, torch.from_numpy(data[f"{split}_labels"].reshape(-1)))


any_array = arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.int8]),
                   array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS + ("other",)), any_array, max_size=7))
def test_npz_arbitrary_arrays_only_raise_data_error(tmp_path, data):
    path = tmp_path / "d.npz"
    _save_npz(path, data)
    try:
        loaded = load_npz(DataConfig(dataset="npz", data_path=str(path)))
    except DataError:
        return
    assert loaded.train.images.dtype == torch.uint8 and loaded.train.images.ndim == 4


@SETTINGS
@given(st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY\x01\x00", b"\x80\x04"]), st.binary(max_size=400))
def test_npz_arbitrary_bytes_only_raise_data_error(tmp_path, prefix, raw):
    path = tmp_path / "d.npz"
    path.write_bytes(prefix + raw)  # prefixes: zip, .npy and pickle magic numbers
    with pytest.raises(DataError):
        read_npz(path)


@SETTINGS
@given(medmnist_arrays(), st.integers(0, 10_000), st.integers(1, 64))
def test_npz_damaged_archive_only_raises_data_error(tmp_path, data, offset, length):
    """A valid archive with a run of bytes overwritten: loads (if untouched parts) or DataError."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **data)
    raw = bytearray(buffer.getvalue())
    start = offset % len(raw)
    raw[start:start + length] = bytes(range(length))[: len(raw) - start]
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(raw))
    try:
        load_npz(DataConfig(dataset="npz", data_path=str(path)))
    except DataError:
        pass



# ---- config validation ---------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _only_config_errors(raw) -> None:
    try:
        cfg = RunConfig.from_dict(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.validate() is cfg


@SETTINGS
@given(json_values)
def test_config_arbitrary_json_only_raises_config_error(raw):
    _only_config_errors(raw)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["data", "model", "train", "version", "vaelab_version", "x"]),
                       json_values, max_size=5))
def test_config_random_sections_only_raise_config_error(raw):
    _only_config_errors(raw)


DEFAULTS = RunConfig().to_dict()


@SETTINGS
@given(st.sampled_from([(s, k) for s in ("data", "model", "train") for k in DEFAULTS[s]]), json_values)
def test_config_one_mutated_field_only_raises_config_error(field, value):
    raw = RunConfig().to_dict()
    raw[field[0]][field[1]] = value
    _only_config_errors(raw)


@SETTINGS
@given(st.dictionaries(st.integers() | st.text(max_size=5), json_values, max_size=3))
def test_config_non_string_keys_only_raise_config_error(raw):
    _only_config_errors({"model": raw})

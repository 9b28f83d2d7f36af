"""Seeded fuzzing as a standing test: damaged files are decoded or refused in one line, never crash.

Seed files (`fuzz_corpus.SEEDS`: PNG 8/16-bit and RGB, JPEG, TIFF 8/16-bit/float32/RGB, BMP, IDX
gzip and raw, MedMNIST npz, and with the medical extra DICOM (CT, MR, MONOCHROME1, multi-frame)
and NIfTI (3-D .nii, 4-D .nii.gz)) are made fresh for every case from a seeded generator, then damaged
(`fuzz_corpus.damage`: a truncation, or byte flips mostly in the first 300 bytes, sometimes both):

- at least 10,000 of them go through vaelab's readers (`fuzz_corpus.READERS`: the image decoder
  every folder dataset, latent command and upload uses, the IDX reader, the npz reader, the DICOM
  and NIfTI readers); each must
  decode, or raise one `DataError` of one line that names the file, and emit no warning;
- at least 1,000 go to `/api/encode` of a real `vaelab explore` server (uvicorn, over HTTP); each
  must get 200, or a 4xx with a one-line `detail`; no 5xx, no dropped connection, no traceback in
  the server's log, and the server still answers afterwards.

Every case is reproducible from (VAELAB_FUZZ_SEED, case index); a failure names both. The default
run takes well under a minute on one core. The nightly run multiplies the counts:

    VAELAB_FUZZ_SCALE=50 VAELAB_FUZZ_SEED=$(date +%Y%m%d) pytest tests/test_fuzz.py

(a fresh seed each night explores new cases; 500,000 files and 50,000 uploads at scale 50).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer_server import ExploreServer, http_get, multipart
from fuzz_corpus import HAVE_SCAN_READERS, READERS, SEEDS, damage
from vaelab.errors import DataError

SCALE = float(os.environ.get("VAELAB_FUZZ_SCALE", "1"))
BASE_SEED = int(os.environ.get("VAELAB_FUZZ_SEED", "20"))
DECODE_CASES = max(1, round(10_000 * SCALE))
UPLOAD_CASES = max(1, round(1_000 * SCALE))
# What PIL's decoders raised on damaged files before every exception became a DataError (bug 1
# of issue 20); a refusal caused by anything else shows the fuzz reaches that class of damage.
OLD_CAUGHT = ("UnidentifiedImageError", "OSError", "SyntaxError", "ValueError", "DecompressionBombError")


def case(index: int) -> tuple[str, bytes, str, np.random.Generator]:
    """Case `index`: (seed name, damaged bytes, what was done, the case's generator)."""
    names = sorted(SEEDS)
    name = names[index % len(names)]
    rng = np.random.default_rng([BASE_SEED, index])
    damaged, how = damage(SEEDS[name].make(rng), rng)
    return name, damaged, how, rng


def test_every_seed_file_is_valid(tmp_path):
    """Undamaged, every kind of seed decodes: the fuzz damages real files, not noise."""
    for k, seed in enumerate(SEEDS.values()):
        for i in range(5):
            rng = np.random.default_rng([BASE_SEED, 10**9 + 10 * k + i])  # apart from the fuzz cases
            READERS[seed.kind](seed.make(rng), tmp_path / f"seed{seed.suffix}", rng)


def test_damaged_files_are_decoded_or_refused_in_one_line(tmp_path, capfd):
    outcomes: dict[str, collections.Counter] = {name: collections.Counter() for name in SEEDS}
    causes: collections.Counter = collections.Counter()
    failures = []
    for index in range(DECODE_CASES):
        name, data, how, rng = case(index)
        seed = SEEDS[name]
        path = tmp_path / f"case{index % 8}{seed.suffix}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                READERS[seed.kind](data, path, rng)
                outcomes[name]["decoded"] += 1
            except DataError as exc:
                outcomes[name]["refused"] += 1
                causes[type(exc.__context__).__name__ if exc.__context__ else "vaelab's own check"] += 1
                if "\n" in str(exc) or path.name not in str(exc):
                    failures.append(f"case {index} ({name}, {how}): not one line naming the file: {exc!r}")
            except Exception as exc:  # noqa: BLE001 - anything else is the defect this test exists to find
                failures.append(f"case {index} ({name}, {how}): {type(exc).__name__}: {exc}")
        if caught:
            failures.append(f"case {index} ({name}, {how}): warning {caught[0].category.__name__}: {caught[0].message}")
    c_level = capfd.readouterr().err  # what C libraries (libtiff, libpng, ...) printed past Python
    assert not c_level, f"the decoders wrote to stderr: {c_level[:500]}"
    print(f"seed {BASE_SEED}, {DECODE_CASES} damaged files:",
          {name: dict(counts) for name, counts in outcomes.items()}, "refusal causes:", dict(causes))
    assert not failures, f"{len(failures)} of {DECODE_CASES} failed (VAELAB_FUZZ_SEED={BASE_SEED}):\n" + \
        "\n".join(failures[:20])
    assert sum(sum(c.values()) for c in outcomes.values()) == DECODE_CASES >= 10_000 * min(SCALE, 1)
    for name, counts in outcomes.items():  # every kind was both decoded (mild damage) and refused
        assert counts["refused"] > 0, name
    if SCALE >= 1:  # the damage reaches decoder failures beyond the exception types caught before
        assert set(causes) - set(OLD_CAUGHT) - {"vaelab's own check"}, dict(causes)


@pytest.fixture(scope="module", autouse=True)
def _explorer_process(tmp_path_factory):
    """A real `vaelab explore` serving a freshly initialised model of 8×8 digits (no training:
    uploads exercise the input handling, not what the model learnt). Started when the module
    starts, so it loads while the decode fuzz runs."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        yield None
        return
    from vaelab.checkpoint import WEIGHTS_FILE, save_weights
    from vaelab.config import DataConfig, ModelConfig, RunConfig
    from vaelab.models import VAE
    from vaelab.runs import CONFIG_FILE

    run = tmp_path_factory.mktemp("fuzz") / "run"
    run.mkdir()
    cfg = RunConfig(data=DataConfig(dataset="digits"),
                    model=ModelConfig(image_shape=[1, 8, 8], hidden=[16], latent_dim=2, num_classes=10)).validate()
    torch.manual_seed(0)
    (run / CONFIG_FILE).write_text(cfg.to_json())
    save_weights(VAE(cfg.model), run / WEIGHTS_FILE)
    server = ExploreServer(run).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def explorer(_explorer_process):
    if _explorer_process is None:
        pytest.skip("the explorer extra (fastapi, uvicorn) is not installed")
    return _explorer_process.wait()


def test_damaged_uploads_get_200_or_a_4xx_from_a_real_server(explorer):
    names = sorted(SEEDS)
    statuses: collections.Counter = collections.Counter()
    failures = []
    conn = explorer.connection()
    try:
        for index in range(UPLOAD_CASES):
            name, data, how, _ = case(DECODE_CASES + index)  # other cases than the decode test's
            body, content_type = multipart(f"upload{SEEDS[name].suffix}", data)
            try:
                conn.request("POST", "/api/encode", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                status, payload = response.status, response.read()
            except (OSError, ConnectionError) as exc:  # a dropped connection is a failure too
                failures.append(f"case {index} ({name}, {how}): connection failed: {exc!r}")
                conn.close()
                conn = explorer.connection()
                continue
            statuses[status] += 1
            answer = json.loads(payload)
            if status == 200:
                ok = len(answer["z"]) == 2 and answer["input"].startswith("data:image/png;base64,")
            else:
                ok = 400 <= status < 500 and isinstance(answer.get("detail"), str) and "\n" not in answer["detail"]
            if not ok:
                failures.append(f"case {index} ({name}, {how}): {status} {payload[:200]!r}")
    finally:
        conn.close()
    print(f"seed {BASE_SEED}, {UPLOAD_CASES} damaged uploads over {len(names)} kinds:", dict(statuses))
    assert not failures, f"{len(failures)} of {UPLOAD_CASES} failed (VAELAB_FUZZ_SEED={BASE_SEED}):\n" + \
        "\n".join(failures[:20])
    assert sum(statuses.values()) == UPLOAD_CASES and statuses[200] > 0 and statuses[422] > 0
    assert http_get(explorer.url + "api/meta")[0] == 200
    assert "Traceback" not in explorer.stderr and "Exception" not in explorer.stderr, explorer.stderr[-3000:]


def test_the_corpus_covers_the_documented_formats():
    kinds = {name.split("-")[0] for name in SEEDS}
    assert {"png", "jpeg", "tiff", "bmp", "idx", "npz"} <= kinds
    if HAVE_SCAN_READERS:  # the medical extra (pydicom, nibabel) is installed
        assert {"dicom", "nifti"} <= kinds
    assert {"tiff-8bit", "tiff-16bit", "tiff-float32", "tiff-rgb", "png-8bit", "png-16bit"} <= set(SEEDS)
    assert all(seed.kind in READERS for seed in SEEDS.values())
    assert Path(__file__).with_name("fuzz_corpus.py").is_file()

"""`--tensorboard`: event files read back with TensorBoard's own reader hold the epoch metrics, the
KL per latent dimension and the reconstruction/sample images; a missing package is one clear line."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.cli import main
from vaelab.data import load_data
from vaelab.plots import image_grid
from vaelab.tracking import KL_IMAGES, NUM_IMAGES

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EPOCHS = 3


def _events(run):
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    assert main(["train", "--epochs", str(EPOCHS), "--hidden", "32,16", "--latent-dim", "3", "--batch-size", "64",
                 "--tensorboard", "--out", str(out), "--quiet"]) == 0
    return out


def test_scalars_equal_the_metrics_lines(run):
    acc = _events(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("val_kl", "kl/val"),
                     ("train_recon", "recon/train"), ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        # TensorBoard stores float32.
        np.testing.assert_allclose([e.value for e in events], [r[key] for r in rows], rtol=1e-6)


def test_kl_per_dimension_matches_torch_distributions(run):
    acc = _events(run)
    model = vaelab.load(run)  # the final weights = the model the last epoch's hook saw
    data = load_data(model.run_config.data)
    x = data.val.images[:KL_IMAGES].float() / 255
    with torch.inference_mode():
        q = model.encode(x)
        posterior = torch.distributions.Normal(q.mean, q.std)
        expected = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).mean(0)
    logged = [acc.Scalars(f"kl_per_dim/z{d}")[-1].value for d in range(3)]
    np.testing.assert_allclose(logged, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert [e.step for e in acc.Scalars("kl_per_dim/z0")] == [1, 2, 3]


def test_images_show_the_final_reconstructions(run):
    acc = _events(run)
    assert set(acc.Tags()["images"]) >= {"reconstructions", "samples"}
    assert [e.step for e in acc.Images("samples")] == [1, 2, 3]
    model = vaelab.load(run)
    data = load_data(model.run_config.data)
    x = data.val.images[:NUM_IMAGES].float() / 255
    expected = image_grid(torch.cat([x, model.reconstruct(x)]), nrow=NUM_IMAGES)  # (H, W, 3) uint8
    logged = np.asarray(Image.open(io.BytesIO(acc.Images("reconstructions")[-1].encoded_image_string)).convert("RGB"))
    assert logged.shape == expected.shape
    assert np.abs(logged.astype(int) - expected.astype(int)).max() <= 1
    first = np.asarray(Image.open(io.BytesIO(acc.Images("reconstructions")[0].encoded_image_string)).convert("RGB"))
    assert np.abs(first.astype(int) - logged.astype(int)).max() > 0  # images change as training goes on


def test_missing_tensorboard_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    # As if tensorboard were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--tensorboard", "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vaelab[tensorboard]" in err[0]
    assert not out.exists()


def test_user_hook_still_runs_alongside_tensorboard(tmp_path):
    from vaelab.config import RunConfig, TrainConfig

    seen = []
    cfg = RunConfig(train=TrainConfig(epochs=2, batch_size=64, tensorboard=True))
    run = vaelab.train(cfg, tmp_path / "run", progress=False, hook=lambda row, model: seen.append(row["epoch"]))
    assert seen == [1, 2]
    assert [e.step for e in _events(run).Scalars("loss/val")] == [1, 2]


def test_resumed_run_keeps_logging(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--tensorboard", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert [e.step for e in _events(out).Scalars("loss/val")] == [1, 2]

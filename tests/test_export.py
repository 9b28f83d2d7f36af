"""`vaelab export`: ONNX (run through onnxruntime) and TorchScript files reproduce vaelab's own
decodings and encodings, with a dynamic batch size, for mlp, conv and conditional models."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import vaelab
from vaelab.checkpoint import WEIGHTS_FILE, save_weights
from vaelab.cli import main
from vaelab.config import ModelConfig, RunConfig
from vaelab.models import VAE
from vaelab.runs import CONFIG_FILE

TOLERANCE = 1e-5
# torch.jit is deprecated upstream but still the TorchScript format users ask for.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _run_folder(root, name: str, image_shape: list[int], **model) -> str:
    """A run folder (config.json + model.safetensors) for a freshly initialised model: exporting
    needs weights, not training, and random weights exercise every layer just as well."""
    cfg = RunConfig(model=ModelConfig(image_shape=image_shape, **model))
    cfg.model.num_classes = 10 if cfg.model.conditional else 0
    cfg.validate()
    torch.manual_seed(len(name))
    folder = root / name
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(cfg.to_json())
    save_weights(VAE(cfg.model), folder / WEIGHTS_FILE)
    return str(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {
        "mlp": _run_folder(root, "mlp", [1, 8, 8], arch="mlp", hidden=[32, 16], latent_dim=3),
        # 28×28 RGB: the conv stack goes 28 -> 14 -> 7 -> 4 and the decoder upsamples 4 -> 7, a
        # non-integer factor, where exporters' nearest-neighbour resizing could disagree with PyTorch's.
        "conv": _run_folder(root, "conv", [3, 28, 28], arch="conv", hidden=[8, 8, 16], latent_dim=4,
                            likelihood="bernoulli"),
        "cond": _run_folder(root, "cond", [1, 8, 8], arch="mlp", hidden=[32], latent_dim=2, conditional=True),
    }


def _onnx(path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _max_diff(got, want: torch.Tensor) -> float:
    return float((torch.as_tensor(np.asarray(got)) - want).abs().max())


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_onnx_decoder_and_encoder_match_vaelab(runs, arch, tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    assert main(["export", runs[arch], "--format", "onnx", "--part", "both", "--out", str(out)]) == 0
    model = vaelab.load(runs[arch])
    g = torch.Generator().manual_seed(1)
    for batch in (1, 7):  # neither is the traced batch size (2): the batch dimension is dynamic
        z = torch.randn(batch, model.latent_dim, generator=g) * 2
        param, image = _onnx(out / "decoder.onnx", {"z": z})
        with torch.inference_mode():
            want = model.decode(z)
        assert param.shape == (batch, *model.image_shape)
        assert _max_diff(param, want) < TOLERANCE
        assert _max_diff(image, model.likelihood.mean(want)) < TOLERANCE
        x = torch.rand(batch, *model.image_shape, generator=g)
        mean, log_var = _onnx(out / "encoder.onnx", {"x": x})
        with torch.inference_mode():
            q = model.encode(x)
        assert _max_diff(mean, q.mean) < TOLERANCE and _max_diff(log_var, q.log_var) < TOLERANCE
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["files"]) == {"decoder.onnx", "encoder.onnx"}
    assert manifest["files"]["decoder.onnx"]["inputs"]["z"]["shape"] == ["batch", model.latent_dim]


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_torchscript_matches_vaelab(runs, arch):
    assert main(["export", runs[arch], "--format", "torchscript"]) == 0
    out = vaelab.load(runs[arch])
    folder = f"{runs[arch]}/export"
    decoder = torch.jit.load(f"{folder}/decoder.pt")
    encoder = torch.jit.load(f"{folder}/encoder.pt")
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for batch in (1, 5):
            z = torch.randn(batch, out.latent_dim, generator=g)
            param, image = decoder(z)
            assert _max_diff(param, out.decode(z)) < TOLERANCE
            assert _max_diff(image, out.decode_images(z)) < TOLERANCE
            x = torch.rand(batch, *out.image_shape, generator=g)
            mean, log_var = encoder(x)
            q = out.encode(x)
            assert _max_diff(mean, q.mean) < TOLERANCE and _max_diff(log_var, q.log_var) < TOLERANCE


def test_conditional_model_takes_the_label(runs, tmp_path):
    pytest.importorskip("onnxscript")
    model = vaelab.load(runs["cond"])
    assert main(["export", runs["cond"], "--format", "onnx", "--part", "decoder", "--out", str(tmp_path)]) == 0
    assert main(["export", runs["cond"], "--format", "torchscript", "--part", "encoder", "--out", str(tmp_path)]) == 0
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    param, _ = _onnx(tmp_path / "decoder.onnx", {"z": z, "y": y})
    with torch.inference_mode():
        assert _max_diff(param, model.decode(z, y)) < TOLERANCE
        # The label really is used: another label gives another image from the same z.
        assert _max_diff(param, model.decode(z, (y + 1) % 10)) > 1e-3
        x = torch.rand(3, *model.image_shape)
        labels = torch.tensor([7, 0, 3])
        mean, log_var = torch.jit.load(str(tmp_path / "encoder.pt"))(x, labels)
        q = model.encode(x, labels)
    assert _max_diff(mean, q.mean) < TOLERANCE and _max_diff(log_var, q.log_var) < TOLERANCE
    files = json.loads((tmp_path / "export.json").read_text())["files"]
    assert set(files) == {"decoder.onnx", "encoder.pt"}  # both exports into one folder are described
    assert files["decoder.onnx"]["inputs"]["y"]["dtype"] == "int64"


def test_missing_onnx_packages_is_one_clear_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    out = tmp_path / "never"
    assert main(["export", runs["mlp"], "--format", "onnx", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and "vaelab[export]" in err[0]
    assert not out.exists()


def test_export_of_a_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "torchscript"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]

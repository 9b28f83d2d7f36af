"""The conv layouts: old run folders (config version 1, one conv layout) still load, resume and
evaluate as they did; the new default `transposed` restores exact sizes and has the peer's size.

tests/data/v1_conv_run is a real run folder written by vaelab 0.1.0 at commit 267bef7 (config
version 1, before `conv_layout` existed): `vaelab train --dataset digits --arch conv --hidden 2,4
--latent-dim 2 --likelihood bernoulli --batch-size 64 --threads 1 --seed 5 --epochs 1`;
v1_conv_model_after_2_epochs.safetensors is the same command with `--epochs 2` run straight
through by that version, and v1_conv_eval.json that version's `vaelab eval RUN --iw-samples 20
--no-fid` of the 1-epoch run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.cli import main
from vaelab.cli.options import read_config_file
from vaelab.config import CONFIG_VERSION, ModelConfig, RunConfig
from vaelab.models import VAE

DATA = Path(__file__).parent / "data"


@pytest.fixture
def v1_run(tmp_path) -> Path:
    run = tmp_path / "v1run"
    shutil.copytree(DATA / "v1_conv_run", run)
    return run


def test_a_version_1_conv_config_resolves_to_the_resize_layout(v1_run):
    raw = json.loads((v1_run / "config.json").read_text())
    assert raw["version"] == 1 and "conv_layout" not in raw["model"]
    assert RunConfig.load(v1_run / "config.json").model.conv_layout == "resize"
    assert read_config_file(str(v1_run / "config.json"))["model.conv_layout"] == "resize"  # --config repeats it
    # A config of the current version without the field gets the new default.
    assert RunConfig.from_dict({"model": {"arch": "conv"}}).model.conv_layout == "transposed"
    assert RunConfig().version == CONFIG_VERSION == 3
    # Version 2 (the learning-rate schedule change) came before conv_layout too.
    v2 = {**raw, "version": 2}
    assert RunConfig.from_dict(v2).model.conv_layout == "resize"


def test_a_version_1_conv_run_loads_and_evaluates_as_before(v1_run, capsys):
    model = vaelab.load(v1_run)
    assert model.cfg.conv_layout == "resize"
    assert [n for n, _ in model.decoder.named_parameters()][:2] == ["dense.0.weight", "dense.0.bias"]
    expected = json.loads((DATA / "v1_conv_eval.json").read_text())
    assert main(["eval", str(v1_run), "--iw-samples", "20", "--no-fid", "--json", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("neg_elbo", "recon", "kl", "nll"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
    assert got["num_images"] == expected["num_images"]


def test_a_version_1_conv_run_resumes_to_what_that_version_trained(v1_run):
    """Resumed for a second epoch by this version, it ends at the weights version 1 reached running
    both epochs straight (to float rounding: channels-last kernels and another CPU may round
    differently, so not bit for bit)."""
    vaelab.training.resume(v1_run, progress=False, epochs=2)
    got = load_file(v1_run / "model.safetensors")
    want = load_file(DATA / "v1_conv_model_after_2_epochs.safetensors")
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    saved = RunConfig.load(v1_run / "config.json")
    assert saved.version == CONFIG_VERSION and saved.model.conv_layout == "resize"  # rewritten, layout kept


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 13, 17), (3, 9, 4)])
def test_transposed_layout_restores_each_size_the_encoder_saw(shape):
    model = VAE(ModelConfig(arch="conv", hidden=[4, 8, 8], latent_dim=3, likelihood="bernoulli",
                            image_shape=list(shape)))
    x = torch.rand(2, *shape)
    assert model.decode(model.encode(x).mean).shape == (2, *shape)
    assert not any(isinstance(m, torch.nn.Upsample) for m in model.modules())


def test_default_conv_network_has_the_size_of_monais_var_autoencoder():
    """32-64-128, latent 16, 28x28: MONAI 1.6.1's VarAutoEncoder with the same channels and strides
    has 285,606 parameters (285,601 + its 5 PReLU slopes); vaelab's `resize` layout 1,257,921."""
    sizes = {}
    for layout in ("transposed", "resize"):
        cfg = ModelConfig(arch="conv", conv_layout=layout, latent_dim=16, likelihood="bernoulli",
                          image_shape=[1, 28, 28])
        sizes[layout] = sum(p.numel() for p in VAE(cfg).parameters())
    assert sizes == {"transposed": 285_601, "resize": 1_257_921}


@pytest.mark.parametrize("shape,likelihood", [([1, 28, 28], "bernoulli"), ([3, 32, 32], "gaussian"),
                                              ([1, 13, 9], "logistic"), ([3, 16, 16], "logistic-mixture")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_last_transposed_conv_in_inference_mode_equals_onednn(shape, likelihood, channels_last):
    """In inference mode on a CPU the decoder's last layer is one GEMM + col2im (few output
    channels); it must compute what oneDNN's transposed convolution computes, for odd sizes and
    either memory format, and leave the mixture's many channels to oneDNN."""
    from vaelab.models.conv import OutputConvTranspose2d

    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="conv", latent_dim=6, likelihood=likelihood, image_shape=shape))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    last = model.decoder.convs[-1]
    assert isinstance(last, OutputConvTranspose2d)
    z = torch.randn(2, 5, 6)  # (K, B, D), as L_K decodes
    with torch.no_grad():  # not inference mode: oneDNN
        reference = model.decoder(z, None)
    import vaelab.models.conv as conv_module

    calls = []
    gemm = conv_module._conv_transpose_gemm
    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_module, "_conv_transpose_gemm", lambda x, c: calls.append(1) or gemm(x, c))  # a spy
        fast = model.decoder(z, None)
        h = model.decoder.convs[:-1](model.decoder.dense(z.reshape(10, 6)).unflatten(-1, model.decoder.start_shape))
        direct = torch.nn.functional.conv_transpose2d(h, last.weight, last.bias, last.stride, last.padding,
                                                      last.output_padding)
    assert fast.shape == reference.shape == (2, 5, last.out_channels, *shape[1:])
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.reshape(10, *fast.shape[2:]), direct, atol=1e-5, rtol=1e-5)
    uses_gemm = last.out_channels <= OutputConvTranspose2d.GEMM_MAX_CHANNELS
    assert uses_gemm == (likelihood != "logistic-mixture") == (len(calls) == 1)

"""Bits per dimension on 8-bit data: exact for the discrete likelihoods, the uniform-dequantization
bound for the Gaussian density (checked to lie above the true discrete NLL), none for a Bernoulli on
grey values; PSNR and SSIM of the reconstructions in eval.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from test_likelihoods import integrated_bins
from vaelab.cli import main
from vaelab.config import ModelConfig
from vaelab.data.base import Split
from vaelab.evaluate import evaluate_split, reconstructions
from vaelab.image_metrics import psnr, ssim
from vaelab.models import VAE

SHAPE = (1, 3, 3)  # D = 9 values per image


def constant_model(likelihood: str, raw_output: torch.Tensor, **model_fields) -> VAE:
    """A VAE whose posterior is the prior N(0, I) for every image and whose decoder ignores z (its
    output is `raw_output`, (P·C, H, W)). Then every importance weight is p(x|z) = p(x), so L_K = log p(x)
    exactly, for any K: the bound's value is known in closed form."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="mlp", hidden=[4], latent_dim=2, likelihood=likelihood, image_shape=list(SHAPE),
                            **model_fields))
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.zero_()  # q(z|x) = N(0, I) = p(z)
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.copy_(raw_output.flatten())
    return model.eval()


def test_logistic_bits_per_dim_is_the_exact_discrete_nll():
    gen = torch.Generator().manual_seed(0)
    means = torch.rand(SHAPE, generator=gen)
    log_scales = torch.log(torch.rand(SHAPE, generator=gen) * 0.2 + 0.01)
    model = constant_model("logistic", torch.cat([means - 0.5, log_scales]))  # param(): mean = raw + 0.5
    images = torch.randint(0, 256, (30, *SHAPE), generator=gen).to(torch.uint8)
    result = evaluate_split(model, Split(images), iw_samples=7, batch_size=8)
    # Reference: each pixel's bin mass by numerical integration of the logistic density.
    tables = [integrated_bins(float(m), float(s)) for m, s in zip(means.flatten(), log_scales.exp().flatten())]
    nll = -np.mean([sum(math.log(tables[j][int(k)]) for j, k in enumerate(img.flatten())) for img in images])
    assert result["nll"] == pytest.approx(nll, rel=1e-5)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (9 * math.log(2)), rel=1e-12)
    assert result["bits_per_dim_kind"] == "exact" and result["nll_dequantized"] is None
    for table in tables:  # a proper distribution over the 256 values of every pixel
        assert table.sum() == pytest.approx(1.0, abs=1e-9)


def test_dequantization_bound_lies_above_the_true_discrete_nll():
    """A Gaussian density p with mean m and std 0.01 per pixel defines the discrete model
    P(k) = its mass over [k/256, (k+1)/256) (a lower bound of 1 in total: some mass lies outside [0, 1]).
    The reported bits/dim must bound -log P(k) from above, and lie close to it."""
    std = 0.01
    gen = torch.Generator().manual_seed(1)
    mean = torch.rand(SHAPE, generator=gen) * 0.8 + 0.1
    model = constant_model("gaussian", torch.logit(mean), gaussian_std=std)  # param(): mean = sigmoid(raw)
    # 8-bit data near the means (any data would do; these make the Jensen gap visible)
    images = (mean * 255 + torch.randn((200, *SHAPE), generator=gen) * 3).round().clamp(0, 255).to(torch.uint8)
    result = evaluate_split(model, Split(images), iw_samples=5, batch_size=50)
    normal = torch.distributions.Normal(mean.double(), std)
    k = images.double()
    mass = normal.cdf((k + 1) / 256) - normal.cdf(k / 256)  # (N, 1, 3, 3)
    true_bits = float(-mass.log().flatten(1).sum(1).mean()) / (9 * math.log(2))
    assert result["bits_per_dim_kind"] == "bound" and "dequantization" in result["bits_per_dim_note"]
    assert true_bits < result["bits_per_dim"] < true_bits + 0.1
    assert result["bits_per_dim"] == pytest.approx((result["nll_dequantized"] + 9 * math.log(256)) / (9 * math.log(2)))


def test_bernoulli_on_grey_values_gets_no_bits_per_dim_and_on_binary_data_the_exact_one():
    model = constant_model("bernoulli", torch.zeros(SHAPE))
    images = torch.randint(0, 256, (10, *SHAPE), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    grey = evaluate_split(model, Split(images), iw_samples=3)
    assert grey["bits_per_dim"] is None and grey["bits_per_dim_kind"] is None
    assert "binarize" in grey["bits_per_dim_note"]
    binary = evaluate_split(model, Split(images), iw_samples=3, dynamic_binarize=True)
    assert binary["bits_per_dim_kind"] == "exact"
    assert "binarised" in binary["bits_per_dim_note"] and "8-bit data" not in binary["bits_per_dim_note"]
    assert binary["bits_per_dim"] == pytest.approx(1.0)  # logits 0: every binary pixel has probability 1/2
    static = evaluate_split(model, Split((images > 127).to(torch.uint8) * 255), iw_samples=3, binarized=True)
    assert static["bits_per_dim"] == pytest.approx(1.0)


def _train(fake_mnist, out, *extra):
    args = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "2", "--hidden", "32",
            "--latent-dim", "4", "--batch-size", "20", "--out", str(out), "--quiet", *extra]
    assert main(args) == 0


def test_eval_json_has_psnr_and_ssim_of_the_reconstructions(fake_mnist, tmp_path, capsys):
    import vaelab
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float

    run = tmp_path / "logistic"
    _train(fake_mnist, run, "--likelihood", "logistic")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "3", "--no-fid"]) == 0
    text = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    model = vaelab.load(run)
    test = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist))).test
    x, x_hat = to_float(test.images), reconstructions(model, test)
    assert saved["psnr"] == pytest.approx(float(psnr(x_hat, x).mean()), rel=1e-9)
    assert saved["ssim"] == pytest.approx(float(ssim(x_hat, x).mean()), rel=1e-9)
    assert saved["bits_per_dim_kind"] == "exact" and saved["note"] is None
    assert saved["bits_per_dim"] == pytest.approx(saved["nll"] / (784 * math.log(2)))
    assert "psnr" in text and "ssim" in text and "exact" in text


def test_eval_table_labels_the_gaussian_bits_per_dim_a_bound(fake_mnist, tmp_path, capsys):
    run = tmp_path / "gauss"
    _train(fake_mnist, run, "--likelihood", "gaussian", "--gaussian-variance", "optimal")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "3", "--no-fid"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "bits_per_dim" in line)
    assert "UPPER BOUND" in row and "dequantization" in row
    saved = json.loads((run / "eval.json").read_text())
    assert saved["bits_per_dim_kind"] == "bound" and saved["nll_dequantized"] is not None
    bound = (saved["nll_dequantized"] + 784 * math.log(256)) / (784 * math.log(2))
    assert saved["bits_per_dim"] == pytest.approx(bound)


def test_large_outputs_are_scored_in_chunks_of_draws_with_the_same_result(monkeypatch):
    """Where the ELBO's 10 draws of a batch would not fit one chunk (colour mixtures), they are
    decoded a few at a time: the same KL, and the reconstruction term up to Monte Carlo noise."""
    import vaelab.evaluate as evaluate

    model = constant_model("logistic", torch.cat([torch.zeros(SHAPE), torch.full(SHAPE, -2.0)]))
    images = torch.randint(0, 256, (20, *SHAPE), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    whole = evaluate_split(model, Split(images), iw_samples=4, batch_size=10)
    monkeypatch.setitem(evaluate.CHUNK_SAMPLES, "cpu", 30)  # 30 decodings of 784 values: 3 draws of 10 images
    assert evaluate.default_chunk(model, torch.zeros(10, *SHAPE)) == 3
    chunked = evaluate_split(model, Split(images), iw_samples=4, batch_size=10)
    # The decoder ignores z here, so every draw scores the same: the results agree exactly.
    assert chunked["kl"] == whole["kl"]
    assert chunked["recon"] == pytest.approx(whole["recon"], rel=1e-6)
    assert chunked["nll"] == pytest.approx(whole["nll"], rel=1e-6)

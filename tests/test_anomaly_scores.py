"""vaelab.anomaly scores on constructed cases, against direct numpy computations, and the maps."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.anomaly import SCORE_NAMES, anomaly_maps, fit_reference, score
from vaelab.anomaly.baselines import mean_image_distance, nearest_neighbour_distance
from vaelab.anomaly.complexity import compressed_bits
from vaelab.anomaly.maps import load_mask, save_map_figure
from vaelab.anomaly.scores import COVARIANCE_RIDGE, encode_means, mahalanobis
from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaelab.data import ImageData, Split, load_data
from vaelab.errors import ConfigError, DataError
from vaelab.models import VAE


@pytest.fixture(scope="module")
def digits_zero(tmp_path_factory):
    """A small VAE trained on the 8×8 digit 0 only (a few seconds), and the data."""
    cfg = RunConfig(data=DataConfig(dataset="digits", train_classes=[0]),
                    model=ModelConfig(hidden=[64, 32], latent_dim=2, gaussian_std=0.15),
                    train=TrainConfig(epochs=60, batch_size=32, seed=0))
    torch.set_num_threads(1)
    run = vaelab.train(cfg, tmp_path_factory.mktemp("runs") / "digit0", progress=False)
    return vaelab.load(run), load_data(cfg.data)


def test_an_image_far_from_the_training_data_scores_higher_under_every_score(digits_zero):
    model, data = digits_zero
    reference = fit_reference(model, data.train.images)
    normal = data.test.images[data.test.labels == 0]  # normal images the model has not seen
    x = data.train.images[:1].float() / 255
    far = torch.cat([1.0 - x, torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))])  # inverted, noise
    normal_scores = score(model, normal, reference, iw_samples=50)
    far_scores = score(model, far, reference, iw_samples=50)
    assert set(far_scores) == set(SCORE_NAMES)
    # Every score but the KL. KL(q(z|x) || p(z)) is not a distance from the data: nothing makes an
    # encoder place an image it was never trained on far from the prior, and here (as in the
    # one-class MNIST runs of docs/anomaly.md) such images get a *smaller* KL than normal ones.
    for name in (n for n in SCORE_NAMES if n != "kl"):
        typical = np.median(normal_scores[name])
        assert (far_scores[name] > typical).all(), (name, far_scores[name], typical)
    assert np.isfinite(far_scores["kl"]).all() and (far_scores["kl"] >= 0).all()


def test_nll_is_the_iwae_bound_below_the_elbo(digits_zero):
    model, data = digits_zero
    out = score(model, data.test.images, iw_samples=50, scores=["nll", "neg_elbo", "kl"])
    assert set(out) == {"nll", "neg_elbo", "kl"}  # no reference: only what the model alone gives
    # -L_50 <= -ELBO on average (Burda et al. 2015), and the KL is a part of the -ELBO.
    assert out["nll"].mean() < out["neg_elbo"].mean()
    assert (out["kl"] >= 0).all() and (out["kl"] < out["neg_elbo"] - out["neg_elbo"].min() + out["kl"].max()).all()
    again = score(model, data.test.images, iw_samples=50, scores=["nll"])
    np.testing.assert_array_equal(again["nll"], out["nll"])  # seeded: the same numbers twice


def test_reconstruction_scores_against_a_direct_computation(digits_zero):
    from vaelab.image_metrics import ssim  # checked against scikit-image in test_image_metrics.py

    model, data = digits_zero
    images = data.test.images[:12]
    out = score(model, images, scores=["recon_mse", "recon_mae", "recon_1_minus_ssim"])
    x = images.float() / 255
    x_hat = model.reconstruct(x)  # decode(E_q[z|x])
    np.testing.assert_allclose(out["recon_mse"], (x - x_hat).square().flatten(1).mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["recon_mae"], (x - x_hat).abs().flatten(1).mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["recon_1_minus_ssim"], (1 - ssim(x, x_hat)).numpy(), rtol=1e-6)


def test_mahalanobis_matches_numpy(digits_zero):
    model, data = digits_zero
    reference = fit_reference(model, data.train.images)
    codes = encode_means(model, data.train.images).numpy()
    mean = codes.mean(0)
    cov = np.cov(codes, rowvar=False)
    cov = cov + COVARIANCE_RIDGE * np.trace(cov) / len(mean) * np.eye(len(mean))
    test_codes = encode_means(model, data.test.images).numpy()
    diff = test_codes - mean
    expected = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff))
    got = score(model, data.test.images, reference, scores=["latent_mahalanobis"])["latent_mahalanobis"]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_mahalanobis_of_a_known_gaussian():
    # Diagonal covariance: the distance is the root of the summed squared z-scores.
    from vaelab.anomaly.scores import NormalReference

    cov = torch.diag(torch.tensor([4.0, 0.25], dtype=torch.float64))
    ref = NormalReference(torch.tensor([1.0, -1.0], dtype=torch.float64), cov, torch.linalg.cholesky(cov),
                          torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 1, 2, 2))
    z = torch.tensor([[3.0, -1.0], [1.0, 0.0], [-1.0, -1.5]])
    np.testing.assert_allclose(mahalanobis(z, ref), [1.0, 2.0, math.sqrt(1.0 + 1.0)])


def _brute_force_nn(queries: np.ndarray, bank: np.ndarray, exclude=None) -> np.ndarray:
    q = queries.reshape(len(queries), -1).astype(np.float64) / 255
    b = bank.reshape(len(bank), -1).astype(np.float64) / 255
    d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (N, M), the definition itself
    if exclude is not None:
        d[np.arange(len(q)), exclude] = np.inf
    return d.min(1)


def test_nearest_neighbour_matches_brute_force_across_chunks():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (300, 1, 6, 6), dtype=torch.uint8, generator=gen)
    queries = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=gen)
    queries[:5] = bank[[3, 77, 150, 299, 0]]  # exact matches: distance 0
    got = nearest_neighbour_distance(queries, bank, query_chunk=7, bank_chunk=64)
    np.testing.assert_allclose(got, _brute_force_nn(queries.numpy(), bank.numpy()), rtol=1e-9, atol=1e-9)
    assert (got[:5] == 0).all()


def test_nearest_neighbour_leave_one_out():
    gen = torch.Generator().manual_seed(1)
    bank = torch.randint(0, 256, (90, 3, 4, 4), dtype=torch.uint8, generator=gen)
    bank[10] = bank[20]  # a duplicate: its leave-one-out neighbour is at distance 0
    rows = torch.arange(len(bank))
    got = nearest_neighbour_distance(bank, bank, exclude=rows, query_chunk=16, bank_chunk=32)
    np.testing.assert_allclose(got, _brute_force_nn(bank.numpy(), bank.numpy(), rows.numpy()), rtol=1e-9)
    assert got[10] == 0 and got[20] == 0 and (np.delete(got, [10, 20]) > 0).all()


def test_mean_image_distance_against_numpy():
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (20, 3, 5, 5), dtype=torch.uint8, generator=gen)
    mean = torch.rand(3, 5, 5, dtype=torch.float64, generator=gen)
    expected = np.linalg.norm((images.numpy() / 255.0 - mean.numpy()).reshape(20, -1), axis=1)
    np.testing.assert_allclose(mean_image_distance(images, mean), expected, rtol=1e-12)


def test_compressed_bits_are_png_lengths():
    gen = torch.Generator().manual_seed(3)
    flat = torch.full((1, 1, 16, 16), 128, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8, generator=gen)
    bits = compressed_bits(torch.cat([flat, noise]))
    for image, b in zip((flat, noise), bits):
        buffer = io.BytesIO()
        Image.fromarray(image[0, 0].numpy()).save(buffer, format="PNG", compress_level=9)
        assert b == 8 * len(buffer.getvalue())
    assert bits[0] < bits[1] / 2  # a flat image is far simpler than noise
    volumes = compressed_bits(torch.zeros(2, 1, 4, 8, 8, dtype=torch.uint8))  # volumes: zlib
    assert volumes.shape == (2,) and (volumes > 0).all()


def test_likelihood_ratio_fixes_the_flat_image_failure(tmp_path):
    """The textbook failure (Nalisnick et al. 2019; Serrà et al. 2020) on constructed data: a model
    of textured images gives a flat image a *higher* likelihood than its own training images; the
    complexity-corrected score ranks it as anomalous."""
    gen = torch.Generator().manual_seed(0)
    texture = (64 + torch.randint(0, 128, (240, 1, 16, 16), generator=gen)).to(torch.uint8)  # busy images
    data = ImageData("texture", Split(texture[:200]), Split(texture[200:220]), Split(texture[220:]))
    cfg = RunConfig(data=DataConfig(dataset="folder"), model=ModelConfig(hidden=[32], latent_dim=2, gaussian_std=0.1),
                    train=TrainConfig(epochs=5, batch_size=50, seed=0))
    model = vaelab.load(vaelab.train(cfg, tmp_path / "run", data=data, progress=False))
    flat = torch.full((1, 1, 16, 16), 128, dtype=torch.uint8)
    reference = fit_reference(model, data.train.images)
    normal = score(model, data.test.images, reference, iw_samples=20, scores=["nll", "likelihood_ratio"])
    odd = score(model, flat, reference, iw_samples=20, scores=["nll", "likelihood_ratio"])
    assert odd["nll"][0] < normal["nll"].min()  # the raw likelihood calls the flat image the most normal
    assert odd["likelihood_ratio"][0] > normal["likelihood_ratio"].max()  # the corrected score does not
    # The definition: -L_K in bits (+8 bits per value for a density) minus the PNG length.
    expected = odd["nll"] / math.log(2) + 8 * 256 - compressed_bits(flat)
    np.testing.assert_allclose(odd["likelihood_ratio"], expected)


def test_bad_input_to_score():
    model = VAE(ModelConfig(hidden=[8], latent_dim=2, image_shape=[1, 6, 6])).eval()
    with pytest.raises(DataError, match="the model expects"):
        score(model, torch.zeros(2, 1, 5, 5, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="unknown anomaly score 'auroc'"):
        score(model, torch.zeros(2, 1, 6, 6, dtype=torch.uint8), scores=["auroc"])
    conditional = VAE(ModelConfig(hidden=[8], latent_dim=2, image_shape=[1, 6, 6], conditional=True,
                                  num_classes=3)).eval()
    with pytest.raises(ConfigError, match="unconditional"):
        score(conditional, torch.zeros(2, 1, 6, 6, dtype=torch.uint8))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_maps_are_the_residual_and_its_uncertainty_weighting(likelihood, tmp_path):
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden=[16], latent_dim=2, image_shape=[3, 6, 6], likelihood=likelihood,
                            gaussian_std=0.2)).eval()
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    maps = anomaly_maps(model, images, batch_size=3)
    x = images.float() / 255
    residual = (x - model.reconstruct(x)).abs()
    np.testing.assert_allclose(maps.residual, residual.mean(1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.intensity, x.mean(1).numpy(), rtol=1e-6)
    if likelihood == "gaussian":  # a fixed std: the weighted map is the residual in units of it
        np.testing.assert_allclose(maps.weighted, residual.mean(1).numpy() / 0.2, rtol=1e-5, atol=1e-6)
    else:  # Bernoulli has no per-pixel std of its own
        assert maps.weighted is None
    mask = np.zeros((6, 6), bool)
    mask[1:3, 2:5] = True
    path = save_map_figure(tmp_path / "m.png", maps, 1, "title", {"residual": 1.0, "weighted": 5.0}, mask)
    assert Image.open(path).size[0] > 300


def test_masks_are_resized_by_nearest_neighbour_and_corrupt_ones_refused(tmp_path):
    mask = np.zeros((12, 12), np.uint8)
    mask[0:6, 6:12] = 200
    Image.fromarray(mask).save(tmp_path / "a.png")
    small = load_mask(tmp_path / "a.png", (6, 6))
    assert small.dtype == bool and small.shape == (6, 6)
    np.testing.assert_array_equal(small, mask[::2, ::2] > 0)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="b.png: not a readable mask image"):
        load_mask(tmp_path / "b.png", (6, 6))

"""`vaelab eval`: active units, the Fréchet distance, the classifier cache, and end-to-end runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.config import ModelConfig
from vaelab.data.base import Split
from vaelab.evaluate import active_units, elbo_on_split, evaluate_split
from vaelab.fid import feature_statistics, frechet_distance
from vaelab.models import VAE

# ---- active units ----------------------------------------------------------------------------------


def test_active_units_on_constructed_posterior_means():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 0.3, 0.05, 0.0, 2.0])  # variances 1, 0.09, 0.0025, 0, 4
    means = torch.randn(20000, 5, generator=gen) * scales + torch.tensor([5.0, -1.0, 0.0, 3.0, 0.0])
    count, variance = active_units(means)
    assert count == 3  # the constant offsets do not matter; 0.0025 and 0 are below 0.01
    torch.testing.assert_close(variance, means.var(0), rtol=1e-4, atol=1e-7)
    assert active_units(means, threshold=0.001)[0] == 4


# ---- Fréchet distance ------------------------------------------------------------------------------


def _random_cov(dim: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2000, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    stats = feature_statistics(features)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-6 * torch.trace(stats[1]).item())
    distances = []
    for shift in (0.5, 1.0, 2.0):
        delta = torch.full((16,), shift)
        distances.append(frechet_distance(*stats, *feature_statistics(features + delta)))
        # a pure shift leaves the covariances equal, so the distance is exactly |delta|²
        assert distances[-1] == pytest.approx(16 * shift**2, rel=1e-6)
    assert distances == sorted(distances)


def test_fid_matches_diagonal_closed_form_and_scipy():
    gen = torch.Generator().manual_seed(2)
    m1, m2 = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    v1, v2 = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1, torch.rand(6, generator=gen,
                                                                                dtype=torch.float64) + 0.1
    # diagonal covariances: d² = |m1 − m2|² + Σ (√v1 − √v2)²
    closed = ((m1 - m2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum()).item()
    assert frechet_distance(m1, torch.diag(v1), m2, torch.diag(v2)) == pytest.approx(closed, rel=1e-10)

    linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = _random_cov(12, gen), _random_cov(12, gen)
    m1, m2 = torch.randn(12, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    root = linalg.sqrtm((c1 @ c2).numpy()).real
    reference = ((m1 - m2).square().sum() + torch.trace(c1) + torch.trace(c2)).item() - 2 * float(root.trace())
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-8)


# ---- the classifier --------------------------------------------------------------------------------


def test_classifier_is_trained_once_cached_and_accurate(fake_mnist, tmp_path, monkeypatch):
    from vaelab.classifier import cache_root, classifier_features, get_classifier, predict
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float

    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    data = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist)))
    net, meta = get_classifier(data, "mnist")
    files = sorted(p.name for p in cache_root().iterdir())
    assert files == [f"{meta['key']}.json", f"{meta['key']}.safetensors"] and meta["key"].startswith("mnist-1x28x28-")
    assert meta["test_accuracy"] > 0.9  # the fixture's label is the position of a bar: easy
    test_x = to_float(data.test.images)
    assert meta["test_accuracy"] == pytest.approx(float((predict(net, test_x) == data.test.labels).float().mean()))
    stamp = (cache_root() / f"{meta['key']}.safetensors").stat().st_mtime_ns
    cached, meta2 = get_classifier(data, "mnist")  # loaded, not retrained
    assert (cache_root() / f"{meta['key']}.safetensors").stat().st_mtime_ns == stamp
    assert meta2["test_accuracy"] == meta["test_accuracy"]
    torch.testing.assert_close(classifier_features(cached, test_x), classifier_features(net, test_x))
    assert classifier_features(net, test_x).shape == (len(test_x), 128)


# ---- the evaluation pass ---------------------------------------------------------------------------


def _tiny_model() -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(arch="mlp", hidden=[32], latent_dim=3, likelihood="bernoulli",
                           image_shape=[1, 28, 28])).eval()


def test_evaluate_split_agrees_with_training_elbo_and_binarises_like_it(fake_mnist):
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    data = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist)))
    split = Split(data.test.images // 2, data.test.labels)  # grey (127) bars, so binarising changes them
    model = _tiny_model()
    dynamic = evaluate_split(model, split, iw_samples=30, batch_size=20, dynamic_binarize=True)
    reference = elbo_on_split(model, split, batch_size=20, dynamic_binarize=True)
    # The closed-form KL depends only on the input bits: equal KL = the same binarised images.
    assert dynamic["kl"] == pytest.approx(reference["kl"], rel=1e-6)
    assert dynamic["neg_elbo"] == pytest.approx(reference["loss"], rel=0.05)
    grey = evaluate_split(model, split, iw_samples=30, batch_size=20, dynamic_binarize=False)
    assert grey["kl"] != pytest.approx(dynamic["kl"], rel=1e-6)
    again = evaluate_split(model, split, iw_samples=30, batch_size=20, dynamic_binarize=True)
    assert again["nll"] == dynamic["nll"]  # seeded: repeatable
    assert dynamic["nll"] <= dynamic["neg_elbo"]  # L_30 >= ELBO
    assert dynamic["bits_per_dim"] == pytest.approx(dynamic["nll"] / (784 * math.log(2)))
    assert dynamic["num_images"] == 40 and dynamic["iw_samples"] == 30
    # Active units, recomputed from the posterior means of the (grey, so deterministic) images with
    # NumPy: the sample variance of each dimension's mean over the split, against 0.01.
    with torch.no_grad():
        means = model.encode(split.images.float() / 255).mean.double().numpy()
    variances = means.var(axis=0, ddof=1)
    assert grey["unit_variances"] == pytest.approx(variances.tolist(), rel=1e-3, abs=1e-5)
    assert grey["active_units"] == int((variances > 0.01).sum())
    assert dynamic["active_units"] == sum(v > 0.01 for v in dynamic["unit_variances"])
    assert len(dynamic["unit_variances"]) == 3


# ---- end to end through the CLI --------------------------------------------------------------------


def _train(fake_mnist, out, *extra):
    args = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "2", "--hidden", "32",
            "--latent-dim", "4", "--batch-size", "20", "--out", str(out), "--quiet", *extra]
    assert main(args) == 0


def test_eval_end_to_end_iwae_trained_bernoulli_run(fake_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run = tmp_path / "run"
    _train(fake_mnist, run, "--likelihood", "bernoulli", "--binarize", "dynamic", "--objective", "iwae",
           "--iw-samples-train", "5")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "50", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "eval.json").read_text())
    assert printed == saved
    for key in ("neg_elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "fid", "recon_accuracy",
                "classifier_accuracy"):
        assert isinstance(saved[key], (int, float)) and math.isfinite(saved[key]), key
    assert saved["iw_samples"] == 50 and saved["num_images"] == 40 and saved["split"] == "test"
    assert saved["neg_elbo"] == pytest.approx(saved["recon"] + saved["kl"])
    assert saved["nll"] <= saved["neg_elbo"] and saved["fid"] >= 0 and 0 <= saved["recon_accuracy"] <= 1
    assert saved["note"] is None and saved["binarize"] == "dynamic"

    assert main(["eval", str(run), "--iw-samples", "50", "--split", "val", "--no-fid"]) == 0
    text = capsys.readouterr().out
    assert "nll (-L_50)" in text and "--no-fid" in text
    saved = json.loads((run / "eval.json").read_text())
    assert saved["split"] == "val" and saved["fid"] is None and saved["num_images"] == 12


def test_eval_gaussian_run_says_density(fake_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run = tmp_path / "gauss"
    _train(fake_mnist, run, "--likelihood", "gaussian")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "10", "--no-fid"]) == 0
    text = capsys.readouterr().out
    assert "density on [0, 1] pixel values" in text
    assert "density" in json.loads((run / "eval.json").read_text())["note"]


@pytest.mark.parametrize("extra, message", [
    (["--iw-samples", "0"], "--iw-samples must be between 1"),
    (["--iw-samples", "lots"], "--iw-samples must be a whole number"),
    (["--batch-size", "-3"], "--batch-size must be between 1"),
    (["--split", "train"], "--split must be test or val"),
])
def test_eval_bad_flags_give_one_line(tmp_path, capsys, extra, message):
    assert main(["eval", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: ") and message in err


def test_eval_missing_run_gives_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run folder not found" in err
    assert main(["eval", str(tmp_path)]) == 2  # a folder that is not a run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: ")


def test_dynamic_binarisation_bits_do_not_depend_on_the_batch_size():
    """`reconstructions` (batches of 500) and `evaluate_split` (batches of 100) score the same
    binarised images only if the seeded draws do not depend on how the split is batched."""
    import torch

    from vaelab.data.base import Split
    from vaelab.data.batches import iterate_batches

    split = Split((torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8),
                  None)

    def bits(batch_size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        return torch.cat([x for x, _ in iterate_batches(split, batch_size, shuffle=False, generator=gen,
                                                        dynamic_binarize=True)])

    reference = bits(100)
    assert set(reference.unique().tolist()) == {0.0, 1.0}
    for batch_size in (500, 37, 1000):
        assert torch.equal(bits(batch_size), reference), batch_size


def _trained_conv_digits_model(epochs: int = 6):
    """A small transposed-layout conv VAE trained on the bundled 8x8 digits (confident logits, as a
    trained model has: the case where a low-precision decoder could shift the bound)."""
    import vaelab
    from vaelab.data import load_data

    cfg = vaelab.RunConfig(data=vaelab.DataConfig(dataset="digits", binarize="dynamic"),
                           model=vaelab.ModelConfig(arch="conv", hidden=[8, 16], latent_dim=4, likelihood="bernoulli"),
                           train=vaelab.TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, threads=1))
    data = load_data(cfg.data)
    models = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vaelab.train(cfg, f"{tmp}/run", progress=False, data=data,
                     hook=lambda row, model: models.append(model) if row["epoch"] == epochs else None)
    return models[0], data


@pytest.mark.slow  # trains a small conv model for 6 epochs (~5 s on one core)
def test_bf16_decoder_keeps_the_bound_within_005_nats_of_float32():
    """The precision `decoder_precision` may pick ("auto" picks bf16 only where it runs in hardware)
    must keep L_K within 0.05 nats of float32, on the same draws."""
    from vaelab.evaluate import evaluate_split

    model, data = _trained_conv_digits_model()
    split = type(data.test)(data.test.images[:120], data.test.labels[:120])
    fp32 = evaluate_split(model, split, iw_samples=64, batch_size=60, dynamic_binarize=True, precision="fp32")
    bf16 = evaluate_split(model, split, iw_samples=64, batch_size=60, dynamic_binarize=True, precision="bf16")
    assert (fp32["decoder_precision"], bf16["decoder_precision"]) == ("fp32", "bf16")
    assert fp32["nll"] > 20  # a real bound on 8x8 binarised digits, not a degenerate model
    print(f"L_64 fp32 {fp32['nll']:.4f}, bf16 {bf16['nll']:.4f}")
    assert abs(bf16["nll"] - fp32["nll"]) < 0.05, (bf16["nll"], fp32["nll"])
    assert bf16["nll"] != fp32["nll"]  # bf16 really ran
    # ... and the decoder is itself again afterwards.
    assert "forward" not in model.decoder.__dict__


def test_encoder_runs_once_per_image_and_chunking_does_not_change_the_bound():
    """L_K decodes k draws of every image of a batch per call; the encoder runs once per image
    whatever K and the chunk size, and the chunk size does not change the bound beyond rounding."""
    from vaelab.config import ModelConfig
    from vaelab.data.base import Split
    from vaelab.evaluate import ELBO_SAMPLES, evaluate_split, iwae_bound
    from vaelab.models import VAE

    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="conv", hidden=[4, 8], latent_dim=3, likelihood="bernoulli",
                            image_shape=[1, 12, 12])).eval()
    images = (torch.rand(30, 1, 12, 12) * 255).to(torch.uint8)
    encoded, decoded = [], []
    model.encoder.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    model.decoder.register_forward_hook(lambda m, args, out: decoded.append(out.shape[:2]))
    evaluate_split(model, Split(images), iw_samples=100, batch_size=10, dynamic_binarize=True)
    assert encoded == [10, 10, 10]  # once per image: 3 batches of 10, whatever K
    # Per batch: the ELBO's 10 draws, then L_100 in chunks of 512 latents // 10 images = 51 draws,
    # then decode(E_q[z]) of the 10 images (B, C) for PSNR/SSIM.
    assert [tuple(d) for d in decoded] == [(ELBO_SAMPLES, 10), (51, 10), (49, 10), (10, 1)] * 3
    x = torch.bernoulli(images[:10].float() / 255)
    with torch.inference_mode():
        q = model.encode(x)
        a = iwae_bound(model, x, None, 200, q, torch.Generator().manual_seed(1), chunk_size=7)
        b = iwae_bound(model, x, None, 200, q, torch.Generator().manual_seed(1), chunk_size=200)
    # Different chunkings draw different noise (the generator fills each chunk's tensor at once), so
    # the two are independent estimates of the same L_200: they agree to its Monte Carlo error.
    assert abs(float(a.mean() - b.mean())) < 0.2 and torch.allclose(a, b, atol=1.0)


def test_fid_follows_its_protocol_on_a_conditional_run(fake_mnist, tmp_path, monkeypatch, capsys):
    """FID = the Fréchet distance (recomputed here with SciPy's matrix square root) between the
    classifier features of the split's first min(10000, N) grey images and as many expected
    images decoded from z ~ N(0, I), conditioned on those real images' labels."""
    from scipy import linalg

    import vaelab
    import vaelab.classifier
    from vaelab.classifier import classifier_features, get_classifier
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.evaluate import generated_samples

    monkeypatch.setattr(vaelab.classifier, "MIN_STEPS", 4)  # a quick classifier: any fixed network defines an FID
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run = tmp_path / "cond"
    _train(fake_mnist, run, "--conditional", "--binarize", "dynamic", "--likelihood", "bernoulli")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    grey = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist)))
    assert result["fid_samples"] == min(10_000, len(grey.test)) == 40

    model = vaelab.load(run)
    net, meta = get_classifier(grey, "mnist")  # the cached network the evaluation used
    assert meta["key"] == result["classifier"] and meta["test_accuracy"] == result["classifier_accuracy"]

    def fid(labels: torch.Tensor) -> float:
        real = classifier_features(net, grey.test.images.float() / 255).double().numpy()
        fake = classifier_features(net, generated_samples(model, 40, labels, seed=result["seed"])).double().numpy()
        mu1, mu2 = real.mean(0), fake.mean(0)
        s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
        root = linalg.sqrtm(s1 @ s2).real
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))

    assert result["fid"] == pytest.approx(fid(grey.test.labels), rel=1e-5)
    assert result["fid"] != pytest.approx(fid(torch.zeros(40, dtype=torch.long)), rel=1e-3)  # the labels matter

"""What a first run on photographs gets: the folder/npz defaults (resnet, 64-d code, the sigma-VAE's
Gaussian) under every explicit setting, the paper's criterion kept for MNIST, digits and --preset
paper; a default run on colour pictures that reconstructs them; figures from a seeded sample, in colour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.cli import main
from vaelab.presets import PHOTO_DEFAULTS


def _show(capsys, *argv: str) -> dict:
    assert main(["config", "--show", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("dataset", ["folder", "npz", "dicom", "nifti"])
def test_photo_datasets_get_their_defaults_under_every_explicit_setting(dataset, capsys, tmp_path):
    model = _show(capsys, "--dataset", dataset)["model"]
    assert (model["arch"], model["latent_dim"], model["likelihood"], model["gaussian_variance"]) == \
        ("resnet", 64, "gaussian", "optimal")
    assert set(PHOTO_DEFAULTS) == {"model.arch", "model.latent_dim", "model.likelihood", "model.gaussian_variance"}
    given = _show(capsys, "--dataset", dataset, "--arch", "conv", "--likelihood", "logistic")["model"]
    assert (given["arch"], given["latent_dim"], given["likelihood"], given["gaussian_variance"]) == \
        ("conv", 64, "logistic", "fixed")  # what is given wins; the rest stays the kind's default
    fixed = _show(capsys, "--dataset", dataset, "--gaussian-std", "0.2")["model"]
    assert (fixed["gaussian_variance"], fixed["gaussian_std"]) == ("fixed", 0.2)  # a std given is a fixed std
    exp = tmp_path / "exp.toml"
    exp.write_text(f'[data]\ndataset = "{dataset}"\n[model]\nlatent_dim = 8\n')
    from_file = _show(capsys, "--config", str(exp))["model"]
    assert (from_file["arch"], from_file["latent_dim"], from_file["gaussian_variance"]) == ("resnet", 8, "optimal")


@pytest.mark.parametrize("dataset", ["dicom", "nifti"])
def test_volumes_get_the_same_defaults_on_the_3d_network(dataset, capsys):
    model = _show(capsys, "--dataset", dataset, "--dimensions", "3")["model"]
    assert (model["arch"], model["latent_dim"], model["likelihood"], model["gaussian_variance"]) == \
        ("conv3d", 64, "gaussian", "optimal")
    given = _show(capsys, "--dataset", dataset, "--dimensions", "3", "--arch", "mlp")["model"]
    assert (given["arch"], given["latent_dim"]) == ("mlp", 64)


def test_mnist_digits_and_the_paper_preset_keep_the_papers_criterion(capsys):
    defaults = _show(capsys)["model"]
    for argv in (["--dataset", "mnist"], ["--dataset", "fashion-mnist"], ["--dataset", "digits"],
                 ["--preset", "paper"], ["--preset", "paper", "--dataset", "folder"]):
        model = _show(capsys, *argv)["model"]
        assert (model["arch"], model["latent_dim"], model["likelihood"], model["gaussian_variance"],
                model["gaussian_std"]) == ("mlp", 2, "gaussian", "fixed", defaults["gaussian_std"]), argv


def _bars(folder, n: int = 120, seed: int = 0):
    """Colour pictures with structure the code must carry: a yellow bar on a blue ground at one of
    six heights (the class, one sub-folder each), with slight noise; 16×16."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(0, 6))
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
        image = np.empty((16, 16, 3))
        image[:] = (20, 40, 90)
        image[2 + 2 * k : 4 + 2 * k, 2:14] = (250, 200, 40)
        image += rng.normal(0, 3, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"c{k}" / f"{i:03d}.png")


@pytest.mark.slow
def test_a_default_run_on_colour_pictures_reconstructs_them_in_colour(tmp_path):
    """With no likelihood flag a folder trains the sigma-VAE: the code carries the picture and the
    reconstructions beat painting each picture its own mean colour by far; the paper's fixed std
    on the same data collapses the code and does not."""
    import vaelab
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float
    from vaelab.image_metrics import psnr
    from vaelab.runs import read_metrics

    _bars(tmp_path / "pictures")
    test = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path / "pictures"), image_size=16, channels=3)).test
    x = to_float(test.images)
    flat = float(psnr(x.mean((2, 3), keepdim=True).expand_as(x), x).mean())  # each picture its own mean colour
    results = {}
    for name, extra in (("default", []), ("paper", ["--preset", "paper"])):
        run = tmp_path / name
        assert main(["train", *extra, "--dataset", "folder", "--data-dir", str(tmp_path / "pictures"),
                     "--image-size", "16", "--channels", "3", "--hidden", "8,16", "--epochs", "8", "--batch-size", "8",
                     "--threads", "1", "--out", str(run), "--quiet"]) == 0
        results[name] = (read_metrics(run / "metrics.jsonl")[-1]["val_kl"],
                         float(psnr(vaelab.load(run).reconstruct(x), x).mean()))
    cfg = json.loads((tmp_path / "default" / "config.json").read_text())["model"]
    assert (cfg["arch"], cfg["likelihood"], cfg["gaussian_variance"], cfg["latent_dim"]) == \
        ("resnet", "gaussian", "optimal", 64)  # resolved and saved
    (kl, sharp), (paper_kl, paper_psnr) = results["default"], results["paper"]
    assert kl > 20 and sharp > flat + 8, (results, flat)  # the code is used; far sharper than flat colour
    assert paper_kl < 5 and paper_psnr < flat, (results, flat)  # today's criterion: collapse, a blur
    figure = np.asarray(Image.open(tmp_path / "default" / "figures" / "reconstructions.png").convert("RGB")).astype(int)
    assert np.abs(figure[..., 0] - figure[..., 2]).max() > 100  # drawn in colour (yellow on blue)


def test_figures_show_a_seeded_random_sample_of_the_test_split(fake_mnist, tmp_path):
    import vaelab
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float
    from vaelab.plots import figure_indices, image_grid

    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "1", "--hidden", "16",
                 "--batch-size", "20", "--seed", "4", "--out", str(run), "--quiet"]) == 0
    test = load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist))).test
    idx = figure_indices(len(test), 10, seed=4)
    assert len(set(idx.tolist())) == 10 and idx.tolist() != list(range(10))
    assert figure_indices(len(test), 10, seed=5).tolist() != idx.tolist()  # the seed decides
    assert torch.equal(figure_indices(len(test), 10, seed=4), idx)
    model = vaelab.load(run)
    x = to_float(test.images[idx])
    expected = image_grid(torch.cat([x, model.reconstruct(x)]), nrow=10)
    drawn = np.asarray(Image.open(run / "figures" / "reconstructions.png").convert("RGB"))
    assert np.array_equal(drawn, expected)


def test_the_latent_map_of_a_one_image_split_is_a_plane():
    """A tiny folder's test split can hold one image; with the photo defaults' 64-d code the latent
    figure's PCA then has one direction only, and the plane is completed with an orthogonal one."""
    from vaelab.latent import fit_projection

    projection = fit_projection(torch.randn(1, 64))
    assert projection.components.shape == (2, 64)
    torch.testing.assert_close(projection.components @ projection.components.T, torch.eye(2), atol=1e-5, rtol=0)

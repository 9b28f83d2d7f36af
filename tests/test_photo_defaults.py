"""What a first run on photographs gets: the folder/npz defaults (resnet, 64-d code, discretized
logistic) under every explicit setting, the paper's criterion kept for MNIST, digits and --preset
paper; a default run on colour photos that reconstructs them; figures from a seeded sample, in colour."""

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


@pytest.mark.parametrize("dataset", ["folder", "npz"])
def test_photo_datasets_get_their_defaults_under_every_explicit_setting(dataset, capsys, tmp_path):
    model = _show(capsys, "--dataset", dataset)["model"]
    assert (model["arch"], model["latent_dim"], model["likelihood"]) == ("resnet", 64, "logistic")
    assert set(PHOTO_DEFAULTS) == {"model.arch", "model.latent_dim", "model.likelihood"}
    given = _show(capsys, "--dataset", dataset, "--arch", "conv", "--likelihood", "gaussian")["model"]
    assert (given["arch"], given["latent_dim"], given["likelihood"], given["gaussian_variance"]) == \
        ("conv", 64, "gaussian", "fixed")  # what is given wins; the rest stays the kind's default
    exp = tmp_path / "exp.toml"
    exp.write_text(f'[data]\ndataset = "{dataset}"\n[model]\nlatent_dim = 8\n')
    from_file = _show(capsys, "--config", str(exp))["model"]
    assert (from_file["arch"], from_file["latent_dim"]) == ("resnet", 8)


def test_mnist_digits_and_the_paper_preset_keep_the_papers_criterion(capsys):
    defaults = _show(capsys)["model"]
    for argv in (["--dataset", "mnist"], ["--dataset", "fashion-mnist"], ["--dataset", "digits"],
                 ["--preset", "paper"], ["--preset", "paper", "--dataset", "folder"]):
        model = _show(capsys, *argv)["model"]
        assert (model["arch"], model["latent_dim"], model["likelihood"], model["gaussian_variance"],
                model["gaussian_std"]) == ("mlp", 2, "gaussian", "fixed", defaults["gaussian_std"]), argv


def _photos(folder, n: int = 120, size: int = 16, seed: int = 0):
    """Colour 'photos': a random background colour, a rectangle of another colour, slight noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        image = np.empty((size, size, 3))
        image[:] = rng.uniform(0, 255, 3)
        top, left = rng.integers(0, size - 6, 2)
        h, w = rng.integers(4, 8, 2)
        image[top : top + h, left : left + w] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 4, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.mark.slow
def test_a_default_run_on_colour_photos_reconstructs_them_in_colour(tmp_path):
    import vaelab
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float
    from vaelab.image_metrics import psnr
    from vaelab.runs import read_metrics

    _photos(tmp_path / "photos")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "photos"), "--image-size", "16",
                 "--channels", "3", "--hidden", "8,16", "--blocks", "1", "--epochs", "8", "--batch-size", "16",
                 "--threads", "1", "--out", str(run), "--quiet"]) == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert (cfg["arch"], cfg["likelihood"], cfg["latent_dim"]) == ("resnet", "logistic", 64)  # resolved and saved
    last = read_metrics(run / "metrics.jsonl")[-1]
    assert last["val_kl"] > 20  # the code carries the image: no collapse
    model = vaelab.load(run)
    test = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path / "photos"), image_size=16, channels=3)).test
    x = to_float(test.images)
    flat = x.mean((2, 3), keepdim=True).expand_as(x)  # each image painted its own mean colour
    assert float(psnr(model.reconstruct(x), x).mean()) > float(psnr(flat, x).mean()) + 3
    figure = np.asarray(Image.open(run / "figures" / "reconstructions.png").convert("RGB")).astype(int)
    assert np.abs(figure[..., 0] - figure[..., 1]).max() > 50  # drawn in colour


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

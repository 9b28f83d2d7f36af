"""End-to-end: the latent-space commands through `vaelab.cli.main` on tiny runs (fake MNIST, an
image folder, a conditional run), and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.cli import main

TRAIN = ["--epochs", "2", "--batch-size", "16", "--hidden", "32,16", "--quiet"]


def train_run(out, *flags) -> None:
    assert main(["train", *flags, *TRAIN, "--out", str(out)]) == 0


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: error:"), err
    return err[0]


@pytest.fixture
def mnist_run(tmp_path, fake_mnist):
    out = tmp_path / "run"
    train_run(out, "--dataset", "mnist", "--data-dir", str(fake_mnist), "--latent-dim", "3")
    return out


def write_png(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_every_command_writes_its_figure_on_an_mnist_run(mnist_run, tmp_path, capsys):
    user = write_png(tmp_path / "mine.png", np.full((40, 50, 3), 200, np.uint8))  # RGB, other size
    commands = {
        "sample": ["-n", "16", "--temperature", "0.8", "--seed", "3"],
        "reconstruct": ["--indices", "0", "5", "--images", user],
        "interpolate": ["--from", "1", "--to", user, "--steps", "6", "--mode", "slerp"],
        "traverse": ["--image", "2", "--range", "-2", "2", "--steps", "5"],
        "manifold": ["--steps", "6"],
        "edit": ["--image", "0", "--toward", "4", "--strength", "2"],
    }
    for name, flags in commands.items():
        assert main([name, str(mnist_run), *flags]) == 0, name
        path = mnist_run / "figures" / f"{name}.png"
        assert str(path) in capsys.readouterr().out
        width, height = png_size(path)
        assert width > 100 and height > 50, name
    # 3 latent dims: traverse shows all three rows, manifold the two with the highest KL.
    assert png_size(mnist_run / "figures" / "traverse.png")[1] > png_size(mnist_run / "figures" / "edit.png")[1]
    out = tmp_path / "elsewhere" / "walk.png"
    assert main(["interpolate", str(mnist_run), "--from", "0", "--to", "3", "--out", str(out)]) == 0
    assert png_size(out)[0] > 100
    assert main(["traverse", str(mnist_run), "--dims", "2", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["manifold", str(mnist_run), "--dims", "2,0", "--image", user, "--out", str(tmp_path / "m.png")]) == 0


def test_bad_inputs_are_one_line_errors(mnist_run, tmp_path, capsys):
    before = sorted(p.name for p in (mnist_run / "figures").iterdir())
    assert "out of range" in one_line_error(capsys, ["reconstruct", str(mnist_run), "--indices", "40"])
    assert "out of range" in one_line_error(capsys, ["interpolate", str(mnist_run), "--from", "0", "--to", "-1"])
    assert "not found" in one_line_error(capsys, ["interpolate", str(mnist_run), "--from", str(tmp_path / "no.png"),
                                                  "--to", "1"])
    assert "not conditional" in one_line_error(capsys, ["sample", str(mnist_run), "--label", "7"])
    assert "conditional" in one_line_error(capsys, ["reconstruct", str(mnist_run), "--label", "7"])
    assert "out of range" in one_line_error(capsys, ["traverse", str(mnist_run), "--dims", "0,3"])
    assert "classes 0..9" in one_line_error(capsys, ["edit", str(mnist_run), "--image", "0", "--toward", "12"])
    assert "--toward" in one_line_error(capsys, ["edit", str(mnist_run), "--image", "0"])
    assert "not found" in one_line_error(capsys, ["sample", str(tmp_path / "no-run")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert "not a readable image" in one_line_error(capsys, ["reconstruct", str(mnist_run), "--images", str(bad)])
    assert sorted(p.name for p in (mnist_run / "figures").iterdir()) == before  # nothing written


def test_conditional_run_samples_a_chosen_label_and_edits_the_label(tmp_path, fake_mnist, capsys):
    run = tmp_path / "cond"
    train_run(run, "--dataset", "mnist", "--data-dir", str(fake_mnist), "--conditional")
    assert main(["sample", str(run), "--label", "7", "-n", "8", "--out", str(tmp_path / "s7.png")]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "all.png")]) == 0  # one class per column
    assert main(["edit", str(run), "--image", "0", "--toward", "3", "--out", str(tmp_path / "e.png")]) == 0
    assert main(["interpolate", str(run), "--from", "0", "--to", "1", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["traverse", str(run), "--label", "2", "--out", str(tmp_path / "t.png")]) == 0
    for name in ("s7", "all", "e", "i", "t"):
        assert png_size(tmp_path / f"{name}.png")[0] > 50
    user = write_png(tmp_path / "u.png", np.zeros((28, 28), np.uint8))
    assert "--label" in one_line_error(capsys, ["reconstruct", str(run), "--images", user])
    assert "0..9" in one_line_error(capsys, ["sample", str(run), "--label", "10"])


def make_folder(root, size: int = 12) -> None:
    """Two classes of RGB images: horizontal and vertical bars at random positions."""
    rng = np.random.default_rng(0)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (root / name).mkdir(parents=True)
        for i in range(24):
            img = np.zeros((size, size, 3), np.uint8)
            k = rng.integers(1, size - 3)
            if axis == 0:
                img[k:k + 2, :, :] = (255, 128, 0)
            else:
                img[:, k:k + 2, :] = (0, 128, 255)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_every_command_on_a_folder_run(tmp_path, capsys):
    images = tmp_path / "images"
    make_folder(images)
    run = tmp_path / "frun"
    train_run(run, "--dataset", "folder", "--data-dir", str(images), "--image-size", "12", "--channels", "3",
              "--arch", "conv", "--latent-dim", "4")
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    for i in range(3):
        write_png(tmp_path / "with" / f"{i}.png", np.asarray(Image.open(images / "vertical" / f"{i}.png")))
        write_png(tmp_path / "without" / f"{i}.png", np.asarray(Image.open(images / "horizontal" / f"{i}.png")))
    user = str(images / "vertical" / "5.png")
    commands = [
        ["sample", "-n", "9"],
        ["reconstruct", "--images", user, "--indices", "0"],
        ["interpolate", "--from", "0", "--to", user, "--steps", "4"],
        ["traverse"],
        ["manifold", "--steps", "4"],
        ["edit", "--image", "0", "--toward", "vertical"],
        ["edit", "--image", user, "--toward-folder", str(tmp_path / "with"), "--from-folder",
         str(tmp_path / "without"), "--out", str(tmp_path / "folder-edit.png")],
    ]
    for argv in commands:
        assert main([argv[0], str(run), *argv[1:]]) == 0, argv
    for name in ("sample", "reconstruct", "interpolate", "traverse", "manifold", "edit"):
        with Image.open(run / "figures" / f"{name}.png") as img:
            assert img.mode in ("RGB", "RGBA") and img.size[0] > 50
    assert (tmp_path / "folder-edit.png").is_file()
    assert "not a class" in one_line_error(capsys, ["edit", str(run), "--image", "0", "--toward", "diagonal"])
    assert "go together" in one_line_error(capsys, ["edit", str(run), "--image", "0", "--toward-folder",
                                                    str(tmp_path / "with")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in one_line_error(capsys, ["edit", str(run), "--image", "0", "--toward-folder", str(empty),
                                                  "--from-folder", str(tmp_path / "without")])


def test_traverse_rows_follow_the_kl_ranking(tmp_path, fake_mnist, monkeypatch):
    """Default rows are the dims sorted by average KL over the test split, capped by --max-rows."""
    import vaelab.plots
    from vaelab import latent, load
    from vaelab.data import load_data

    run = tmp_path / "run"
    train_run(run, "--dataset", "mnist", "--data-dir", str(fake_mnist), "--latent-dim", "5")
    model = load(run)
    encoded = latent.encode_split(model, load_data(model.run_config.data).test)
    q = torch.distributions.Normal(encoded.mean, (0.5 * encoded.log_var).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    expected = kl.argsort(descending=True).tolist()

    drawn = []
    original = vaelab.plots.labelled_grid

    def record(images, nrow, path, row_labels=(), col_labels=(), title=""):
        drawn.append(list(row_labels))
        return original(images, nrow, path, row_labels, col_labels, title)

    monkeypatch.setattr(vaelab.plots, "labelled_grid", record)
    assert main(["traverse", str(run), "--max-rows", "3"]) == 0
    assert [label.split()[0] for label in drawn[-1]] == [f"z[{d}]" for d in expected[:3]]

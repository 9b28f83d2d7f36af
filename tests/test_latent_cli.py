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


def figure_shows(path, images: torch.Tensor, nrow: int) -> None:
    """The PNG at `path` contains, pixel for pixel (±1 grey level), the grid of `images` (N, C, H, W)
    in [0, 1] with `nrow` per row: the figure draws exactly these images, in this order."""
    from vaelab.plots import image_grid

    grid = image_grid(images, nrow).astype(np.int16)  # (GH, GW, 3)
    with Image.open(path) as img:
        figure = np.asarray(img.convert("RGB")).astype(np.int16)
    (gh, gw), (fh, fw) = grid.shape[:2], figure.shape[:2]
    assert fh >= gh and fw >= gw, f"{path}: figure {fw}×{fh} is smaller than the grid {gw}×{gh}"
    # Candidate offsets that match at a few probe pixels, then a full comparison.
    probes = np.random.default_rng(0).integers(0, (gh, gw), (64, 2))
    candidates = np.ones((fh - gh + 1, fw - gw + 1), bool)
    for i, j in probes:
        candidates &= np.abs(figure[i:i + fh - gh + 1, j:j + fw - gw + 1] - grid[i, j]).max(-1) <= 1
    for top, left in np.argwhere(candidates):
        if np.abs(figure[top:top + gh, left:left + gw] - grid).max() <= 1:
            return
    raise AssertionError(f"{path} does not show the expected {len(images)} images")


def decode(model, z: torch.Tensor, y=None) -> torch.Tensor:
    with torch.no_grad():
        return model.decode_images(z, y)


def codes_of(model, x: torch.Tensor, y=None) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(x, y).mean


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


def test_every_command_draws_what_it_names_on_an_mnist_run(mnist_run, tmp_path, capsys):
    """Each command's figure holds exactly the images it promises, computed here from the model."""
    from scipy.stats import norm

    from vaelab import latent, load
    from vaelab.data import load_data

    model = load(mnist_run)
    data = load_data(model.run_config.data)
    test = data.test.images.float() / 255  # (40, 1, 28, 28)
    user = write_png(tmp_path / "mine.png", np.full((40, 50, 3), 200, np.uint8))  # RGB, other size
    mine = torch.full((1, 28, 28), 200 / 255)  # what it becomes: grey, 28×28

    def run(name, *flags) -> object:
        assert main([name, str(mnist_run), *flags]) == 0, name
        path = mnist_run / "figures" / f"{name}.png"
        assert str(path) in capsys.readouterr().out
        return path

    # sample: decodings of 16 draws z ~ N(0, 0.8² I) from seed 3, 4 per row
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(3)) * 0.8
    figure_shows(run("sample", "-n", "16", "--temperature", "0.8", "--seed", "3"), decode(model, z), 4)

    # reconstruct: the inputs above the decodings of their posterior means
    x = torch.stack([test[0], test[5], mine])
    recon = decode(model, codes_of(model, x))
    figure_shows(run("reconstruct", "--indices", "0", "5", "--images", user), torch.cat([x, recon]), 3)

    # interpolate: A, the slerp walk from A's code to B's (its ends decode to the reconstructions), B
    z_a, z_b = codes_of(model, test[1:2])[0], codes_of(model, mine[None])[0]
    walk = decode(model, latent.interpolate_codes(z_a, z_b, 6, "slerp"))
    torch.testing.assert_close(walk[0], decode(model, z_a[None])[0])
    torch.testing.assert_close(walk[-1], decode(model, z_b[None])[0])
    figure_shows(run("interpolate", "--from", "1", "--to", user, "--steps", "6", "--mode", "slerp"),
                 torch.cat([test[1:2], walk, mine[None]]), 8)

    # traverse: one row per dimension (by KL, highest first), that dimension alone moving by -2..2
    # around image 2's code; the middle column is the image's reconstruction in every row
    q = torch.distributions.Normal(*(lambda p: (p.mean, (0.5 * p.log_var).exp()))(model.encode(test)))
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0).detach()
    base = codes_of(model, test[2:3])[0]
    rows = []
    for d in kl.argsort(descending=True, stable=True).tolist():
        codes = base.repeat(5, 1)
        codes[:, d] += torch.linspace(-2, 2, 5)
        rows.append(decode(model, codes))
    figure_shows(run("traverse", "--image", "2", "--range", "-2", "2", "--steps", "5"), torch.cat(rows), 5)
    assert all(torch.allclose(row[2], decode(model, base[None])[0], atol=1e-6) for row in rows)

    # manifold: a 6×6 grid through the N(0, 1) quantiles 0.05..0.95 of the two highest-KL dimensions
    # (across: the lower-numbered one; down: the other, high values on top), the third dimension at 0
    i, j = sorted(kl.argsort(descending=True, stable=True)[:2].tolist())
    values = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, 6)), dtype=torch.float32)
    grid = torch.zeros(36, 3)
    grid[:, i] = values.repeat(6)
    grid[:, j] = values.flip(0).repeat_interleave(6)
    figure_shows(run("manifold", "--steps", "6"), decode(model, grid), 6)

    # edit: the input, then its code moved along (mean code of class 4 - mean code of its own class),
    # over the training images, by strengths 0 .. 2 (7 steps); strength 0 is the reconstruction
    train_codes, train_labels = codes_of(model, data.train.images.float() / 255), data.train.labels
    own = int(data.test.labels[0])
    direction = train_codes[train_labels == 4].mean(0) - train_codes[train_labels == own].mean(0)
    moved = codes_of(model, test[0:1])[0] + torch.linspace(0, 2, 7)[:, None] * direction
    figure_shows(run("edit", "--image", "0", "--toward", "4", "--strength", "2"),
                 torch.cat([test[0:1], decode(model, moved)]), 8)

    # --out elsewhere, --dims, --image with manifold: the same figures, other places and choices
    out = tmp_path / "elsewhere" / "walk.png"
    assert main(["interpolate", str(mnist_run), "--from", "0", "--to", "3", "--out", str(out)]) == 0
    lerp = latent.interpolate_codes(codes_of(model, test[0:1])[0], codes_of(model, test[3:4])[0], 10, "lerp")
    figure_shows(out, torch.cat([test[0:1], decode(model, lerp), test[3:4]]), 12)
    assert main(["traverse", str(mnist_run), "--dims", "2", "--out", str(tmp_path / "t.png")]) == 0
    codes = torch.zeros(9, 3)
    codes[:, 2] = torch.linspace(-3, 3, 9)
    figure_shows(tmp_path / "t.png", decode(model, codes), 9)
    assert main(["manifold", str(mnist_run), "--dims", "2,0", "--image", user, "--out", str(tmp_path / "m.png")]) == 0
    values = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, 15)), dtype=torch.float32)  # the default 15 steps
    grid = codes_of(model, mine[None])[0].repeat(225, 1)  # dimension 1 held at the image's code
    grid[:, 2] = values.repeat(15)
    grid[:, 0] = values.flip(0).repeat_interleave(15)
    figure_shows(tmp_path / "m.png", decode(model, grid), 15)


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
    from vaelab import load
    from vaelab.data import load_data

    run = tmp_path / "cond"
    train_run(run, "--dataset", "mnist", "--data-dir", str(fake_mnist), "--conditional")
    model = load(run)
    test = load_data(model.run_config.data).test
    x0, y0 = test.images[0:1].float() / 255, test.labels[0:1]

    # --label 7: eight draws from seed 0, all decoded as class 7
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    assert main(["sample", str(run), "--label", "7", "-n", "8", "--out", str(tmp_path / "s7.png")]) == 0
    figure_shows(tmp_path / "s7.png", decode(model, z, torch.full((8,), 7)), 3)
    # no label: column c of every row is class c
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert main(["sample", str(run), "--out", str(tmp_path / "all.png")]) == 0
    figure_shows(tmp_path / "all.png", decode(model, z, torch.arange(64) % 10), 10)
    # edit: the image's own code (its style) decoded with labels moving from its own to 3
    assert main(["edit", str(run), "--image", "0", "--toward", "3", "--out", str(tmp_path / "e.png")]) == 0
    code = codes_of(model, x0, y0)
    with torch.no_grad():
        s = torch.linspace(0, 1, 5)[:, None]
        onehot = torch.nn.functional.one_hot(torch.tensor([int(y0), 3]), 10).float()
        param = model.decoder(code.expand(5, -1), (1 - s) * onehot[0] + s * onehot[1])
        relabelled = model.likelihood.mean(model.likelihood.param(param))
    torch.testing.assert_close(relabelled[0], decode(model, code, y0)[0])  # strength 0: its reconstruction
    torch.testing.assert_close(relabelled[-1], decode(model, code, torch.tensor([3]))[0])  # 1: the same style as a 3
    figure_shows(tmp_path / "e.png", torch.cat([x0, relabelled]), 6)
    # interpolate: each end decoded with its own label
    assert main(["interpolate", str(run), "--from", "0", "--to", "1", "--out", str(tmp_path / "i.png")]) == 0
    x1, y1 = test.images[1:2].float() / 255, test.labels[1:2]
    from vaelab.latent import interpolate_codes

    walk = interpolate_codes(codes_of(model, x0, y0)[0], codes_of(model, x1, y1)[0], 10)
    labels = torch.where(torch.linspace(0, 1, 10) < 0.5, y0, y1)
    figure_shows(tmp_path / "i.png", torch.cat([x0, decode(model, walk, labels), x1]), 12)
    # traverse --label 2: around the origin, every tile decoded as class 2
    assert main(["traverse", str(run), "--label", "2", "--out", str(tmp_path / "t.png")]) == 0
    with torch.no_grad():
        q = model.encode(test.images.float() / 255, test.labels)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, (0.5 * q.log_var).exp()),
                                               torch.distributions.Normal(0.0, 1.0)).mean(0)
    kl_order = kl.argsort(descending=True, stable=True).tolist()
    rows = []
    for d in kl_order:
        codes = torch.zeros(9, 2)
        codes[:, d] = torch.linspace(-3, 3, 9)
        rows.append(decode(model, codes, torch.full((9,), 2)))
    figure_shows(tmp_path / "t.png", torch.cat(rows), 9)
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
    from vaelab import load
    from vaelab.data import load_data

    model = load(run)
    test = load_data(model.run_config.data).test
    mine = torch.from_numpy(np.array(Image.open(user))).permute(2, 0, 1)[None].float() / 255  # (1, 3, 12, 12)
    x = torch.cat([test.images[0:1].float() / 255, mine])  # --indices first, then --images
    # Colour images in colour: the inputs above their reconstructions, RGB.
    figure_shows(run / "figures" / "reconstruct.png", torch.cat([x, decode(model, codes_of(model, x))]), 2)
    z = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    figure_shows(run / "figures" / "sample.png", decode(model, z), 3)
    # The folder edit: the code moved along (mean code of the "with" images - of the "without" ones).
    with_, without = (torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / side / f"{i}.png")))
                                   .permute(2, 0, 1).float() / 255 for i in range(3)]) for side in ("with", "without"))
    direction = codes_of(model, with_).mean(0) - codes_of(model, without).mean(0)
    moved = codes_of(model, mine)[0] + torch.linspace(0, 1.5, 7)[:, None] * direction
    figure_shows(tmp_path / "folder-edit.png", torch.cat([mine, decode(model, moved)]), 8)
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

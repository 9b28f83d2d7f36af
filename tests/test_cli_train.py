"""End-to-end: `vaelab train` / `vaelab demo` through `main(argv)` on small data."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import vaelab
from vaelab.cli import main

FIGURES = ("latent.png", "latent_hist.png", "reconstructions.png", "samples.png", "manifold.png", "loss.png")


def test_train_writes_full_run_folder(tmp_path, fake_mnist):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "2",
                 "--batch-size", "16", "--hidden", "32,16", "--out", str(out), "--quiet"])
    assert code == 0
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "checkpoint.safetensors"):
        assert (out / name).is_file(), name
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_recon", "val_kl", "seconds"} <= set(rows[0])
    model = vaelab.load(out)
    x = torch.rand(3, 1, 28, 28)
    q = model.encode(x)
    assert q.mean.shape == (3, 2) and q.log_var.shape == (3, 2)
    assert model.decode(q.mean).shape == (3, 1, 28, 28)


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{\"precious\": true}")
    code = main(["train", "--epochs", "1", "--out", str(out), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert (out / "config.json").read_text() == "{\"precious\": true}"


def test_missing_data_dir_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "r"), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "r").exists()


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def test_demo_figures_show_what_their_names_say(tmp_path):
    """The demo's run folder: each figure decodes as a PNG and shows what its name says, checked
    against the trained model itself."""
    import matplotlib

    from vaelab.data import load_data
    from vaelab.latent import encode_split, fit_projection
    from vaelab.plots import figure_indices, image_grid, latent_figure, latent_hist_figure, manifold_grid_codes

    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    model = vaelab.load(out)
    test = load_data(model.run_config.data).test
    figures = out / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted(FIGURES)
    with torch.no_grad():
        # reconstructions.png: 10 test digits (a sample seeded by the run's seed) above the decodings
        # of their posterior means
        x = test.images[figure_indices(len(test), 10, model.run_config.train.seed)].float() / 255
        want = image_grid(torch.cat([x, model.decode_images(model.encode(x).mean)]), 10)
        assert np.abs(_pixels(figures / "reconstructions.png") - want).max() <= 1
        # manifold.png: the 15×15 grid through the N(0, 1) quantiles of the 2-D latent, decoded
        want = image_grid(model.decode_images(manifold_grid_codes(15, (0, 1), 2)), 15)
        assert np.abs(_pixels(figures / "manifold.png") - want).max() <= 1
        # samples.png: 64 decodings of prior draws; each tile lies on the decoder's manifold (within
        # 0.02 of the decoding of some z on a fine grid), where real test digits lie far off it (> 0.3)
        v = torch.linspace(-4.5, 4.5, 451)
        decoded = model.decode_images(torch.cartesian_prod(v, v)).reshape(451 * 451, -1)

    def off_manifold(images: np.ndarray) -> torch.Tensor:
        """Each image's max-pixel distance to the closest decoding (searched among its 64 closest in L2)."""
        t = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(len(images), -1)  # (N, 64)
        squared = (t * t).sum(1, keepdim=True) - 2 * t @ decoded.T + (decoded * decoded).sum(1)  # (N, grid)
        near = squared.topk(64, dim=1, largest=False).indices  # (N, 64)
        return (decoded[near] - t[:, None]).abs().amax(2).amin(1)

    grid = _pixels(figures / "samples.png")[..., 0] / 255.0
    scale, tile, pad = 7, 56, 2  # 8×8 digits are drawn 7× larger, 2 px apart, 8 per row
    tiles = [grid[pad + r * (tile + pad):pad + r * (tile + pad) + tile:scale,
                  pad + c * (tile + pad):pad + c * (tile + pad) + tile:scale] for r in range(8) for c in range(8)]
    assert grid.shape == (8 * (tile + pad) + pad,) * 2
    assert off_manifold(np.stack(tiles)).max() < 0.02
    assert off_manifold((test.images[:20, 0].float() / 255).numpy()).min() > 0.3
    # latent.png and latent_hist.png: the test split's codes (by label), and their per-dimension histograms
    encoded = encode_split(model, test)
    latent_figure(encoded, fit_projection(encoded.mean), tmp_path / "latent.png", [str(d) for d in range(10)])
    assert np.array_equal(_pixels(figures / "latent.png"), _pixels(tmp_path / "latent.png"))
    latent_hist_figure(encoded, tmp_path / "hist.png", generator=torch.Generator().manual_seed(0))
    assert np.array_equal(_pixels(figures / "latent_hist.png"), _pixels(tmp_path / "hist.png"))
    # loss.png: two curves, train (blue) and validation (orange), over the 3 epochs of metrics.jsonl
    loss = _pixels(figures / "loss.png")
    for colour in ("tab:blue", "tab:orange"):
        rgb = np.array(matplotlib.colors.to_rgb(colour)) * 255
        assert (np.abs(loss - rgb).max(-1) <= 3).sum() > 200, colour
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_usage_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["train", "--epochs", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value: 'abc'" in err[0]
    assert main(["no-such-command"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["--version"]) == 0


def test_help_and_usage_errors_do_not_import_torch():
    """`vaelab --help`, a subcommand's --help and a usage error answer without importing torch (~1.5 s)."""
    import subprocess
    import sys

    code = ("import sys\nfrom vaelab.cli import main\n"
            "for argv in (['--help'], ['eval', '--help'], ['sample', '--help'], ['train', '--epochs', 'abc']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_figures_failing_on_a_full_disk_is_one_line_and_keeps_the_weights(tmp_path, capsys, fake_mnist, monkeypatch):
    import errno

    import vaelab.plots

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vaelab.plots, "write_run_figures", full_disk)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "16", "--latent-dim", "2",
                 "--epochs", "1", "--batch-size", "16", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err
    assert vaelab.load(out).decode(torch.zeros(1, 2)).shape == (1, 1, 28, 28)  # the weights were saved first

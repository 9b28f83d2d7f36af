"""End-to-end: `vaelab train` / `vaelab demo` through `main(argv)` on small data."""

from __future__ import annotations

import json

import torch

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


def test_demo_runs(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    assert (out / "figures" / "manifold.png").is_file()


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

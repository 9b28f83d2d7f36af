"""`vaelab train --resume RUN --epochs N` changes nothing until every check on user input has passed.

Regression tests for issue 20, bug 3: `--epochs` used to rewrite `config.json` before the data was
loaded, so a dataset that had moved (or a damaged checkpoint) left a changed config behind. The
reference is the run folder's bytes before the refused command; only `.lock` (the one-writer
lock's bookkeeping, see vaelab.runlock) may differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vaelab.cli import main

SMALL = ["--dataset", "mnist", "--epochs", "1", "--batch-size", "32", "--hidden", "16", "--latent-dim", "2",
         "--threads", "1", "--quiet"]


def _snapshot(run: Path) -> dict:
    return {p.relative_to(run): p.read_bytes() if p.is_file() else None
            for p in sorted(run.rglob("*")) if p.name != ".lock"}


def _trained(tmp_path: Path, fake_mnist: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(fake_mnist, data)
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--data-dir", str(data), "--out", str(run)]) == 0
    return run, data


def _refused(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("vaelab: error: "), err
    return err[0]


def test_resume_with_epochs_and_missing_data_changes_nothing(tmp_path, capsys, fake_mnist):
    run, data = _trained(tmp_path, fake_mnist)
    shutil.rmtree(data)  # the dataset moved since training
    before = _snapshot(run)
    line = _refused(capsys, ["train", "--resume", str(run), "--epochs", "3", "--quiet"])
    assert "does not exist" in line or "not found" in line, line
    assert _snapshot(run) == before
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1


def test_resume_with_epochs_and_a_damaged_checkpoint_changes_nothing(tmp_path, capsys, fake_mnist):
    run, _ = _trained(tmp_path, fake_mnist)
    checkpoint = run / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])  # cut short
    before = _snapshot(run)
    line = _refused(capsys, ["train", "--resume", str(run), "--epochs", "3", "--quiet"])
    assert "checkpoint.safetensors" in line, line
    assert _snapshot(run) == before


def test_resume_with_fewer_epochs_than_done_changes_nothing(tmp_path, capsys, fake_mnist):
    run, _ = _trained(tmp_path, fake_mnist)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    before = _snapshot(run)
    line = _refused(capsys, ["train", "--resume", str(run), "--epochs", "1", "--quiet"])
    assert "fewer than the 2 epochs" in line
    assert _snapshot(run) == before


def test_resume_with_epochs_rewrites_the_config_once_it_can_go_on(tmp_path, fake_mnist):
    run, _ = _trained(tmp_path, fake_mnist)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

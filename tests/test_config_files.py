"""Config files: every flag has a TOML key, flags override the file, a run's config.json repeats the
run exactly, `vaelab config --show` prints the defaults, and bad files fail in one clear line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from vaelab.cli import main
from vaelab.cli.options import TRAIN_FLAGS
from vaelab.config import RunConfig

# One non-default value per flag, as typed on the command line (switches take none).
SAMPLES = {
    "--dataset": "npz", "--data-dir": "some/images", "--data-path": "some/file.npz", "--image-size": "32",
    "--channels": "3", "--binarize": "dynamic", "--val-fraction": "0.25", "--split-seed": "5",
    "--intensity-window": "100,4000", "--train-classes": "0,3", "--arch": "conv", "--conv-layout": "resize",
    "--latent-dim": "7",
    "--hidden": "64,32",
    "--activation": "tanh", "--likelihood": "bernoulli", "--gaussian-std": "0.3", "--epochs": "3",
    "--batch-size": "20", "--lr": "0.0003", "--adam-betas": "0.5,0.9", "--adam-eps": "0.0001", "--seed": "11",
    "--beta": "2.5", "--kl-warmup": "1.5", "--objective": "iwae", "--iw-samples-train": "5", "--grad-clip": "1.0",
    "--checkpoint-every": "50", "--device": "cpu", "--precision": "bf16", "--threads": "2", "--step": "autograd",
    "--prior": "mog", "--prior-components": "20", "--posterior": "iaf", "--flow-steps": "3", "--flow-hidden": "32",
    "--latent-layers": "2", "--layer-dims": "8,4", "--ladder-hidden": "64,32", "--free-bits": "0.25",
    "--optimizer": "adamw", "--weight-decay": "0.05", "--momentum": "0.9", "--lr-schedule": "cosine",
    "--warmup-epochs": "1.5", "--min-lr": "0.00001", "--lr-decay": "0.5", "--lr-step": "4", "--lr-patience": "2",
    "--lr-segments": "3:1,9:0.5", "--ema-decay": "0.99", "--early-stopping": "3", "--keep": "best",
    "--mlflow": "http://127.0.0.1:5000", "--shapes-subsample": "1000", "--tc-weight": "3",
    "--slice-axis": "1", "--dimensions": "3", "--volume-size": "16,24,32",
    "--blocks": "3", "--gaussian-variance": "learned", "--mixture-components": "5",
    "--task": "translate", "--input-dir": "some/inputs", "--target-dir": "some/targets",
    "--degrade": "noise=0.1,downsample=2", "--inject-stages": "2",
}
# Flags that are only valid next to another setting.
CONTEXT = {
    "--momentum": ["--optimizer", "sgd"],
    "--shapes-subsample": ["--dataset", "shapes"],
    "--tc-weight": ["--objective", "beta-tc"],
    "--task": ["--arch", "unet", "--degrade", "noise=0.2"],
    "--input-dir": ["--dataset", "pairs", "--target-dir", "t", "--task", "translate", "--arch", "unet"],
    "--target-dir": ["--dataset", "pairs", "--input-dir", "i", "--task", "translate", "--arch", "unet"],
    "--degrade": ["--task", "translate", "--arch", "unet"],
    "--dimensions": ["--dataset", "nifti"],
    "--volume-size": ["--dataset", "nifti", "--dimensions", "3"],
}


def _show(capsys, *argv: str) -> dict:
    assert main(["config", "--show", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _toml_literal(value) -> str:
    if isinstance(value, dict):  # a nested table (data.degrade): an inline TOML table
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # JSON literals of str/int/float/bool/list are valid TOML values


def test_every_flag_is_a_real_config_key():
    defaults = RunConfig()
    for flag in TRAIN_FLAGS:
        section, name = flag.key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(defaults, section))}, flag.flag


@pytest.mark.parametrize("flag", TRAIN_FLAGS, ids=lambda f: f.flag)
def test_each_flag_and_its_toml_key_give_the_same_config(flag, tmp_path, capsys):
    section, name = flag.key.split(".")
    if flag.is_switch:  # the form that changes the default: --x for a default off, --no-x for one on
        on_by_default = getattr(getattr(RunConfig(), section), name)
        argv = ["--no-" + flag.flag[2:] if on_by_default else flag.flag]
    else:
        argv = [flag.flag, SAMPLES[flag.flag]]
    context = CONTEXT.get(flag.flag, [])
    from_flag = _show(capsys, *context, *argv)
    value = from_flag[section][name]
    # The setting without the flag: in its context where that is valid alone (--task translate is
    # not: its context, --arch unet with paired data, needs it), else the default.
    valid_alone = main(["config", "--show", *context]) == 0
    capsys.readouterr()
    baseline = _show(capsys, *context) if valid_alone else _show(capsys)
    assert value != baseline[section][name], "the sample must change the setting"
    path = tmp_path / "exp.toml"
    path.write_text(f"[{section}]\n{name} = {_toml_literal(value)}\n")
    assert _show(capsys, *context, "--config", str(path)) == from_flag


def test_precedence_defaults_preset_file_flags(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text('[data]\ndataset = "digits"\n[model]\nlatent_dim = 8\nhidden = [64]\n[train]\nepochs = 0\n')
    cfg = _show(capsys, "--preset", "paper", "--config", str(path), "--latent-dim", "4", "--epochs", "2")
    assert cfg["data"]["dataset"] == "digits"  # file beats preset (paper = mnist)
    assert cfg["model"]["latent_dim"] == 4 and cfg["train"]["epochs"] == 2  # flags beat the file (even its bad 0)
    assert cfg["model"]["hidden"] == [64]  # file beats defaults
    assert cfg["model"]["likelihood"] == "gaussian" and cfg["train"]["lr"] == 1e-3  # untouched defaults


def test_config_show_prints_the_defaults(capsys):
    assert _show(capsys) == RunConfig().to_dict()


@pytest.mark.parametrize("preset", [None, "iwae-paper-vae"])
def test_toml_from_config_show_reads_back_identically(preset, tmp_path, capsys):
    extra = ["--preset", preset] if preset else []
    assert main(["config", "--show", "--format", "toml", *extra, "--data-dir", "d", "--conditional"]) == 0
    path = tmp_path / "exp.toml"
    path.write_text(capsys.readouterr().out)
    assert _show(capsys, "--config", str(path)) == _show(capsys, *extra, "--data-dir", "d", "--conditional")


def test_run_config_json_repeats_the_run_exactly(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["train", "--epochs", "2", "--hidden", "32,16", "--latent-dim", "3", "--batch-size", "50",
                 "--seed", "7", "--kl-warmup", "1", "--out", str(first), "--quiet"]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again), "--quiet"]) == 0
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((first / "config.json").read_text()) == json.loads((again / "config.json").read_text())
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (first / "metrics.jsonl").read_text().splitlines()]
    again_rows = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                  for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert strip == again_rows
    # A flag still overrides the saved config: a third run with another seed differs.
    other = tmp_path / "other"
    assert main(["train", "--config", str(first / "config.json"), "--seed", "8", "--epochs", "1", "--out",
                 str(other), "--quiet"]) == 0
    assert json.loads((other / "config.json").read_text())["train"]["seed"] == 8


@pytest.mark.parametrize("text, expected", [
    ("[model]\nlatent-dim = 4\n", ["unknown config key 'model.latent-dim'", "did you mean 'model.latent_dim'"]),
    ("latent_dim = 4\n", ["unknown config key 'latent_dim'", "did you mean 'model.latent_dim'"]),
    ("[optim]\nlr = 0.1\n", ["unknown config key 'optim.lr'", "did you mean 'train.lr'"]),
    ("[train]\nkl_warmup = 2\n", ["unknown config key 'train.kl_warmup'", "'train.kl_warmup_epochs'"]),
    ('[train]\nepochs = "ten"\n', ["train.epochs", "must be an integer", "exp.toml"]),
    ("[train]\nepochs = 0\n", ["epochs must be >= 1", "exp.toml"]),
    ('[model]\narch = "transformer"\n', ["model.arch", "'mlp'", "exp.toml"]),
    ("[data]\nintensity_window = [5, 1]\n", ["intensity_window", "low < high"]),
    ("[train\nepochs = 2\n", ["cannot parse", "exp.toml"]),
])
def test_bad_config_files_fail_in_one_line_and_write_nothing(text, expected, tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: error:"), err
    for piece in expected:
        assert piece in err[0], (piece, err[0])
    assert not out.exists()


def test_json_config_and_missing_file(tmp_path, capsys):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"model": {"latent_dim": 5}, "train": {"beta": 0.5}}))
    cfg = _show(capsys, "--config", str(path))
    assert cfg["model"]["latent_dim"] == 5 and cfg["train"]["beta"] == 0.5
    assert main(["config", "--config", str(tmp_path / "missing.toml")]) != 0
    assert "config file not found" in capsys.readouterr().err


def test_docs_toml_example_is_a_valid_config(tmp_path, capsys):
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = page.split("\n## Config files\n", 1)[1]
    toml_block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "exp.toml"
    path.write_text(toml_block)
    cfg = _show(capsys, "--config", str(path), "--epochs", "5")
    assert cfg["data"]["dataset"] == "mnist" and cfg["model"]["latent_dim"] == 8
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["tensorboard"] is True


def test_lr_schedule_is_stretched_to_the_epochs_of_a_later_layer(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text("[train]\nepochs = 328\n")
    cfg = _show(capsys, "--preset", "iwae-paper-vae", "--config", str(path))  # the preset's 3280-epoch schedule
    assert sum(length for length, _ in cfg["train"]["lr_segments"]) == pytest.approx(328)
    # A version-1 layout (the segments under lr_schedule) still reads, as lr_segments.
    path.write_text("[train]\nepochs = 4\nlr_schedule = [[2, 1.0], [2, 0.1]]\n")
    assert _show(capsys, "--config", str(path))["train"]["lr_segments"] == [[2, 1.0], [2, 0.1]]
    assert _show(capsys, "--config", str(path), "--epochs", "8")["train"]["lr_segments"] == [[4, 1.0], [4, 0.1]]

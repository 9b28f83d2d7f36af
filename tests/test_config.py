"""Config validation: types, ranges, known choices, versions; one clear one-line message per problem."""

from __future__ import annotations

import json
import re

import pytest

from vaelab.cli import main
from vaelab.config import CONFIG_VERSION, MAX_PARAMETERS, RunConfig, approx_parameters
from vaelab.errors import ConfigError
from vaelab.models import VAE


def _raw(**sections) -> dict:
    raw = RunConfig().to_dict()
    for section, values in sections.items():
        if isinstance(values, dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return raw


def test_defaults_round_trip_through_json():
    cfg = RunConfig()
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("sections, message", [
    # types
    ({"train": {"epochs": "10"}}, "config 'train.epochs' must be an integer, got '10'"),
    ({"train": {"epochs": 2.0}}, "config 'train.epochs' must be an integer"),
    ({"train": {"epochs": True}}, "config 'train.epochs' must be an integer"),
    ({"train": {"lr": "fast"}}, "config 'train.lr' must be a number"),
    ({"model": {"conditional": 1}}, "config 'model.conditional' must be true or false"),
    ({"model": {"hidden": 512}}, "config 'model.hidden' must be a list"),
    ({"model": {"hidden": [512, "256"]}}, "config 'model.hidden[1]' must be an integer"),
    ({"data": {"data_dir": 3}}, "config 'data.data_dir' must be a string"),
    ({"train": {"lr": 10**400}}, "config 'train.lr' must be a finite number"),
    ({"data": "mnist"}, "config 'data' must be an object"),
    # known choices
    ({"model": {"arch": "vit"}},
     "config 'model.arch' must be one of 'mlp', 'conv', 'resnet', 'conv3d', 'unet', got 'vit'"),
    ({"model": {"likelihood": "laplace"}}, "config 'model.likelihood' must be one of"),
    ({"data": {"dataset": "cifar"}}, "config 'data.dataset' must be one of"),
    ({"train": {"objective": "vi"}}, "config 'train.objective' must be one of"),
    # unknown keys
    ({"model": {"latent_dims": 2}}, "unknown config key 'model.latent_dims'"),
    # ranges
    ({"model": {"latent_dim": 0}}, "latent_dim must be between 1 and 4096, got 0"),
    ({"train": {"epochs": -1}}, "epochs must be >= 1, got -1"),
    ({"train": {"lr": 0.0}}, "lr must be in (0, 10], got 0.0"),
    ({"train": {"adam_betas": [0.9]}}, "adam_betas must be two numbers in [0, 1)"),
    ({"train": {"adam_betas": [0.9, 1.0]}}, "adam_betas must be two numbers in [0, 1)"),
    ({"train": {"lr_segments": [[1, 0.5], [0, 1]], "lr_schedule": "piecewise"}}, "lr_segments entries must be"),
    ({"train": {"lr_schedule": [[1, 0.5], [0, 1]]}}, "lr_segments entries must be"),  # version 1's layout
    ({"train": {"seed": 2**63}}, "seed must be in 0..2**63-1"),
    ({"data": {"split_seed": -5}}, "split_seed must be in 0..2**63-1"),
    ({"data": {"val_fraction": 0.0}}, "val_fraction must be in (0, 1)"),
    ({"data": {"channels": 2}}, "channels must be 1 or 3"),
    ({"model": {"image_shape": [2, 28, 28]}}, "image_shape must be [C, H, W] or [C, D, H, W] with C in (1, 3)"),
    ({"model": {"image_shape": [1, 28, 100000]}}, "sizes in 1..4096"),
    ({"model": {"num_classes": 10**7}}, "num_classes must be in 0..100000"),
    ({"model": {"image_shape": [3, 4096, 4096], "hidden": [4096]}}, "parameters"),
])
def test_each_problem_has_one_clear_message(sections, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        RunConfig.from_dict(_raw(**sections))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("version, message", [
    (CONFIG_VERSION + 1, f"config version {CONFIG_VERSION + 1} is newer than this vaelab understands"),
    (999, "upgrade vaelab to load it"),
    ("1", "must be a positive integer"),
    (0, "must be a positive integer"),
])
def test_versions(version, message):
    raw = _raw()
    raw["version"] = version
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict(raw)


def test_not_an_object_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="must be a JSON object"):
        RunConfig.from_dict([1, 2])
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "absent.json")


def test_parameter_estimate_bounds_the_real_model():
    """approx_parameters is an upper bound of the real count (and not a wild one) for both architectures."""
    cases = [("mlp", [64, 32], {}), ("mlp", [], {}), ("conv", [8, 16], {}), ("conv", [], {}),
             ("resnet", [], {}), ("resnet", [8, 16, 16, 32], {"blocks": 3}), ("resnet", [16], {"latent_dim": 300}),
             ("conv3d", [], {}), ("conv3d", [4, 8], {})]
    for likelihood, shape in (("gaussian", [1, 28, 28]), ("logistic", [3, 32, 32]),
                              ("logistic-mixture", [3, 32, 32]), ("logistic-mixture", [1, 13, 17])):
        for arch, hidden, extra in cases:
            size = [shape[0], 5, *shape[1:]] if arch == "conv3d" else shape  # conv3d: volumes 5 deep
            model = {"arch": arch, "hidden": hidden, "image_shape": size, "latent_dim": 8, "likelihood": likelihood,
                     **extra}
            cfg = RunConfig.from_dict(_raw(model=model))
            real = sum(p.numel() for p in VAE(cfg.model).parameters())
            estimate = approx_parameters(cfg.model)
            assert real <= estimate <= 10 * real, (model, real, estimate)
    assert MAX_PARAMETERS >= 1e9


def test_config_file_errors_reach_the_cli_as_one_line(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('[model]\narch = "transformer"\n')
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("vaelab: error: config 'model.arch' must be one of 'mlp', 'conv', 'resnet', 'conv3d', "
                             "'unet', got 'transformer'")
    assert not out.exists()


def test_resume_refuses_a_config_from_a_newer_version(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--hidden", "16,8", "--out", str(out), "--quiet"]) == 0
    raw = json.loads((out / "config.json").read_text())
    raw["version"] = CONFIG_VERSION + 1
    (out / "config.json").write_text(json.dumps(raw))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "newer than this vaelab understands" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_every_bad_field_is_reported_at_once(capsys):
    """Three mistakes in three sections: one line names all three (not one per attempt)."""
    raw = {"data": {"val_fraction": 2.0}, "model": {"latent_dim": 0}, "train": {"epochs": 0, "lr": -1.0}}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    message = str(info.value)
    for expected in ("val_fraction must be in (0, 1)", "latent_dim must be between 1 and 4096",
                     "epochs must be >= 1", "lr must be in (0, 10]"):
        assert expected in message
    assert "\n" not in message
    assert main(["config", "--epochs", "0", "--batch-size", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epochs must be >= 1" in err and "batch_size must be >= 1" in err

"""Safe loading: safetensors + JSON only; a `.pt` from elsewhere goes through torch.load(weights_only=True).

The hostile files here carry a real payload (a `__reduce__` that writes a marker file). Each test
first proves the payload is live (an unrestricted load does write the marker), then checks that
vaelab refuses the file with one clear line and that the marker never appears.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from vaelab.checkpoint import WEIGHTS_FILE, import_torch_weights, save_weights
from vaelab.cli import main
from vaelab.config import CONFIG_VERSION, RunConfig
from vaelab.errors import ConfigError, RunError
from vaelab.models import VAE

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelab"


class WritesAFile:
    """Unpickling this calls exec(), which writes `marker`: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _run_folder(tmp_path: Path, name: str = "run") -> Path:
    """A run folder with just config.json (all import-weights needs)."""
    cfg = RunConfig()
    cfg.model.hidden = [32, 16]
    cfg.model.image_shape = [1, 28, 28]
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(cfg.validate().to_json())
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vaelab: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("layout", ["zip", "legacy", "raw-pickle", "nested-in-state-dict"])
def test_malicious_pickle_never_runs(tmp_path, capsys, layout):
    run = _run_folder(tmp_path)
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    payload = WritesAFile(marker)
    if layout == "zip":
        torch.save(payload, evil)
    elif layout == "legacy":
        torch.save(payload, evil, _use_new_zipfile_serialization=False)
    elif layout == "raw-pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"encoder.net.0.weight": torch.zeros(2), "extra": payload}, evil)

    # The payload is live: an unrestricted load runs it (raw pickle files are not torch.load-able).
    if layout != "raw-pickle":
        torch.load(evil, weights_only=False)
    else:
        pickle.loads(evil.read_bytes())
    assert marker.read_text() == "pwned"
    marker.unlink()

    code = main(["import-weights", str(run), str(evil)])
    assert code != 0
    line = _one_error_line(capsys)
    assert "refused" in line and str(evil) in line
    assert not marker.exists(), "the pickle payload ran"
    assert not (run / WEIGHTS_FILE).exists()


def test_import_plain_state_dict_round_trips(tmp_path, capsys):
    run = _run_folder(tmp_path)
    cfg = RunConfig.load(run / "config.json")
    torch.manual_seed(5)
    source = VAE(cfg.model)
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    pt = tmp_path / "weights.pth"
    torch.save(wrapped, pt)
    assert main(["import-weights", str(run), str(pt)]) == 0
    loaded = vaelab.load(run)
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # A second import without --force must not replace the weights.
    before = (run / WEIGHTS_FILE).read_bytes()
    torch.manual_seed(6)
    torch.save(VAE(cfg.model).state_dict(), pt)
    capsys.readouterr()
    assert main(["import-weights", str(run), str(pt)]) != 0
    assert "already exists" in _one_error_line(capsys)
    assert (run / WEIGHTS_FILE).read_bytes() == before
    assert main(["import-weights", str(run), str(pt), "--force"]) == 0
    assert (run / WEIGHTS_FILE).read_bytes() != before


def test_import_refuses_mismatched_or_non_tensor_files(tmp_path, capsys):
    run = _run_folder(tmp_path)
    cases = {
        "wrong-shape.pt": {k: torch.zeros(3) for k in VAE(RunConfig.load(run / "config.json").model).state_dict()},
        "missing.pt": {"encoder.whatever": torch.zeros(3)},
        "list.pt": [torch.zeros(3)],
        "nan.pt": {k: torch.full_like(v, float("nan"))
                   for k, v in VAE(RunConfig.load(run / "config.json").model).state_dict().items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        assert main(["import-weights", str(run), str(tmp_path / name)]) != 0, name
        line = _one_error_line(capsys)
        assert name in line, line
        assert not (run / WEIGHTS_FILE).exists()
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a torch file at all")
    assert main(["import-weights", str(run), str(tmp_path / "garbage.pt")]) != 0
    assert "refused" in _one_error_line(capsys)
    assert main(["import-weights", str(tmp_path / "no-run"), str(tmp_path / "garbage.pt")]) != 0
    assert "not a vaelab run folder" in _one_error_line(capsys)


def test_import_torch_weights_returns_plain_tensors(tmp_path):
    pt = tmp_path / "w.pt"
    torch.save({"a": torch.arange(3.0), "module.b": torch.ones(2, 2)}, pt)
    tensors = import_torch_weights(pt)
    assert set(tensors) == {"a", "b"} and torch.equal(tensors["a"], torch.arange(3.0))
    with pytest.raises(RunError, match="not found"):
        import_torch_weights(tmp_path / "absent.pt")


def test_no_pickle_reader_in_the_package():
    """Only checkpoint.import_torch_weights may call torch.load, and only with weights_only=True."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bpickle\.(loads?|Unpickler)\b|allow_pickle\s*=\s*True|\bjoblib\.load|\bdill\.", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            # torch.jit.load runs TorchScript: allowed only where export.py re-reads its own fresh export.
            if re.search(r"\bjit\.load\(", code) and path.name != "export.py":
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_npz_with_pickled_object_array_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    npz = tmp_path / "evil.npz"
    arrays = {k: np.zeros((4, 8, 8), np.uint8) for k in ("train_images", "val_images", "test_images")}
    arrays.update({k: np.zeros(4, np.int64) for k in ("val_labels", "test_labels")})
    arrays["train_labels"] = np.array([WritesAFile(marker)] * 4, dtype=object)
    np.savez(npz, **arrays)
    out = tmp_path / "out"
    assert main(["train", "--dataset", "npz", "--data-path", str(npz), "--out", str(out), "--quiet"]) != 0
    assert "pickle" in _one_error_line(capsys).lower()
    assert not marker.exists() and not out.exists()


# ---- config.json validation on load ------------------------------------------------------------

def _trained_like_run(tmp_path: Path) -> Path:
    run = _run_folder(tmp_path)
    cfg = RunConfig.load(run / "config.json")
    save_weights(VAE(cfg.model), run / WEIGHTS_FILE)
    return run


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(version=CONFIG_VERSION + 1), "newer than this vaelab"),
    (lambda c: c["model"].update(latent_dim="two"), "'model.latent_dim' must be an integer"),
    (lambda c: c["model"].update(arch="transformer"), "'model.arch' must be one of"),
    (lambda c: c["model"].update(latent_dim=0), "latent_dim must be between"),
    (lambda c: c["train"].update(lr=-1.0), "lr must be in"),
    (lambda c: c["model"].update(image_shape=[1, 28]), "image_shape"),
    (lambda c: c["model"].update(hidden=[32, 65537]), "hidden"),
    (lambda c: c.update(surprise=1), "unknown config key 'surprise'"),
    (lambda c: c.__setitem__("model", [1]), "'model' must be an object"),
])
def test_tampered_config_json_is_refused_clearly(tmp_path, edit, message):
    run = _trained_like_run(tmp_path)
    raw = json.loads((run / "config.json").read_text())
    edit(raw)
    (run / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        vaelab.load(run)
    assert "\n" not in str(info.value)


def test_corrupt_weights_file_is_one_clear_error(tmp_path):
    run = _trained_like_run(tmp_path)
    good = (run / WEIGHTS_FILE).read_bytes()
    for broken in (good[: len(good) // 2], b"", b"\xff" * 64, (2**62).to_bytes(8, "little") + good[8:]):
        (run / WEIGHTS_FILE).write_bytes(broken)
        with pytest.raises(RunError, match="not a valid safetensors file|does not match"):
            vaelab.load(run)

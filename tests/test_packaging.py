"""Packaging: `python -m build` makes an sdist and a wheel holding every package file (explorer
static files included); the wheel installs into a fresh venv (no system site-packages) and runs
`vaelab --version` and `vaelab demo`; the base install stays light and the optional features say
which extra to install. Slow (~2-3 minutes: installing torch into a venv), but it runs in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import vaelab

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"explorer", "export", "tensorboard", "dev", "browser", "medical"}
# Packages that only extras may bring in: the base install must not.
OPTIONAL_MODULES = ("onnx", "onnxruntime", "onnxscript", "tensorboard", "fastapi", "uvicorn", "playwright", "pytest",
                    "pydicom", "nibabel")

pytestmark = pytest.mark.slow


def _run(argv: list, cwd: Path, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    root = tmp_path_factory.mktemp("pkg")
    # Build from a clean copy: no stale egg-info or build/ from the working tree, and none written there.
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, source], cwd=root)  # sdist, then the wheel from it
    wheels = list(dist.glob("vaelab-*.whl"))
    assert len(wheels) == 1 and list(dist.glob("vaelab-*.tar.gz"))
    return wheels[0]


def test_wheel_holds_every_package_file_and_declares_the_extras(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "src" / "vaelab"
    expected = {f"vaelab/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected - names == set(), "files missing from the wheel (add them to package-data)"
    assert any(n.startswith("vaelab/explorer/static/") for n in expected)  # the explorer's page is packaged
    metadata = zipfile.ZipFile(wheel).read(f"vaelab-{vaelab.__version__}.dist-info/METADATA").decode()
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert EXTRAS <= extras


def test_wheel_installs_and_runs_demo_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)  # a real fresh venv: no system site-packages
    python, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip", "install", "--quiet",
                                           "--no-compile"]
    # torch first, pinned to the build on this machine's disk (a bare `torch` would pull a CUDA build).
    _run([*pip, f"torch=={torch.__version__.split('+')[0]}"], cwd=tmp_path)
    _run([*pip, wheel], cwd=tmp_path)
    cli = venv / "bin" / "vaelab"

    installed = _run([python, "-c", "import vaelab; print(vaelab.__file__)"], cwd=tmp_path).stdout.strip()
    assert installed.startswith(str(venv)), installed  # the wheel's copy, not the working tree's
    assert _run([cli, "--version"], cwd=tmp_path).stdout.strip() == f"vaelab {vaelab.__version__}"

    out = tmp_path / "demo"
    _run([cli, "demo", "--epochs", "2", "--out", out, "--quiet"], cwd=tmp_path)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    for name in ("model.safetensors", "config.json", "figures/samples.png", "figures/manifold.png"):
        assert (out / name).is_file(), name

    probe = "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] " \
            "if importlib.util.find_spec(m)]))"
    present = json.loads(_run([python, "-c", probe, *OPTIONAL_MODULES], cwd=tmp_path).stdout)
    assert present == [], f"the base install pulled in optional packages: {present}"

    # Without the extras, the optional features fail in one line that names the extra.
    for argv, extra in ((["export", out, "--format", "onnx"], "vaelab[export]"),
                        (["train", "--tensorboard", "--epochs", "1", "--out", tmp_path / "tb"], "vaelab[tensorboard]"),
                        (["train", "--dataset", "dicom", "--data-dir", tmp_path, "--out", tmp_path / "tb"],
                         "vaelab[medical]"),
                        (["train", "--dataset", "nifti", "--data-dir", tmp_path, "--out", tmp_path / "tb"],
                         "vaelab[medical]")):
        result = _run([cli, *argv], cwd=tmp_path, check=False)
        err = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(err) == 1 and extra in err[0], result.stderr
    assert not (tmp_path / "tb").exists() and not (out / "export").exists()

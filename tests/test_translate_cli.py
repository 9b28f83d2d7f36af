"""Image-to-image end to end on tiny data: `vaelab train --task translate` (a --degrade run and a
paired-folder run), `vaelab eval` (PSNR/SSIM against an independent scikit-image computation,
baselines, calibration, GED with several targets), `vaelab translate` (the files it writes against
the Python API), the errors, and exact resume of a --degrade run after a SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vaelab
from test_pairs import make_pairs
from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE, checkpoint_position
from vaelab.cli import main
from vaelab.data import load_data
from vaelab.translate.evaluate import fixed_pairs

TINY = ["--task", "translate", "--arch", "unet", "--hidden", "4,8", "--latent-dim", "2", "--batch-size", "32",
        "--gaussian-std", "0.2", "--quiet"]

@pytest.fixture(autouse=True)
def _no_flush_to_zero_left_behind():
    """`vaelab train` in this process turns subnormal flushing on first (vaelab.runtime); a run that
    fails before training leaves it on, and later tests (hypothesis' floats) would see it."""
    yield
    torch.set_flush_denormal(False)



def _train(out: Path, *flags: str) -> Path:
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """fake_mnist's images (bars whose position is the label), written once for the module."""
    from conftest import write_idx

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("mnist")
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture(scope="module")
def degrade_run(mnist_dir, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "denoise", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                  "--degrade", "noise=0.2", "--epochs", "2")


def test_degrade_run_trains_and_evaluates(degrade_run, capsys):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    cfg = json.loads((degrade_run / "config.json").read_text())
    assert cfg["model"]["task"] == "translate" and cfg["model"]["arch"] == "unet"
    assert cfg["data"]["degrade"] == {"noise": 0.2, "blur": 0.0, "downsample": 1.0, "jpeg": 0}
    assert (degrade_run / "figures" / "translations.png").is_file()
    model = vaelab.load(degrade_run)
    assert type(model).__name__ == "ProbabilisticUNet"

    capsys.readouterr()
    assert main(["eval", str(degrade_run), "--samples", "4", "--iw-samples", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((degrade_run / "eval.json").read_text())
    assert result["task"] == "translate" and result["num_images"] == 40 and result["samples"] == 4
    # The identity baseline, recomputed independently with scikit-image on the same fixed inputs.
    pairs = fixed_pairs(load_data(model.run_config.data).test, "test")
    x, y = pairs.inputs.numpy().astype(np.float64), pairs.targets[0].numpy().astype(np.float64)
    want_psnr = np.mean([peak_signal_noise_ratio(t[0], i[0], data_range=1) for i, t in zip(x, y)])
    want_ssim = np.mean([structural_similarity(t[0], i[0], data_range=1, gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False) for i, t in zip(x, y)])
    assert result["baselines"]["identity"]["psnr"] == pytest.approx(want_psnr, abs=1e-6)
    assert result["baselines"]["identity"]["ssim"] == pytest.approx(want_ssim, abs=1e-6)
    assert result["baselines"]["nlm"]["psnr"] is not None and result["baselines"]["gaussian"]["sigma"] > 0
    assert result["psnr_best_of_samples"] >= result["psnr"] - 1.0
    assert result["gain_over_classical_db"] == pytest.approx(
        result["psnr"] - result["baselines"][result["classical"]]["psnr"])
    cal = result["calibration"]
    assert 0 <= cal["within_2std"] <= 1 and 0 <= cal["within_2std_rescaled"] <= 1 and cal["std_scale"] > 0
    assert np.isfinite([result["neg_elbo"], result["nll"], result["ged"], result["diversity"]]).all()
    # Repeatable: the same seeds, the same numbers.
    assert main(["eval", str(degrade_run), "--samples", "4", "--iw-samples", "5", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in again.items() if "seconds" not in k} == {k: v for k, v in result.items()
                                                                      if "seconds" not in k}
    assert main(["eval", str(degrade_run), "--samples", "3", "--iw-samples", "5", "--max-images", "7"]) == 0
    text = capsys.readouterr().out
    assert "model (mean)" in text and "nlm" in text and "calibration" in text and "7 inputs" in text


def test_translate_command_writes_what_the_api_returns(degrade_run, tmp_path, capsys):
    model = vaelab.load(degrade_run)
    pairs = fixed_pairs(load_data(model.run_config.data).test.take(slice(0, 2)), "test")
    files, targets = [], []
    for i in range(2):
        files.append(tmp_path / f"noisy{i}.png")
        targets.append(tmp_path / f"clean{i}.png")
        Image.fromarray((pairs.inputs[i, 0].numpy() * 255).round().astype(np.uint8)).save(files[-1])
        Image.fromarray((pairs.targets[0, i, 0].numpy() * 255).round().astype(np.uint8)).save(targets[-1])
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["translate", str(degrade_run), "--images", *map(str, files), "--targets", *map(str, targets),
                 "--samples", "3", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [Path(r["folder"]).name for r in report] == ["noisy0", "noisy1"]
    folder = out / "noisy0"
    names = {p.name for p in folder.iterdir()}
    assert names == {"input.png", "mean.png", "sample-01.png", "sample-02.png", "sample-03.png", "std.png",
                     "std.tiff", "target.png", "figure.png"}
    x = torch.tensor(np.asarray(Image.open(files[0])), dtype=torch.float32)[None, None] / 255
    expected = model.translate(x, 3, torch.Generator().manual_seed(0))  # --seed 0, the first input
    mean = np.asarray(Image.open(folder / "mean.png"))
    np.testing.assert_allclose(mean / 255, expected.mean[0, 0].numpy(), atol=0.5 / 255 + 1e-6)
    std = np.asarray(Image.open(folder / "std.tiff"))
    np.testing.assert_allclose(std, expected.std[0, 0].numpy(), rtol=1e-5, atol=1e-7)
    from vaelab.image_metrics import psnr

    target = torch.tensor(np.asarray(Image.open(targets[0])), dtype=torch.float32)[None, None] / 255
    assert report[0]["psnr"] == pytest.approx(float(psnr(expected.mean, target)), abs=1e-4)


def test_translate_and_eval_errors_are_one_line(degrade_run, mnist_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    vae = tmp_path / "vae"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1", "--hidden", "8",
                 "--batch-size", "32", "--out", str(vae), "--quiet"]) == 0
    cases = [
        (["translate", str(degrade_run), "--images", str(image), "--targets", str(image), str(image)], "one target"),
        (["translate", str(degrade_run), "--images", str(tmp_path / "none.png")], "not found"),
        (["translate", str(vae), "--images", str(image)], "works on translate runs"),
        (["translate", str(degrade_run), "--images", str(image), "--samples", "0"], "--samples"),
        (["sample", str(degrade_run)], "works on vae runs"),
        (["eval", str(vae), "--samples", "3"], "for image-to-image"),
        (["eval", str(degrade_run), "--targets", str(tmp_path)], "--inputs"),
        (["eval", str(degrade_run), "--inputs", str(tmp_path)], "--targets"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vaelab: error: ") and message in err, (argv, err)


def test_paired_folder_run_and_several_targets(tmp_path, capsys):
    a, b = make_pairs(tmp_path, n=16)
    b2 = tmp_path / "B2"  # a second annotator: the first one's targets, a little brighter
    for path in b.rglob("*.tif"):
        target = b2 / path.relative_to(b).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.minimum(np.asarray(Image.open(path)).astype(int) + 20, 255).astype(np.uint8)).save(target)
    run = _train(tmp_path / "pairs", "--dataset", "pairs", "--input-dir", str(a), "--target-dir", str(b),
                 "--epochs", "1", "--batch-size", "8")
    capsys.readouterr()
    assert main(["eval", str(run), "--targets", str(b), str(b2), "--samples", "3", "--iw-samples", "3",
                 "--json"]) == 0
    several = json.loads(capsys.readouterr().out)
    assert several["targets_per_input"] == 2 and several["num_images"] == len(load_data(
        vaelab.load(run).run_config.data).test)
    assert main(["eval", str(run), "--samples", "3", "--iw-samples", "3", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    # With B twice the targets agree (E d(Y, Y') = 0) and every number equals the one-target evaluation.
    assert main(["eval", str(run), "--targets", str(b), str(b), "--samples", "3", "--iw-samples", "3",
                 "--json"]) == 0
    twice = json.loads(capsys.readouterr().out)
    assert twice["ged"] == pytest.approx(one["ged"], abs=1e-9) and twice["psnr"] == pytest.approx(one["psnr"])
    assert several["ged"] != pytest.approx(one["ged"])
    assert main(["eval", str(run), "--inputs", str(a), "--targets", str(b), "--samples", "2", "--iw-samples", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 16


# ---- exact resume of a --degrade run after a SIGKILL ---------------------------------------------

RESUME_FLAGS = ["--task", "translate", "--arch", "unet", "--hidden", "4,8", "--latent-dim", "2", "--dataset", "mnist",
                "--degrade", "noise=0.2,blur=0.8", "--epochs", "3", "--batch-size", "20", "--checkpoint-every", "2",
                "--threads", "1", "--seed", "5", "--quiet"]


def _run(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "vaelab", "train", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_killed_degrade_run_resumes_bit_identical(mnist_dir, tmp_path):
    """The degradation noise comes from the checkpointed data generator: a run killed mid-epoch and
    resumed draws exactly the noisy inputs the uninterrupted run drew, so the weights agree bit for bit."""
    flags = [*RESUME_FLAGS, "--data-dir", str(mnist_dir)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run([*flags, "--out", str(reference)]).returncode == 0
    # 108 training images / 20 = 6 batches per epoch: checkpoints at step 0, every 2 steps and each epoch end;
    # #7 is written after 4 batches of epoch 2, so the last good one (#6, after 2 batches) is mid-epoch.
    proc = _run([*flags, "--out", str(killed)], fault=f"kill:{CHECKPOINT_FILE}:7")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    position = checkpoint_position(killed / CHECKPOINT_FILE)
    assert position["epoch"] == 1 and 0 < position["batch"] < 6  # mid-epoch: the next draws come from the file
    proc = _run(["--resume", str(killed), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / name), load_file(killed / name)
        assert set(want) == set(got)
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key}"


def test_tensorboard_logs_translations(mnist_dir, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = _train(tmp_path / "tb", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--degrade", "noise=0.2",
                 "--epochs", "2", "--tensorboard")
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("loss/val")] == pytest.approx([r["val_loss"] for r in rows])
    assert len(acc.Scalars("translate/psnr_val")) == 2 and len(acc.Images("translations")) == 2
    image = Image.open(io.BytesIO(acc.Images("translations")[-1].encoded_image_string))
    assert image.size[0] > image.size[1]  # 8 images per row, 4 rows (input, mean, std, target)


def test_translate_into_a_run_in_use_is_refused(degrade_run, tmp_path, capsys):
    """One writer per run folder: while another process holds RUN's lock, `vaelab translate` writing
    into RUN stops with exit code 4 and writes nothing; output elsewhere needs no lock."""
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom vaelab.runlock import run_lock\n"
                               "with run_lock(sys.argv[1], 'vaelab train'):\n    print('locked', flush=True)\n"
                               "    time.sleep(120)\n", str(degrade_run)],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        out = degrade_run / "translations-while-locked"
        assert main(["translate", str(degrade_run), "--images", str(image), "--out", str(out)]) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another vaelab process" in err and not out.exists()
        assert main(["translate", str(degrade_run), "--images", str(image), "--out", str(tmp_path / "o")]) == 0
        assert (tmp_path / "o" / "x" / "figure.png").is_file()
    finally:
        holder.kill()
        holder.wait()


def test_nifti_pairs_train_and_translate_back_into_the_scan_geometry(tmp_path, capsys):
    """NIfTI volumes as pairs (every slice, read as the medical loaders cut and window them) and
    `vaelab translate` of a volume: NIfTI outputs with the input's shape and affine, in HU."""
    nib = pytest.importorskip("nibabel")
    from vaelab.data.synthetic_scans import oblique_affine, phantom, write_nifti

    affine = oblique_affine()
    for case in range(4):
        clean = phantom((6, 16, 16), seed=case).transpose(2, 1, 0)  # (I, J, K) voxels
        noisy = clean + np.random.default_rng(case).normal(0, 120, clean.shape).astype(np.float32)
        write_nifti(tmp_path / "A" / f"case{case}.nii.gz", noisy, affine)
        write_nifti(tmp_path / "B" / f"case{case}.nii.gz", clean, affine)
    run = _train(tmp_path / "run", "--dataset", "pairs", "--input-dir", str(tmp_path / "A"), "--target-dir",
                 str(tmp_path / "B"), "--image-size", "16", "--intensity-window=-1000,800", "--epochs", "1",
                 "--batch-size", "4")
    from vaelab.data import load_data

    data = load_data(vaelab.load(run).run_config.data)
    slices = nib.load(tmp_path / "A" / "case0.nii.gz").shape[2]  # the axial axis of this affine holds 6 slices
    assert len(data.train) + len(data.val) + len(data.test) == 4 * slices
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["translate", str(run), "--images", str(tmp_path / "A" / "case3.nii.gz"), "--samples", "2",
                 "--out", str(out)]) == 0
    folder = out / "case3"
    assert {p.name for p in folder.iterdir()} == {"input.nii.gz", "mean.nii.gz", "sample-01.nii.gz",
                                                  "sample-02.nii.gz", "std.nii.gz", "figure.png"}
    source = nib.load(tmp_path / "A" / "case3.nii.gz")
    for name in ("mean.nii.gz", "std.nii.gz"):
        written = nib.load(folder / name)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5), name
    mean = np.asarray(nib.load(folder / "mean.nii.gz").dataobj)
    std = np.asarray(nib.load(folder / "std.nii.gz").dataobj)
    assert mean.min() >= -1000 - 1e-3 and mean.max() <= 800 + 1e-3  # back through the window, in HU
    assert (std >= 0).all() and std.max() <= 1800
    # The input written back is the input clipped to the window (up to the 8-bit rounding and resizing).
    written_input = np.asarray(nib.load(folder / "input.nii.gz").dataobj)
    assert np.abs(written_input - np.clip(np.asarray(source.dataobj), -1000, 800)).mean() < 60

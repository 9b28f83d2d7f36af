"""Every research component through the same commands as today's VAE: it trains, resumes bit-identically
after a SIGKILL, evaluates (`vaelab eval`), and explores (`vaelab sample` / `traverse` / `manifold`);
the post-hoc GMM sampler end to end (`vaelab fit-sampler`, `sample --sampler gmm`, eval's `fid_gmm`);
per-layer sampling and traversal of the hierarchical VAE; the explorer's prior draws."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE
from vaelab.cli import main
from vaelab.latent import layer_dims, prior_marginals, sample_images, traverse_images

SMALL = ["--epochs", "2", "--batch-size", "20", "--hidden", "24", "--latent-dim", "3", "--likelihood", "bernoulli",
         "--prior-components", "6", "--ladder-hidden", "12", "--flow-hidden", "12", "--threads", "1", "--quiet"]
COMPONENTS = {
    "mog": ["--prior", "mog"],
    "vamp": ["--prior", "vamp"],
    "iaf": ["--posterior", "iaf", "--flow-steps", "2"],
    "free-bits": ["--free-bits", "0.3"],
    "hierarchical": ["--latent-layers", "2", "--layer-dims", "3,2"],
    "hierarchical-vamp": ["--latent-layers", "2", "--prior", "vamp", "--free-bits", "0.1"],
}


def train(out, data_dir, flags, *extra) -> None:
    argv = ["train", "--dataset", "mnist", "--data-dir", str(data_dir), *SMALL, *flags, *extra, "--out", str(out)]
    assert main(argv) == 0


def _subprocess(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop(FAULT_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "vaelab", "train", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # three trainings per component (about 10 s each on an idle 2-core machine)
@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_resumes_bit_identically_after_a_kill(tmp_path, fake_mnist, name):
    flags = ["--dataset", "mnist", "--data-dir", str(fake_mnist), *SMALL, *COMPONENTS[name], "--epochs", "3",
             "--checkpoint-every", "2", "--binarize", "dynamic", "--kl-warmup", "2"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["train", *flags, "--out", str(reference)]) == 0  # uninterrupted, in this process
    # 108 training images, batch 20: 6 steps per epoch; checkpoints at step 0, every 2 steps and at
    # each epoch's end. The 6th checkpoint write is mid-epoch 2 (after the end of epoch 1).
    result = _subprocess([*flags, "--out", str(killed)], {FAULT_ENV: f"kill:{CHECKPOINT_FILE}:6"})
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (killed / WEIGHTS_FILE).exists()
    result = _subprocess(["--resume", str(killed), "--quiet"])
    assert result.returncode == 0, result.stderr
    for file in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / file), load_file(killed / file)
        assert set(want) == set(got)
        assert all(torch.equal(want[k], got[k]) for k in want), file

    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert rows(killed) == rows(reference)
    if name.startswith("hierarchical"):
        assert {"train_kl_layer1", "train_kl_layer2"} <= set(rows(reference)[-1])


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_evaluates_and_explores(tmp_path, fake_mnist, capsys, name):
    run = tmp_path / "run"
    train(run, fake_mnist, COMPONENTS[name], "--binarize", "dynamic")
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "8", "--no-fid", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.split("wrote")[0])
    assert np.isfinite(result["nll"]) and result["nll"] <= result["neg_elbo"] + 1.0
    assert result["latent_dim"] == vaelab.load(run).latent_dim
    if name.startswith("hierarchical"):
        assert len(result["kl_per_layer"]) == 2
        assert sum(result["kl_per_layer"]) == pytest.approx(result["kl"], rel=1e-6)
    for command, extra in (("sample", ["-n", "9"]), ("traverse", ["--steps", "4", "--max-rows", "3"]),
                           ("manifold", ["--steps", "4"]), ("reconstruct", []), ("interpolate", [])):
        argv = [command, str(run), *extra] if command != "interpolate" else [command, str(run), "--from", "0",
                                                                             "--to", "1"]
        assert main(argv) == 0, command
        assert (run / "figures" / f"{command}.png").is_file()
    if name.startswith("hierarchical"):
        for argv in (["sample", str(run), "--layer", "1", "-n", "8", "--nrow", "4"],
                     ["traverse", str(run), "--layer", "2", "--dims", "0,1"], ["manifold", str(run), "--layer", "1"]):
            assert main(argv) == 0, argv
    assert main(["report", str(run)]) == 0


def test_fit_sampler_sample_and_fid_gmm(tmp_path, fake_mnist, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))  # the FID classifier's cache
    run = tmp_path / "run"
    train(run, fake_mnist, ["--prior", "vamp"])
    assert main(["sample", str(run), "--sampler", "gmm"]) != 0  # nothing fitted yet: one line
    assert "fit-sampler" in capsys.readouterr().err
    assert main(["fit-sampler", str(run), "--gmm", "3", "--seed", "1"]) == 0
    files = {p.name for p in run.iterdir()}
    assert {"sampler.safetensors", "sampler.json"} <= files
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in run.rglob("*"))
    meta = json.loads((run / "sampler.json").read_text())
    assert meta["components"] == 3 and meta["num_codes"] == 108 and meta["covariance"] == "full"
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "6"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.split("wrote")[0])
    assert result["fid"] is not None and result["fid_gmm"] is not None and result["fid_gmm"] != result["fid"]
    assert "vamp" in result["fid_sampler"] and "Gaussian mixture" in result["fid_gmm_sampler"]


def test_fit_sampler_errors_are_one_line(tmp_path, fake_mnist, capsys):
    run = tmp_path / "run"
    train(run, fake_mnist, [])
    for argv, message in ((["fit-sampler", str(run), "--gmm", "0"], "--gmm"),
                          (["fit-sampler", str(run), "--gmm", "500"], "number of codes"),
                          (["fit-sampler", str(tmp_path / "nope"), "--gmm", "2"], "not found")):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vaelab: error:") and message in err[0], err
    assert main(["fit-sampler", str(run), "--gmm", "2"]) == 0
    (run / "sampler.safetensors").write_bytes(b"not a safetensors file")
    assert main(["sample", str(run), "--sampler", "gmm"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "safetensors" in err[0]


def test_gmm_sampler_recovers_a_known_mixture_and_round_trips(tmp_path):
    from sklearn.mixture import GaussianMixture

    from vaelab.samplers import fit_gmm, load_sampler

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64)
    codes = torch.cat([centres[0] + 0.5 * torch.randn(3000, 2, generator=gen, dtype=torch.float64),
                       centres[1] + torch.randn(1000, 2, generator=gen, dtype=torch.float64) @ torch.tensor(
                           [[1.0, 0.6], [0.0, 0.8]], dtype=torch.float64)])
    sampler = fit_gmm(codes, 2, seed=0)
    order = sampler.means[:, 0].argsort()
    torch.testing.assert_close(sampler.means[order], centres, atol=0.1, rtol=0)
    torch.testing.assert_close(sampler.weights[order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02,
                               rtol=0)
    reference = GaussianMixture(2, random_state=0).fit(codes.numpy())
    probe = torch.randn(7, 2, dtype=torch.float64) * 3
    torch.testing.assert_close(sampler.log_prob(probe), torch.from_numpy(reference.score_samples(probe.numpy())),
                               rtol=1e-6, atol=1e-6)
    draws = sampler.sample(20_000, generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(draws.mean(0), codes.mean(0), atol=0.1, rtol=0)
    sampler.save(tmp_path)
    again = load_sampler(tmp_path, 2)
    assert torch.equal(again.means, sampler.means) and torch.equal(again.covariances, sampler.covariances)
    assert load_sampler(tmp_path / "absent", 2) is None
    with pytest.raises(vaelab.errors.RunError, match="does not fit"):
        load_sampler(tmp_path, 3)


# ---- the latent tools on learned priors and layers ----------------------------------------------------


def _model(**changes):
    from vaelab.config import ModelConfig
    from vaelab.models import build_model

    torch.manual_seed(0)
    fields = dict(latent_dim=3, hidden=[16], image_shape=[1, 6, 6], likelihood="bernoulli", prior_components=4,
                  ladder_hidden=[12])
    fields.update(changes)
    return build_model(ModelConfig(**fields)).eval()


def test_traversal_ranges_follow_the_prior_marginals():
    model = _model(prior="mog")
    with torch.no_grad():
        model.prior.means.mul_(4.0)
        model.prior.log_vars.fill_(1.0)
    mean, std = prior_marginals(model)
    assert (std > 1.5).all()  # a wide learned prior
    table = traverse_images(model, [1, 2], span=(-2.0, 2.0), steps=5)
    codes = table.codes.reshape(2, 5, 3)
    for row, d in enumerate([1, 2]):
        torch.testing.assert_close(codes[row, :, d], mean[d] + torch.linspace(-2, 2, 5) * std[d])
        others = [k for k in range(3) if k != d]
        torch.testing.assert_close(codes[row][:, others], mean[others].expand(5, 2))
    plain = traverse_images(_model(), [0], span=(-3.0, 3.0), steps=3)  # N(0, I): the old behaviour
    torch.testing.assert_close(plain.codes[:, 0], torch.tensor([-3.0, 0.0, 3.0]))


def test_samples_come_from_the_models_own_prior():
    for prior in ("mog", "vamp"):
        model = _model(prior=prior)
        table = sample_images(model, 5, seed=4)
        expected = model.prior.sample(5, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(table.codes, expected.detach())
        assert prior in table.title


def test_per_layer_sampling_and_traversal_of_the_hierarchical_vae():
    model = _model(latent_layers=2, layer_dims=[3, 2])
    bottom, top = layer_dims(model, 1), layer_dims(model, 2)
    assert (bottom, top) == ([0, 1, 2], [3, 4])
    with torch.no_grad():
        def conditional_mean(codes):
            return model.prior.conditional(0, codes[:, top])[0]

        rows = sample_images(model, 12, nrow=4, layer=1, seed=0).codes.reshape(3, 4, 5)
        for row in rows:  # a row shares its top layer; the bottom layer varies along it
            assert torch.equal(row[:, top], row[:1, top].expand(4, 2))
            assert row[:, bottom].std(0).min() > 0
        assert not torch.equal(rows[0, 0, top], rows[1, 0, top])
        codes = sample_images(model, 6, layer=2, seed=0).codes  # fresh tops, bottoms at their conditional means
        torch.testing.assert_close(codes[:, bottom], conditional_mean(codes))
        table = traverse_images(model, [4], steps=5)  # a top-layer dimension moves; the bottom follows
        torch.testing.assert_close(table.codes[:, bottom], conditional_mean(table.codes))
        assert table.row_labels[0].startswith("z2[1]")


def test_explorer_sample_button_draws_from_the_prior():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vaelab.data.base import Split
    from vaelab.explorer.server import create_app

    model = _model(prior="vamp", image_shape=[1, 8, 8])
    split = Split(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), None)
    client = TestClient(create_app(model, split=split))
    answer = client.get("/api/sample", params={"seed": 5})
    assert answer.status_code == 200
    expected = model.prior.sample(1, generator=torch.Generator().manual_seed(5))[0].clamp(-10, 10)
    np.testing.assert_allclose(answer.json()["z"], expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert client.get("/api/sample", params={"seed": -1}).status_code == 422
    assert client.get("/api/meta").json()["prior"] == "vamp"

"""Disentanglement metrics on constructed codes, and `vaelab disentanglement` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from vaelab.cli import main
from vaelab.disentanglement.metrics import (
    dci,
    dci_from_importance,
    discretize,
    entropy,
    factor_vae_score,
    mig,
    mutual_information,
    sap,
)

SIZES = (3, 6, 10, 8, 8)  # a small grid whose factors fit in MIG's 20 bins
CATEGORICAL = [True, False, False, False, False]
N = 3000


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, s, N) for s in SIZES], 1)


def _codes(factors: np.ndarray, kind: str) -> np.ndarray:
    """'factors': the factors themselves (+ tiny noise, shuffled order of dims, arbitrary scales);
    'random': independent noise; 'mixed': the factors with posX and posY rotated by 45° into each
    other (two dimensions that each carry half of two factors)."""
    rng = np.random.default_rng(1)
    z = (factors + rng.normal(0, 0.01, factors.shape)) * np.array([1.0, -3.0, 0.5, 2.0, 1.0])
    if kind == "random":
        return rng.normal(size=(len(factors), 7))
    if kind == "mixed":
        a, b = ((factors[:, k] - factors[:, k].mean()) / factors[:, k].std() for k in (3, 4))
        z[:, 3], z[:, 4] = (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)
    return z[:, [2, 0, 4, 1, 3]]


def _all_scores(codes: np.ndarray, factors: np.ndarray) -> dict[str, float]:
    fit, held = slice(0, 2000), slice(2000, None)
    d = dci(codes[fit], factors[fit], codes[held], factors[held])
    return {
        "mig": mig(codes, factors).score,
        "factor_vae": factor_vae_score(codes, factors, np.random.default_rng(2), train_votes=800, eval_votes=800).score,
        "dci_d": d.disentanglement, "dci_c": d.completeness, "dci_i": d.informativeness,
        "sap": sap(codes[fit], factors[fit], codes[held], factors[held], CATEGORICAL).score,
    }


@pytest.fixture(scope="module")
def scores(factors) -> dict[str, dict[str, float]]:
    return {kind: _all_scores(_codes(factors, kind), factors) for kind in ("factors", "random", "mixed")}


def test_a_code_equal_to_the_factors_scores_near_the_maximum(scores):
    s = scores["factors"]
    assert s["mig"] > 0.95 and s["factor_vae"] > 0.99
    assert s["dci_d"] > 0.95 and s["dci_c"] > 0.95 and s["dci_i"] > 0.95
    # SAP: the categorical shape's best dimension reaches balanced accuracy 1 while the others sit
    # at chance (1/3), so its gap is at most 2/3; the four ordered factors' gaps are near 1.
    assert s["sap"] > (2 / 3 + 4 * 0.95) / 5


def test_a_random_code_scores_near_zero(scores):
    s = scores["random"]
    assert s["mig"] < 0.02 and s["dci_d"] < 0.05 and s["dci_c"] < 0.05 and s["sap"] < 0.03
    assert s["factor_vae"] < 1 / len(SIZES) + 0.1  # the FactorVAE score's floor is chance, 1/K
    assert s["dci_i"] < 0.3  # about chance for each factor


def test_a_code_that_mixes_two_factors_scores_in_between(scores):
    full, mixed, random = scores["factors"], scores["mixed"], scores["random"]
    for name in ("mig", "factor_vae", "dci_d", "dci_c", "sap"):
        assert random[name] + 0.1 < mixed[name] < full[name] - 0.1, name
    # MIG in particular: the three clean factors keep a gap near 1, the two mixed ones lose most of theirs.
    assert mixed["mig"] == pytest.approx(3 / 5, abs=0.15)


def test_mutual_information_matches_scikit_learn(factors):
    rng = np.random.default_rng(3)
    binned = discretize(rng.normal(size=(N, 4)) + factors[:, 2:3] * [0.0, 0.3, 1.0, 5.0])
    for d in range(4):
        for k in range(len(SIZES)):
            assert mutual_information(binned[:, d], factors[:, k]) == pytest.approx(
                mutual_info_score(binned[:, d], factors[:, k]), abs=1e-12)
    # I(v; v) = H(v), and MI against a constant is 0.
    assert mutual_information(factors[:, 2], factors[:, 2]) == pytest.approx(entropy(factors[:, 2]))
    assert entropy(factors[:, 2]) == pytest.approx(np.log(10), abs=0.01)
    assert mutual_information(factors[:, 2], np.zeros(N, dtype=int)) == 0.0


def test_mig_by_hand_on_a_two_by_two_table():
    # v uniform on {0, 1}; z0 = v (I = log 2), z1 = v with a quarter of the labels flipped.
    v = np.array([0, 1] * 400)
    flipped = v.copy()
    quarter = np.arange(len(v)) % 8 < 2  # a quarter of the 0s and a quarter of the 1s
    flipped[quarter] = 1 - flipped[quarter]
    result = mig(np.stack([v, flipped], 1).astype(float), v[:, None], bins=2)
    p = np.array([[3 / 8, 1 / 8], [1 / 8, 3 / 8]])  # joint of (flipped, v)
    i_flipped = float((p * np.log(p / 0.25)).sum())
    assert result.mutual_information[:, 0] == pytest.approx([np.log(2), i_flipped])
    assert result.score == pytest.approx((np.log(2) - i_flipped) / np.log(2))


def test_dci_from_a_known_importance_matrix():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0))
    # One dimension explains both factors: completeness is perfect, disentanglement is not.
    d, c = dci_from_importance(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert c == pytest.approx(1.0) and d == pytest.approx(0.0)
    # A dimension with no importance does not count against disentanglement.
    assert dci_from_importance(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))[0] == pytest.approx(1.0)


def test_factor_vae_score_without_active_dimensions_is_zero(factors):
    result = factor_vae_score(np.zeros((N, 3)), factors, np.random.default_rng(0), train_votes=10, eval_votes=10)
    assert result.score == 0.0 and result.active_dims == []


# ---- vaelab disentanglement RUN ------------------------------------------------------------------

TRAIN = ["train", "--dataset", "shapes", "--shapes-subsample", "300", "--likelihood", "bernoulli", "--hidden", "16",
         "--latent-dim", "3", "--epochs", "1", "--batch-size", "64", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dis") / "run"
    assert main([*TRAIN, "--objective", "beta-tc", "--out", str(run)]) == 0
    return run


def test_cli_writes_the_metrics_and_a_figure_per_dimension(shapes_run, capsys):
    assert main(["disentanglement", str(shapes_run), "--images", "200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "mig" in out and "factor_vae" in out and f"wrote {shapes_run / 'disentanglement.json'}" in out
    result = json.loads((shapes_run / "disentanglement.json").read_text())
    assert set(result["metrics"]) == {"mig", "factor_vae", "dci_disentanglement", "dci_completeness",
                                      "dci_informativeness", "sap"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert result["factors"] == ["shape", "scale", "orientation", "posX", "posY"]
    assert result["images"] == 200 and result["protocol"]["split"] == "train" and result["protocol"]["seed"] == 1
    assert np.array(result["details"]["mutual_information_nats"]).shape == (3, 5)
    assert [c["dim"] for c in result["captures"]] == [0, 1, 2]
    for c in result["captures"]:
        assert c["factor"] in (None, *result["factors"])
    figures = shapes_run / "figures"
    assert (figures / "disentanglement.png").is_file()
    assert sorted(p.name for p in (figures / "disentanglement").iterdir()) == [f"traverse-z{d}.png" for d in range(3)]
    # Seeded: the same command gives the same numbers.
    first = result["metrics"]
    assert main(["disentanglement", str(shapes_run), "--images", "200", "--seed", "1", "--no-figures"]) == 0
    assert json.loads((shapes_run / "disentanglement.json").read_text())["metrics"] == first
    # The HTML report shows the scores and the overview figure.
    from vaelab.report import render_report

    html = render_report(shapes_run)
    assert "Disentanglement (disentanglement.json)" in html and "factors they capture" in html


def test_cli_refuses_a_run_without_factors_in_one_line(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--dataset", "digits", "--hidden", "8", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    code = main(["disentanglement", str(run)])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and err.startswith("vaelab: error: ")
    assert "has no factor labels" in err and "--dataset shapes" in err
    assert not (run / "disentanglement.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["disentanglement", "no-such-run"], "run folder not found"),
    (["disentanglement", "{run}", "--images", "0"], "--images must be between"),
])
def test_cli_bad_input_is_one_line(shapes_run, capsys, argv, message):
    code = main([a.replace("{run}", str(shapes_run)) for a in argv])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and message in err


def test_cli_takes_the_run_lock(shapes_run, capsys):
    import multiprocessing

    from vaelab.runlock import run_lock

    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold() -> None:
        with run_lock(shapes_run, "vaelab train"):
            ready.set()
            release.wait(30)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        code = main(["disentanglement", str(shapes_run), "--images", "50", "--no-figures"])
    finally:
        release.set()
        holder.join(30)
    err = capsys.readouterr().err
    assert code == 4 and "is in use by another vaelab process" in err and "vaelab train" in err

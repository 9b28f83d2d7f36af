"""`--early-stopping N` and `--keep best|last` on a constructed validation curve.

The validation loss the loop sees is replaced by a fixed curve (the real one is deterministic but
not designed); the reference is an independent count of when N epochs in a row have failed to
beat the best, and the weights of the best epoch come from a run stopped there by `--epochs`.
"""

from __future__ import annotations

import math

import pytest
import torch

import vaelab.training
from kill_resume import metrics
from vaelab.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE, read_safetensors
from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.early_stopping import BestEpoch
from vaelab.training import resume, train

CURVE = [5.0, 4.0, 4.5, 3.5, 3.6, 3.7, 3.5, 3.8, 2.0, 1.0, 0.5, 0.4]  # epoch 7 ties epoch 4: not better
PATIENCE = 3


def _reference(curve: list[float], patience: int) -> tuple[int, list[int]]:
    """(epochs trained, best epoch after each) for early stopping written out plainly."""
    best, best_epoch, bests = math.inf, 0, []
    for epoch, loss in enumerate(curve, start=1):
        if loss < best:
            best, best_epoch = loss, epoch
        bests.append(best_epoch)
        if epoch - best_epoch >= patience:
            return epoch, bests
    return len(curve), bests


@pytest.fixture
def constructed_curve(monkeypatch):
    """The training loop's validation returns CURVE[epoch - 1] (one call per epoch)."""
    calls = []

    def fake(model, split, **kwargs):
        calls.append(1)
        loss = CURVE[len(calls) - 1]
        return {"loss": loss, "recon": loss, "kl": 0.0}

    monkeypatch.setattr(vaelab.training, "elbo_on_split", fake)
    return calls


def _cfg(data_dir, **train_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden, cfg.model.latent_dim = [16], 2
    cfg.train.batch_size, cfg.train.seed, cfg.train.epochs = 36, 3, len(CURVE)
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    return cfg


def test_best_epoch_tracker_on_the_curve():
    stopped, bests = _reference(CURVE, PATIENCE)
    assert stopped == 7 and bests == [1, 2, 2, 4, 4, 4, 4]
    best = BestEpoch(keep_weights=False)
    for epoch, loss in enumerate(CURVE, start=1):
        if best.should_stop(epoch - 1, PATIENCE):
            break
        best.update(epoch, loss, None)
        assert best.epoch == bests[epoch - 1]
    assert (epoch - 1, best.epoch, best.val_loss) == (7, 4, 3.5)
    assert not BestEpoch(False).should_stop(5, 0)  # 0 = off


def test_early_stopping_and_keep_best(tmp_path, fake_mnist, constructed_curve, capsys):
    stopped, bests = _reference(CURVE, PATIENCE)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "16", "--latent-dim", "2",
                 "--batch-size", "36", "--seed", "3", "--epochs", str(len(CURVE)), "--early-stopping", str(PATIENCE),
                 "--keep", "best", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, stopped + 1))
    assert [r["best_epoch"] for r in rows] == bests  # each line says which epoch was best so far
    assert [r["val_loss"] for r in rows] == CURVE[:stopped]
    assert f"early stopping after epoch {stopped}" in out and "best 3.500 at epoch 4" in out
    assert "model.safetensors holds epoch 4, the best" in out

    # The best epoch's weights: those of the same run stopped after epoch 4 by --epochs.
    constructed_curve.clear()
    at_best = train(_cfg(fake_mnist, epochs=4), tmp_path / "at-best", progress=False)
    kept, _ = read_safetensors(run / WEIGHTS_FILE)
    want, _ = read_safetensors(at_best / WEIGHTS_FILE)
    assert all(torch.equal(kept[k], want[k]) for k in want)
    last = {k[6:]: v for k, v in read_safetensors(run / CHECKPOINT_FILE)[0].items() if k.startswith("model.")}
    assert any(not torch.equal(kept[k], last[k]) for k in kept)  # the checkpoint goes on from epoch 7

    # A stopped run stays stopped on --resume, with its best weights (kept in the checkpoint).
    constructed_curve.clear()
    resume(run, progress=False, epochs=20)
    assert [r["epoch"] for r in metrics(run)] == list(range(1, stopped + 1))
    again, _ = read_safetensors(run / WEIGHTS_FILE)
    assert all(torch.equal(again[k], want[k]) for k in want)


def test_keep_last_is_the_last_epoch_and_no_stopping_by_default(tmp_path, fake_mnist, constructed_curve):
    run = train(_cfg(fake_mnist, early_stopping=PATIENCE), tmp_path / "last", progress=False)
    rows = metrics(run)
    assert len(rows) == 7
    kept, _ = read_safetensors(run / WEIGHTS_FILE)
    last = {k[6:]: v for k, v in read_safetensors(run / CHECKPOINT_FILE)[0].items() if k.startswith("model.")}
    assert all(torch.equal(kept[k], last[k]) for k in kept)
    constructed_curve.clear()
    full = train(_cfg(fake_mnist), tmp_path / "full", progress=False)  # --early-stopping 0: every epoch
    assert [r["best_epoch"] for r in metrics(full)] == [1, 2, 2, 4, 4, 4, 4, 4, 9, 10, 11, 12]

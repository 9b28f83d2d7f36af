"""`--mlflow [URI]`: a run read back with MLflow's own client from a local file store.

The references are the run folder itself: MLflow's parameters must be the whole config.json,
its metric histories the metrics.jsonl lines (same keys, step = epoch), its artifacts the run
folder's files byte for byte.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from vaelab.cli import main
from vaelab.mlflow_tracking import flat_params

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402 - only once mlflow is known to be there

SMALL = ["--dataset", "mnist", "--batch-size", "36", "--hidden", "16", "--latent-dim", "2", "--threads", "1",
         "--quiet"]


def _only_run(store: Path) -> tuple[MlflowClient, object]:
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("vaelab")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_a_run_reads_back_from_mlflow(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "2", "--mlflow", str(store),
                 "--out", str(run)]) == 0
    client, logged = _only_run(store)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.tags["vaelab.run_folder"] == str(run.resolve())

    # parameters: the whole config.json
    from vaelab.config import RunConfig

    cfg = RunConfig.load(run / "config.json")
    assert logged.data.params == flat_params(cfg)
    assert logged.data.params["train.mlflow"] == store.resolve().as_uri()  # config.json holds the absolute URI
    assert logged.data.params["model.latent_dim"] == "2" and logged.data.params["train.keep"] == "last"

    # metrics: every key of every metrics.jsonl line, step = epoch
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(logged.data.metrics) == set(rows[0])
    for key in rows[0]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, key))
        assert history == [(row["epoch"], pytest.approx(float(row[key]), rel=1e-12)) for row in rows], key

    # artifacts: the run folder's files, byte for byte, figures included
    local = Path(client.download_artifacts(logged.info.run_id, "", str(tmp_path / "download")))
    expected = sorted(p.relative_to(run).as_posix() for p in run.rglob("*")
                      if p.is_file() and not p.name.startswith("."))
    assert "figures/latent.png" in expected and "model.safetensors" in expected
    got = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert got == expected
    assert all((local / name).read_bytes() == (run / name).read_bytes() for name in expected
               if name != "mlflow.json")

    # --resume continues the same MLflow run; the changed epochs become a tag (parameters cannot change)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    client, again = _only_run(store)
    assert again.info.run_id == logged.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed.train.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(again.info.run_id, "val_loss")] == [1, 2, 3]


def test_mlflow_without_a_uri_uses_mlruns_here(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # vaelab allows the file store it is asked for
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--out", "run", "--mlflow"]) == 0
    client, logged = _only_run(tmp_path / "mlruns")
    assert logged.info.status == "FINISHED"
    saved = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert saved == {"tracking_uri": (tmp_path / "mlruns").as_uri(), "run_id": logged.info.run_id}


def test_without_the_package_one_line_and_nothing_written(tmp_path, fake_mnist, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--mlflow", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaelab: error: --mlflow needs the mlflow package: pip install 'vaelab[mlflow]' "
                   "(or pip install mlflow-skinny)"]
    assert not out.exists() and not (tmp_path / "mlruns").exists()

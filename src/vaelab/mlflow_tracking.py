"""MLflow tracking of a training run (`--mlflow [URI]`), through MLflow's own client.

What one vaelab run logs to one MLflow run (experiment `vaelab`, or $MLFLOW_EXPERIMENT_NAME;
run name = the run folder's name; tag `vaelab.run_folder` = its absolute path):
- parameters: the whole resolved config, flattened (`data.dataset`, `model.latent_dim`,
  `train.lr`, ..., `version`, `vaelab_version`, `weights`);
- metrics, after every epoch: each number of the epoch's metrics.jsonl line under the same key
  (`train_loss`, `val_loss`, `lr`, `beta`, `best_epoch`, ...), at step = the epoch;
- artifacts, at the end: every file of the run folder (config.json, metrics.jsonl,
  model.safetensors, checkpoint.safetensors, figures/, eval.json ... as they are then), so the
  figures show in MLflow's UI.

`--mlflow` alone tracks to a local file store `mlruns/` in the current folder; `--mlflow URI`
to any tracking URI MLflow understands (a folder, `file:...`, `http://host:5000`,
`sqlite:///mlflow.db` with the full `mlflow` package). A path is written to config.json as an
absolute `file:` URI, so a resumed run finds the same store from anywhere. MLflow 3 refuses
file stores unless $MLFLOW_ALLOW_FILE_STORE is true (it calls them "maintenance mode"); vaelab
sets it for file stores it is asked to use, unless it is already set.

The MLflow run id is kept in RUN/mlflow.json, so `--resume` continues the same MLflow run. The
run is marked FINISHED at the end, FAILED if training stops on an error. MLflow is optional
(`pip install 'vaelab[mlflow]'`, which installs mlflow-skinny); `require_mlflow` says so in one
line before anything is written. If logging fails midway (a tracking server gone), training goes
on and one warning says MLflow logging stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from vaelab.config import RunConfig
from vaelab.errors import ConfigError

MLFLOW_FILE = "mlflow.json"
DEFAULT_STORE = "mlruns"  # `--mlflow` without a URI
EXPERIMENT = "vaelab"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
BATCH = 100  # MLflow's limit on parameters per log_batch call


def require_mlflow() -> None:
    """Raise a one-line `ConfigError` if MLflow's client cannot be imported here."""
    try:
        import mlflow  # noqa: F401 - availability probe
    except ImportError:
        raise ConfigError("--mlflow needs the mlflow package: pip install 'vaelab[mlflow]' "
                          "(or pip install mlflow-skinny)") from None


def resolve_uri(value: str) -> str:
    """A tracking URI as config.json keeps it: a plain path becomes an absolute file: URI."""
    scheme = urlparse(value).scheme
    if scheme and len(scheme) > 1:  # http:, file:, sqlite:, databricks ... (not a Windows drive letter)
        return value
    return Path(value).expanduser().resolve().as_uri()


def _is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme == "file"


def flat_params(cfg: RunConfig) -> dict[str, str]:
    """The whole config as MLflow parameters: dotted keys, values as text (lists as JSON)."""
    out: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
            return
        text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
        out[prefix[:-1]] = text[:MAX_PARAM_LENGTH]

    walk(cfg.to_dict(), "")
    return out


class MLflowLogger:
    """Logs one vaelab run to one MLflow run: parameters now, metrics per epoch, artifacts at the end."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, resumed: bool) -> None:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.uri = resolve_uri(cfg.train.mlflow)
        if _is_file_store(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.active = True
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self._existing_run() if resumed else None
            if self.run_id is None:
                self.run_id = self._new_run(cfg)
            else:
                self.client.update_run(self.run_id, status="RUNNING")
                self._log_changed_params(cfg)
        except Exception as exc:  # noqa: BLE001 - MLflow's client raises many types (HTTP, store, YAML)
            raise ConfigError(f"cannot start MLflow tracking at {self.uri}: {_first_line(exc)}") from None

    # ---- set-up -----------------------------------------------------------------------------
    def _existing_run(self) -> Optional[str]:
        """The MLflow run this run folder logged to before, if it is in the same store."""
        try:
            saved = json.loads((self.run_dir / MLFLOW_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("tracking_uri") != self.uri:
            return None
        run_id = saved.get("run_id")
        try:
            self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted or never reached the store: start a new one
            return None
        return run_id

    def _new_run(self, cfg: RunConfig) -> str:
        from mlflow.entities import Param

        from vaelab.checkpoint import atomic_write_text

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"vaelab.run_folder": str(self.run_dir.resolve())})
        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(run.info.run_id, params=params[start:start + BATCH])
        atomic_write_text(self.run_dir / MLFLOW_FILE,
                          json.dumps({"tracking_uri": self.uri, "run_id": run.info.run_id}, indent=2) + "\n")
        return run.info.run_id

    def _log_changed_params(self, cfg: RunConfig) -> None:
        """A resumed run may have a new `train.epochs`; MLflow parameters cannot change, so a
        changed value goes into a tag `resumed.<key>`."""
        logged = self.client.get_run(self.run_id).data.params
        for key, value in flat_params(cfg).items():
            if key not in logged:
                self.client.log_param(self.run_id, key, value)
            elif logged[key] != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    # ---- per epoch and at the end -------------------------------------------------------------
    def __call__(self, row: dict[str, Any], model: Any) -> None:
        """Log one epoch's metrics line (numbers only) at step = the epoch."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def close(self, failed: bool = False) -> None:
        """Upload the run folder's files (not after a failure) and mark the MLflow run ended."""
        if not self.active:
            return
        if not failed:
            self._guard(self._log_artifacts)
        self._guard(lambda: self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED"))

    def _log_artifacts(self) -> None:
        for entry in sorted(self.run_dir.iterdir()):
            if entry.name.startswith("."):  # the lock file and temporary files of atomic writes
                continue
            if entry.is_dir():
                self.client.log_artifacts(self.run_id, str(entry), artifact_path=entry.name)
            elif entry.is_file():
                self.client.log_artifact(self.run_id, str(entry))

    def _guard(self, call) -> None:
        """Run one MLflow call; on failure warn once and stop logging (training goes on)."""
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see __init__
            self.active = False
            print(f"vaelab: warning: MLflow logging to {self.uri} stopped: {_first_line(exc)}",
                  file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]

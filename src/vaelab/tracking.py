"""Tracking a training run: TensorBoard (`--tensorboard`, here) and MLflow (`--mlflow`, in
vaelab.mlflow_tracking), combined with the caller's hook in one `Tracking` object.

TensorBoard logging goes through `torch.utils.tensorboard`.

`metrics.jsonl` stays the always-on record; this adds, under `RUN/tensorboard/`, after every epoch:
- scalars: each number of the epoch's metrics row (`loss/train`, `loss/val`, `recon/…`, `kl/…`,
  `lr`, `beta`, …) and `kl_per_dim/z<d>`, the validation posterior's average
  KL(q(z_d|x) || N(0, 1)) per latent dimension (how much each dimension is used);
- images: `reconstructions` (fixed validation inputs above their reconstructions) and `samples`
  (decodings of fixed draws from the model's prior), so TensorBoard's slider shows them improve.
The global step is the epoch number. TensorBoard is an optional dependency
(`pip install 'vaelab[tensorboard]'`); `require_tensorboard` fails with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from vaelab.config import RunConfig
from vaelab.data.base import ImageData, Split
from vaelab.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"
NUM_IMAGES = 8  # validation images reconstructed / prior samples drawn per epoch
KL_IMAGES = 2000  # validation images encoded for the per-dimension KL
MAX_KL_SCALARS = 64  # one scalar per dimension up to this many; all dimensions also go in a histogram

Hook = Callable[[dict[str, Any], torch.nn.Module], None]


def require_tensorboard() -> None:
    """Raise a one-line `ConfigError` if `torch.utils.tensorboard` cannot be used here."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - availability probe
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'vaelab[tensorboard]' "
                          "(or pip install tensorboard)") from None


def scalar_tag(key: str) -> str:
    """Metrics-row key -> TensorBoard tag: 'val_loss' -> 'loss/val', so train and val share a chart."""
    for split in ("train", "val"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1:]}/{split}"
    return key


class TensorBoardHook:
    """The training loop's per-epoch hook writing scalars and images to `run_dir/tensorboard`."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, data: ImageData) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + cfg.to_json() + "\n```", 0)
        self.kl_split = _head(data.val, KL_IMAGES)
        # Fixed inputs and prior draws, so each epoch's images are comparable.
        shown = _head(data.val, NUM_IMAGES)
        self.inputs = shown.images.float() / 255.0  # (n, C, H, W) in [0, 1]
        self.input_labels = shown.labels
        self.prior_seed = cfg.train.seed  # the same draws of the (possibly learned) prior every epoch
        classes = cfg.model.num_classes if cfg.model.conditional else 0
        self.prior_labels = torch.arange(NUM_IMAGES) % classes if classes else None

    def __call__(self, row: dict[str, Any], model: torch.nn.Module) -> None:
        """Log one epoch: `row` is the metrics line, `model` the VAE in eval mode."""
        from vaelab.latent import encode_split
        from vaelab.plots import image_grid

        epoch = int(row["epoch"])
        for key, value in row.items():
            if key in ("epoch", "step", "best_epoch") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self.writer.add_scalar(scalar_tag(key), value, epoch)
        kl = encode_split(model, self.kl_split).kl_per_dim()  # (D,)
        for d in range(min(len(kl), MAX_KL_SCALARS)):
            self.writer.add_scalar(f"kl_per_dim/z{d}", kl[d].item(), epoch)
        self.writer.add_histogram("kl_per_dim", kl, epoch)
        device = model.device
        with torch.inference_mode():
            x = self.inputs.to(device)
            y = _on(self.input_labels, device) if model.conditional else None
            recon = model.reconstruct(x, y).float().cpu()  # (n, C, H, W)
            prior_z = model.prior.sample(NUM_IMAGES, generator=torch.Generator().manual_seed(self.prior_seed),
                                         device=device)  # (n, D), from the model's own prior
            samples = model.decode_images(prior_z, _on(self.prior_labels, device)).float().cpu()
        n = len(x)
        self.writer.add_image("reconstructions", image_grid(torch.cat([x.cpu(), recon]), nrow=n), epoch,
                              dataformats="HWC")
        self.writer.add_image("samples", image_grid(samples, nrow=len(samples)), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        """Close the event file (the run ended, or stopped early)."""
        self.writer.close()


def _head(split: Split, n: int) -> Split:
    return Split(split.images[:n], None if split.labels is None else split.labels[:n])


def _on(labels: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return None if labels is None else labels.to(device)


def _translate_board(cfg: RunConfig, run_dir: str | Path, data: ImageData):
    from vaelab.translate.tracking import TranslateBoardHook

    return TranslateBoardHook(cfg, run_dir, data)


# Model family -> its TensorBoard logger (TensorBoardHook for the VAE).
BOARDS: dict[str, Callable[[RunConfig, str | Path, ImageData], Any]] = {"translate": _translate_board}


class Tracking:
    """The per-epoch loggers of a run (TensorBoard, MLflow) and the caller's hook, called as one.

    The training loop creates it empty, `start`s the loggers once every check on user input has
    passed (they write files or reach a server), calls it after each epoch with the metrics row
    and the validated model, and `close`s it at the end (MLflow then uploads the run folder).
    """

    def __init__(self, hook: Optional[Hook] = None) -> None:
        self.hook = hook
        self.loggers: list[Any] = []

    def start(self, cfg: RunConfig, run_dir: str | Path, data: ImageData, *, resumed: bool) -> None:
        """Open the loggers the config asks for (`train.tensorboard`, `train.mlflow`)."""
        if cfg.train.tensorboard:
            from vaelab.models import model_family

            self.loggers.append(BOARDS.get(model_family(cfg.model), TensorBoardHook)(cfg, run_dir, data))
        if cfg.train.mlflow:
            from vaelab.mlflow_tracking import MLflowLogger

            self.loggers.append(MLflowLogger(cfg, run_dir, resumed=resumed))

    def __call__(self, row: dict[str, Any], model: torch.nn.Module) -> None:
        for logger in self.loggers:
            logger(row, model)
        if self.hook is not None:
            self.hook(row, model)

    def close(self, failed: bool = False) -> None:
        """Flush and close every logger (after the run folder's final files are written)."""
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close(failed=failed)


def require_trackers(cfg: RunConfig) -> None:
    """One-line ConfigError when a logger the config asks for is not installed (checked before
    anything is written)."""
    if cfg.train.tensorboard:
        require_tensorboard()
    if cfg.train.mlflow:
        from vaelab.mlflow_tracking import require_mlflow

        require_mlflow()

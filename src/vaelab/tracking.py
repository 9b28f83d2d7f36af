"""TensorBoard logging for a training run (`--tensorboard`), through `torch.utils.tensorboard`.

`metrics.jsonl` stays the always-on record; this adds, under `RUN/tensorboard/`, after every epoch:
- scalars: each number of the epoch's metrics row (`loss/train`, `loss/val`, `recon/…`, `kl/…`,
  `lr`, `beta`, …) and `kl_per_dim/z<d>`, the validation posterior's average
  KL(q(z_d|x) || N(0, 1)) per latent dimension (how much each dimension is used);
- images: `reconstructions` (fixed validation inputs above their reconstructions) and `samples`
  (decodings of fixed draws from N(0, I)), so TensorBoard's slider shows them improve.
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

        self.total_epochs = cfg.train.epochs
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + cfg.to_json() + "\n```", 0)
        self.kl_split = _head(data.val, KL_IMAGES)
        # Fixed inputs and prior draws, so each epoch's images are comparable.
        shown = _head(data.val, NUM_IMAGES)
        self.inputs = shown.images.float() / 255.0  # (n, C, H, W) in [0, 1]
        self.input_labels = shown.labels
        generator = torch.Generator().manual_seed(cfg.train.seed)
        self.prior_z = torch.randn(NUM_IMAGES, cfg.model.latent_dim, generator=generator)  # (n, D)
        classes = cfg.model.num_classes if cfg.model.conditional else 0
        self.prior_labels = torch.arange(NUM_IMAGES) % classes if classes else None

    def __call__(self, row: dict[str, Any], model: torch.nn.Module) -> None:
        """Log one epoch: `row` is the metrics line, `model` the VAE in eval mode."""
        from vaelab.latent import encode_split
        from vaelab.plots import image_grid

        epoch = int(row["epoch"])
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
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
            samples = model.decode_images(self.prior_z.to(device), _on(self.prior_labels, device)).float().cpu()
        n = len(x)
        self.writer.add_image("reconstructions", image_grid(torch.cat([x.cpu(), recon]), nrow=n), epoch,
                              dataformats="HWC")
        self.writer.add_image("samples", image_grid(samples, nrow=len(samples)), epoch, dataformats="HWC")
        self.writer.flush()
        if epoch >= self.total_epochs:
            self.writer.close()


def _head(split: Split, n: int) -> Split:
    return Split(split.images[:n], None if split.labels is None else split.labels[:n])


def _on(labels: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return None if labels is None else labels.to(device)


def _translate_board(cfg: RunConfig, run_dir: str | Path, data: ImageData) -> Hook:
    from vaelab.translate.tracking import TranslateBoardHook

    return TranslateBoardHook(cfg, run_dir, data)


# Model family -> its TensorBoard hook (TensorBoardHook for the VAE).
BOARDS: dict[str, Callable[[RunConfig, str | Path, ImageData], Hook]] = {"translate": _translate_board}


def with_tracking(cfg: RunConfig, run_dir: str | Path, data: ImageData, hook: Optional[Hook]) -> Optional[Hook]:
    """The training loop's hook: `hook` alone, or followed by TensorBoard logging when `cfg.train.tensorboard`."""
    if not cfg.train.tensorboard:
        return hook
    from vaelab.models import model_family

    board = BOARDS.get(model_family(cfg.model), TensorBoardHook)(cfg, run_dir, data)
    if hook is None:
        return board

    def both(row: dict[str, Any], model: torch.nn.Module) -> None:
        board(row, model)
        hook(row, model)

    return both

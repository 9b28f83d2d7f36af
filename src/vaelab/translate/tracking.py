"""TensorBoard logging of image-to-image runs (`--tensorboard` with --task translate).

As for a VAE run (vaelab.tracking), every number of the epoch's metrics row is a scalar; the
images are fixed validation inputs (their degradation drawn once), above the mean prediction of
8 samples, above the per-pixel std (scaled to its maximum), above the targets; and the scalars
`translate/psnr_val` and `translate/mean_std_val` over those images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data.base import ImageData
from vaelab.tracking import NUM_IMAGES, TENSORBOARD_DIR, require_tensorboard, scalar_tag

SAMPLES = 8


class TranslateBoardHook:
    """The training loop's per-epoch hook for translate runs, writing to `run_dir/tensorboard`."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, data: ImageData) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        from vaelab.translate.evaluate import fixed_pairs

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))
        self.writer.add_text("config", "```\n" + cfg.to_json() + "\n```", 0)
        self.pairs = fixed_pairs(data.val, "validation", max_images=NUM_IMAGES)
        self.seed = cfg.train.seed

    def __call__(self, row: dict[str, Any], model: torch.nn.Module) -> None:
        from vaelab.image_metrics import psnr
        from vaelab.plots import image_grid
        from vaelab.translate.figures import std_map

        epoch = int(row["epoch"])
        for key, value in row.items():
            if key in ("epoch", "step", "best_epoch") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self.writer.add_scalar(scalar_tag(key), value, epoch)
        x, target = self.pairs.inputs, self.pairs.targets[0]
        out = model.translate(x.to(model.device), SAMPLES, torch.Generator().manual_seed(self.seed))
        mean, std = out.mean.float().cpu(), std_map(out.std.float().cpu())[:, None]  # (n, 1, H, W)
        self.writer.add_scalar("translate/psnr_val", float(psnr(mean, target).mean()), epoch)
        self.writer.add_scalar("translate/mean_std_val", float(std.mean()), epoch)
        shown = std / std.max().clamp_min(1e-12)
        if mean.shape[1] == 3:
            shown = shown.expand(-1, 3, -1, -1)
        grid = torch.cat([x if x.shape[1] == mean.shape[1] else x.mean(1, keepdim=True).expand_as(mean),
                          mean, shown, target])
        self.writer.add_image("translations", image_grid(grid, nrow=len(x)), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        """Close the event file (the run ended, or stopped early)."""
        self.writer.close()

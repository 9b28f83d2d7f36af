"""What a user sees while training: the per-epoch progress bar ends at its full count, and short
epochs print in milliseconds instead of `0.0s`."""

from __future__ import annotations

import re

from vaelab.config import RunConfig
from vaelab.training import format_seconds, train


def test_epoch_times_below_50_ms_print_in_milliseconds():
    assert format_seconds(0.0123) == "12ms"
    assert format_seconds(0.0004) == "0ms"
    assert format_seconds(0.049) == "49ms"
    assert format_seconds(0.05) == "0.1s"  # from 0.05 s on, one decimal of a second says enough
    assert format_seconds(2.345) == "2.3s"


def test_progress_bar_ends_at_the_full_count_every_epoch(tmp_path, fake_mnist, capsys):
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(fake_mnist)
    cfg.model.hidden, cfg.model.latent_dim = [16], 2
    cfg.train.batch_size, cfg.train.epochs = 16, 4  # 108 images: 7 steps per epoch
    train(cfg, tmp_path / "run", progress=True)
    captured = capsys.readouterr()
    for epoch in range(1, 5):
        # the bar's drawings of this epoch, in order ("epoch 2/4:  43%|...| 3/7 [...]")
        counts = re.findall(rf"epoch {epoch}/4:\s+\d+%\|[^|]*\|\s*(\d+)/7", captured.err)
        assert counts and counts[-1] == "7", (epoch, counts)
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4
    assert all(re.search(r"  (\d+ms|\d+\.\ds)$", line) for line in lines), lines

"""The README's runnable blocks run as written (digits: offline), and its Python API example does what
its comments say."""

from __future__ import annotations

from pathlib import Path

import torch

from docs_blocks import README, run_bash, run_python, runnable_blocks


def readme_python_example() -> str:
    """The runnable python block under the '## Python API' heading."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in runnable_blocks(README) if b.language == "python" and b.code in section]
    assert blocks, "README.md has no runnable python block under '## Python API'"
    return blocks[0].code


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 20  # a short example, not a program
    monkeypatch.chdir(tmp_path)  # its run folder lands in tmp_path/runs/...
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)

    run, model, x, q = Path(namespace["run"]), namespace["model"], namespace["x"], namespace["q"]
    assert (tmp_path / run / "model.safetensors").is_file() and (tmp_path / run / "walk_and_samples.png").is_file()
    assert x.shape == (2, 1, 8, 8) and q.mean.shape == (2, 2) and q.log_var.shape == (2, 2)
    walk = namespace["walk"]
    assert walk.shape == (8, 2)
    torch.testing.assert_close(walk[0], q.mean[0])  # the walk starts and ends at the two posterior means
    torch.testing.assert_close(walk[-1], q.mean[1])
    torch.testing.assert_close(walk[3], q.mean[0] + 3 / 7 * (q.mean[1] - q.mean[0]))  # a straight line
    torch.testing.assert_close(namespace["x_hat"], model.reconstruct(x))
    images = namespace["images"]
    assert images.shape == (8, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    # Trained, not random: the reconstructions are far closer to the inputs than a blank image is.
    assert (namespace["x_hat"] - x).square().mean() < 0.5 * x.square().mean()


def test_other_readme_blocks_run(tmp_path, monkeypatch):
    """Any other runnable README block (the API example above has its own test) runs cleanly."""
    example = readme_python_example()
    monkeypatch.chdir(tmp_path)
    for block in runnable_blocks(README):
        if block.code == example:
            continue
        run_python(block) if block.language == "python" else run_bash(block, tmp_path)

"""vaelab: variational autoencoders on images — train, evaluate, explore.

Python API:
    >>> import vaelab
    >>> model = vaelab.load("runs/mnist-...")         # VAE in eval mode
    >>> q = model.encode(x)                             # posterior: q.mean, q.log_var, q.sample()
    >>> x_hat = model.decode(q.mean)                    # likelihood parameter (logits or mean)
"""

__version__ = "0.1.0"

import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from vaelab.models import VAE

from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402


# `import vaelab` stays light (no torch): `vaelab --help` answers in a fraction of a second.
def load(run_dir: "str | os.PathLike[str]", *args: Any, **kwargs: Any) -> "VAE":
    """Load a trained model from a run folder: `config.json` + `model.safetensors` -> VAE in eval mode.

    Extra arguments go to `vaelab.runs.load` (e.g. `device="cuda"`).
    """
    from vaelab.runs import load as _load

    return _load(run_dir, *args, **kwargs)


def train(cfg: RunConfig, out: "str | os.PathLike[str] | None" = None, **kwargs: Any) -> "Path":
    """Train a new run described by `cfg` into `out` and return its folder.

    Keyword arguments go to `vaelab.training.train` (`force`, `progress`, `data`, `hook`).
    """
    from vaelab.training import train as _train

    return _train(cfg, out, **kwargs)


__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "__version__", "load", "train"]

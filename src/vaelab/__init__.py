"""vaelab: variational autoencoders on images — train, evaluate, explore.

Python API:
    >>> import vaelab
    >>> model = vaelab.load("runs/mnist-...")         # VAE in eval mode
    >>> q = model.encode(x)                             # posterior: q.mean, q.log_var, q.sample()
    >>> x_hat = model.decode(q.mean)                    # likelihood parameter (logits or mean)
"""

__version__ = "0.1.0"

from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from vaelab.runs import load  # noqa: E402


def train(cfg: RunConfig, out=None, **kwargs):
    """Train a run (see `vaelab.training.train`); returns the run folder."""
    from vaelab.training import train as _train

    return _train(cfg, out, **kwargs)


__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "__version__", "load", "train"]

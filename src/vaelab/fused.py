"""A hand-derived training step for MLP VAEs on the ELBO: forward and backward without autograd.

For a small MLP on a CPU a training step is only about half matmul; the rest is autograd's
graph bookkeeping, composite loss kernels and their saved buffers. This module computes the
negative ELBO and its gradient in one pass of plain tensor ops, written out from the chain rule,
and leaves the gradients in each parameter's `.grad` for the optimiser (as `backward()` would):

    forward                                   backward (g_v = d loss / d v, B images)
    a_0 = [x | y]                             g_r    = d recon / d r  / B   (likelihood below)
    a_i = act(W_i a_(i-1) + b_i)  (encoder)   g_a    = g_r W,  g_W = g_r^T a,  g_b = sum g_r
    [mu | s] = head(a_n); lv = clamp(s)        ... through each layer, times act'(...)
    z = exp(lv/2) * eps + mu                  g_mu = g_z + beta mu / B
    a'_0 = [z | y] ... decoder ... r          g_lv = g_z eps exp(lv/2)/2 + beta (exp(lv) - 1)/(2B)
    loss = mean recon(x, r) + beta mean KL    g_s  = g_lv where s is inside the clamp, else 0

Bernoulli: recon = sum softplus(r) - x r, g_r = sigmoid(r) - x.
Gaussian:  m = sigmoid(r), recon = |x - m|^2 / (2 std^2) + const, g_r = (m - x) m (1 - m) / std^2.

It computes the same function as `objectives.elbo_loss` with the same random draws (one
`torch.randn` of the posterior's shape), so runs are interchangeable with the autograd step;
tests/test_fused.py checks the loss and every gradient against autograd. Gradients are written
into the same `.grad` buffers every step (no allocation), and the activations' derivatives use
ATen's fused backward kernels (`threshold_backward`, `tanh_backward`).

Measured on the MNIST recipe (benchmarks/train_speed.py): about 15% less time per step than
autograd on 2 CPU cores. `supports(...)` says whether a set-up fits (mlp encoder and decoder,
relu/tanh/elu, bernoulli or a fixed-std gaussian, objective elbo, float32, one process, N(0, I)
prior, diagonal posterior, one stochastic layer, no free bits); otherwise training uses autograd
(`--step auto`, the default, decides; `--step autograd` forces it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import FUSED_ACTIVATIONS, RunConfig, fused_step_fits
from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, Gaussian
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.posterior import LOG_VAR_MAX, LOG_VAR_MIN, DiagonalHead
from vaelab.models.priors import StandardNormal
from vaelab.objectives import LossParts

# activation name -> (forward in place, backward: (d loss / d output, output) -> d loss / d input).
# The keys are config.FUSED_ACTIVATIONS (GELU's derivative needs its input: it stays with autograd).
ACTIVATION_GRADS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                  Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "relu": (torch.relu_, lambda g, out: torch.ops.aten.threshold_backward(g, out, 0)),
    "tanh": (torch.tanh_, lambda g, out: torch.ops.aten.tanh_backward(g, out)),
    # ELU (alpha 1): out = x for x > 0, exp(x) - 1 otherwise; derivative 1 or out + 1.
    "elu": (lambda t: F.elu_(t), lambda g, out: torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, True, out)),
}
assert set(ACTIVATION_GRADS) == set(FUSED_ACTIVATIONS)


def supports(model: nn.Module, cfg: RunConfig, world_size: int) -> bool:
    """Whether `FusedELBOStep` can train this model (else the autograd step is used): the config
    fits (`config.fused_step_fits`) and the model is what the step differentiates."""
    return (fused_step_fits(cfg, world_size)
            and isinstance(getattr(model, "encoder", None), MLPEncoder)
            and isinstance(getattr(model, "decoder", None), MLPDecoder)
            and isinstance(getattr(model, "posterior_head", None), DiagonalHead)
            and isinstance(getattr(model, "prior", None), StandardNormal)
            and len(getattr(model, "layer_sizes", (model.latent_dim,))) == 1
            # exactly these two classes: not a learned or sigma-VAE std (subclasses of Gaussian)
            # nor any other likelihood
            and type(model.likelihood) in (Bernoulli, Gaussian))


def make_fused_step(model: nn.Module, cfg: RunConfig, world_size: int) -> Optional[FusedELBOStep]:
    """The fused step for this run, or None where autograd trains it (see `TrainConfig.step`)."""
    if cfg.train.step == "autograd":
        return None
    if supports(model, cfg, world_size):
        return FusedELBOStep(model, cfg.model.activation)
    if cfg.train.step == "fused":
        raise ConfigError("--step fused trains an mlp model on the elbo objective in float32 in one process; "
                          "use --step auto or autograd here")
    return None


def _layers(body: nn.Sequential, head: nn.Linear) -> list[nn.Linear]:
    return [m for m in body if isinstance(m, nn.Linear)] + [head]


def _into(param: nn.Parameter, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The parameter's existing `.grad` to overwrite, if it can hold a gradient like `like`."""
    g = param.grad
    return g if g is not None and g.shape == like.shape and g.dtype == like.dtype and g.is_contiguous() else None


class FusedELBOStep:
    """Callable (x (B, C, H, W), y labels or None, beta, global_batch) -> LossParts.

    Leaves d(loss)/d(parameter) in every parameter's `.grad` (overwriting what was there), so the
    caller goes straight on to `optimizer.step()`. The parts are detached batch means, as in
    `objectives.elbo_loss`.
    """

    def __init__(self, model: nn.Module, activation: str) -> None:
        self.model = model
        self.act, self.act_backward = ACTIVATION_GRADS[activation]
        self.enc = _layers(model.encoder.body, model.encoder.head)
        self.dec = _layers(model.decoder.body, model.decoder.head)
        self.latent = model.latent_dim

    # ---- one MLP, forward and backward --------------------------------------------------------
    def _forward_mlp(self, a: torch.Tensor, layers: list[nn.Linear]) -> list[torch.Tensor]:
        """[a_0, a_1, ..., a_n, out]: the input to every layer, then the head's output (B, out)."""
        acts = [a]
        for layer in layers[:-1]:
            acts.append(self.act(torch.addmm(layer.bias, acts[-1], layer.weight.t())))
        acts.append(torch.addmm(layers[-1].bias, acts[-1], layers[-1].weight.t()))
        return acts

    def _backward_mlp(self, g: torch.Tensor, acts: list[torch.Tensor], layers: list[nn.Linear],
                      need_input_grad: bool) -> Optional[torch.Tensor]:
        """g = d loss / d (head output) (B, out): fills the layers' grads; returns d loss / d a_0."""
        for i in range(len(layers) - 1, -1, -1):
            layer, a_in = layers[i], acts[i]
            # d/db = column sums of g (out,); d/dW = g^T a_in (out, in)
            layer.bias.grad = torch.sum(g, 0, out=_into(layer.bias, layer.bias))
            layer.weight.grad = torch.mm(g.t(), a_in, out=_into(layer.weight, layer.weight))
            if i == 0 and not need_input_grad:
                return None
            g = g @ layer.weight  # (B, in)
            if i > 0:
                g = self.act_backward(g, a_in)  # through the activation that produced a_in
        return g

    # ---- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, global_batch: int) -> LossParts:
        model, d = self.model, self.latent
        b = x.shape[0]
        cond = model._cond(y, b)  # (B, classes) one-hot, or None
        x_flat = x.flatten(1)  # (B, P)
        enc_in = x_flat if cond is None else torch.cat([x_flat, cond], 1)

        # Encoder -> q(z|x) = N(mu, exp(lv)); one reparameterised draw z (B, D).
        enc_acts = self._forward_mlp(enc_in, self.enc)
        stats = enc_acts[-1]  # (B, 2D) = [mu | s]
        mu, s = stats[:, :d], stats[:, d:]
        lv = s.clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        std = torch.exp(0.5 * lv)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype)  # as DiagonalGaussian.sample
        z = std * eps + mu

        # Decoder -> raw output r (B, P); summed recon and d recon / d r.
        dec_in = z if cond is None else torch.cat([z, cond], 1)
        dec_acts = self._forward_mlp(dec_in, self.dec)
        recon_sum, g_r = self._likelihood(x_flat, dec_acts[-1])
        var = torch.exp(lv)  # (B, D)
        kl_sum = 0.5 * (mu.square() + var - lv).sum() - 0.5 * mu.numel()
        recon, kl = recon_sum / b, kl_sum / b

        # Backward: decoder, reparameterisation + KL, encoder (batch mean: every g carries 1/B).
        g_dec_in = self._backward_mlp(g_r.mul_(1.0 / b), dec_acts, self.dec, need_input_grad=True)
        g_z = g_dec_in[:, :d]
        kb = beta / b
        g_mu = torch.add(g_z, mu, alpha=kb)  # dz/dmu = 1; dKL/dmu = mu
        # dz/dlv = eps std / 2; dKL/dlv = (exp(lv) - 1) / 2; the clamp passes gradient only inside.
        g_lv = (g_z * eps * std + kb * (var - 1.0)).mul_(0.5 * (lv == s))
        self._backward_mlp(torch.cat([g_mu, g_lv], 1), enc_acts, self.enc, need_input_grad=False)
        return LossParts(recon + beta * kl, recon, kl)

    def _likelihood(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, r (B, P) -> (sum over the batch of -log p(x|r), its derivative by r (B, P))."""
        lik = self.model.likelihood
        if lik.name == "bernoulli":
            # -log p = softplus(r) - x r; its derivative is sigmoid(r) - x.
            recon = F.softplus(r).sum() - torch.dot(x.reshape(-1), r.reshape(-1))
            return recon, torch.sigmoid(r).sub_(x)
        # Gaussian, mean m = sigmoid(r): -log p = |x - m|^2 / (2 std^2) + const;
        # derivative (m - x) m (1 - m) / std^2.
        m = torch.sigmoid(r)
        diff = m - x
        inv_var = 1.0 / lik.std**2
        recon = 0.5 * inv_var * torch.dot(diff.reshape(-1), diff.reshape(-1)) + r.numel() * lik.log_norm
        return recon, torch.ops.aten.sigmoid_backward(diff, m).mul_(inv_var)

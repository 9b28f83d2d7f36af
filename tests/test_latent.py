"""Latent-space operations: closed-form checks of the walks, traversals and edits, and behaviour
checks on small VAEs trained here on scikit-learn's 8×8 digits (edits move a classifier toward
the target class; conditional samples are classified as their label)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from vaelab import latent
from vaelab.config import DataConfig, ModelConfig
from vaelab.data import load_data
from vaelab.data.batches import iterate_batches, to_float
from vaelab.errors import ConfigError, DataError
from vaelab.models import VAE
from vaelab.objectives import elbo_loss


def tiny_model(latent_dim: int = 4, conditional: bool = False, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(latent_dim=latent_dim, hidden=[32], image_shape=[1, 8, 8], num_classes=10,
                      conditional=conditional, gaussian_std=0.3)
    return VAE(cfg).eval()


def train_on_digits(data, conditional: bool, latent_dim: int, epochs: int) -> VAE:
    """A few seconds of Adam on the digits' training split (no run folder, no figures)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=latent_dim, hidden=[128, 64], gaussian_std=0.15, conditional=conditional,
                      image_shape=[1, 8, 8], num_classes=10)
    model = VAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for x, y in iterate_batches(data.train, 64, shuffle=True, generator=gen):
            loss = elbo_loss(model, x, y if conditional else None, beta=1.0).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(old)
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"))


@pytest.fixture(scope="module")
def classifier(digits):
    """Logistic regression on raw pixels: an independent judge of what a decoded image shows."""
    x = to_float(digits.train.images).flatten(1).numpy()
    return LogisticRegression(max_iter=500).fit(x, digits.train.labels.numpy())


# ---- walks ----------------------------------------------------------------------------------------


def test_lerp_is_the_straight_line():
    z_a, z_b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, -0.5])
    walk = latent.interpolate_codes(z_a, z_b, 5, "lerp")
    assert torch.allclose(walk[0], z_a) and torch.allclose(walk[-1], z_b)
    assert torch.allclose(walk[2], (z_a + z_b) / 2)
    steps = walk[1:] - walk[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps))  # constant velocity


@pytest.mark.parametrize("dim", [2, 3, 16, 64])
def test_slerp_keeps_norms_between_the_endpoints(dim):
    gen = torch.Generator().manual_seed(dim)
    for trial in range(50):
        z_a = torch.randn(dim, generator=gen) * (0.1 + 3 * torch.rand(1, generator=gen))
        z_b = torch.randn(dim, generator=gen) * (0.1 + 3 * torch.rand(1, generator=gen))
        if trial % 5 == 0:  # nearly opposite directions: plain slerp of raw vectors overshoots here
            z_b = -z_a * 2.5 + 1e-2 * torch.randn(dim, generator=gen)
        walk = latent.interpolate_codes(z_a, z_b, 21, "slerp")
        norms = walk.norm(dim=1)
        lo, hi = min(z_a.norm(), z_b.norm()), max(z_a.norm(), z_b.norm())
        assert torch.allclose(walk[0], z_a, atol=1e-5) and torch.allclose(walk[-1], z_b, atol=1e-5)
        assert (norms >= lo - 1e-4).all() and (norms <= hi + 1e-4).all()


def test_slerp_walks_the_great_circle_at_constant_speed():
    # Independent reference: the angle to the start direction grows linearly, t * omega, and every
    # point stays in the plane spanned by the two endpoints.
    gen = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(10, generator=gen), 2 * torch.randn(10, generator=gen)
    u_a, u_b = z_a / z_a.norm(), z_b / z_b.norm()
    omega = torch.arccos(u_a @ u_b)
    walk = latent.slerp(z_a, z_b, torch.linspace(0, 1, 11))
    angles = torch.arccos(((walk / walk.norm(dim=1, keepdim=True)) @ u_a).clamp(-1, 1))
    assert torch.allclose(angles, torch.linspace(0, 1, 11) * omega, atol=1e-4)
    basis = torch.linalg.qr(torch.stack([u_a, u_b], 1)).Q  # (10, 2)
    assert torch.allclose(walk @ basis @ basis.T, walk, atol=1e-4)
    # Equal norms: the radius is constant, i.e. textbook slerp (Shoemake 1985).
    z_c = u_b * z_a.norm()
    walk = latent.slerp(z_a, z_c, torch.linspace(0, 1, 7))
    assert torch.allclose(walk.norm(dim=1), z_a.norm().expand(7), atol=1e-5)


def test_slerp_degenerate_cases_stay_finite():
    z = torch.tensor([1.0, 2.0, 3.0])
    same = latent.slerp(z, 2 * z, torch.linspace(0, 1, 5))
    assert torch.allclose(same, latent.lerp(z, 2 * z, torch.linspace(0, 1, 5)), atol=1e-5)
    opposite = latent.slerp(z, -z, torch.linspace(0, 1, 5))
    assert torch.isfinite(opposite).all()
    assert torch.allclose(opposite.norm(dim=1), z.norm().expand(5), atol=1e-5)
    assert torch.isfinite(latent.slerp(torch.zeros(3), z, torch.linspace(0, 1, 3))).all()
    with pytest.raises(ConfigError):
        latent.interpolate_codes(z, z, 5, "cubic")


@pytest.mark.parametrize("mode", ["lerp", "slerp"])
@pytest.mark.parametrize("conditional", [False, True])
def test_interpolation_endpoints_decode_to_the_endpoint_reconstructions(mode, conditional):
    model = tiny_model(conditional=conditional)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y_a, y_b = (3, 8) if conditional else (None, None)
    table = latent.interpolate_images(model, x[0], x[1], steps=6, mode=mode, y_a=y_a, y_b=y_b)
    assert table.images.shape == (8, 1, 8, 8) and table.nrow == 8
    assert torch.equal(table.images[0], x[0]) and torch.equal(table.images[-1], x[1])
    rec_a = model.reconstruct(x[:1], None if y_a is None else torch.tensor([y_a]))[0]
    rec_b = model.reconstruct(x[1:], None if y_b is None else torch.tensor([y_b]))[0]
    assert torch.allclose(table.images[1], rec_a, atol=1e-6)
    assert torch.allclose(table.images[-2], rec_b, atol=1e-6)
    assert not torch.allclose(table.images[1], table.images[-2], atol=1e-3)


# ---- traversals and manifolds ----------------------------------------------------------------------


def test_traversal_rows_change_only_the_chosen_dimension():
    model = tiny_model(latent_dim=6)
    base = torch.randn(6, generator=torch.Generator().manual_seed(0))
    dims = [4, 0, 2]
    table = latent.traverse_images(model, dims, base, span=(-2.0, 3.0), steps=5)
    codes = table.codes.reshape(3, 5, 6)
    offsets = torch.linspace(-2, 3, 5)
    for row, d in enumerate(dims):
        changed = (codes[row] != base).any(0)  # (D,) which dims differ anywhere in the row
        assert changed.nonzero().flatten().tolist() == [d]
        assert torch.allclose(codes[row, :, d], base[d] + offsets)
    assert torch.allclose(table.images, model.decode_images(table.codes), atol=1e-6)
    assert table.row_labels[0].startswith("z[4]")


def test_dimensions_ranked_by_average_kl_against_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(200, 5, generator=gen) * torch.tensor([0.1, 2.0, 0.5, 1.0, 0.0])
    log_var = torch.randn(200, 5, generator=gen) * 0.3 - torch.tensor([0.0, 2.0, 0.5, 1.0, 0.0])
    encoded = latent.EncodedSplit(mean, log_var, None)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    reference = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(encoded.kl_per_dim(), reference, atol=1e-5)
    assert latent.rank_dimensions(encoded) == reference.argsort(descending=True).tolist()


def test_manifold_grid_runs_through_gaussian_quantiles_other_dims_fixed():
    model = tiny_model(latent_dim=4)
    base = torch.tensor([0.5, -1.0, 2.0, 0.25])
    table = latent.manifold_images(model, (3, 1), steps=5, base=base)
    codes = table.codes.reshape(5, 5, 4)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5))
    assert torch.allclose(codes[0, :, 3], quantiles, atol=1e-5)  # across: z[3] ascending
    assert torch.allclose(codes[:, 0, 1], quantiles.flip(0), atol=1e-5)  # down: z[1] descending
    assert torch.equal(codes[..., 0], torch.full((5, 5), 0.5)) and torch.equal(codes[..., 2], torch.full((5, 5), 2.0))
    with pytest.raises(ConfigError):
        latent.manifold_images(model, (1, 1))
    with pytest.raises(ConfigError):
        latent.manifold_images(tiny_model(latent_dim=1), (0, 1))


# ---- edits -----------------------------------------------------------------------------------------


def test_attribute_vector_and_random_direction():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 4, generator=gen), torch.randn(20, 4, generator=gen) + 3
    direction = latent.attribute_vector(a, b)
    assert torch.allclose(direction, b.mean(0) - a.mean(0))
    rand = latent.random_direction(direction, gen)
    assert torch.isclose(rand.norm(), direction.norm()) and not torch.allclose(rand, direction)
    encoded = latent.EncodedSplit(torch.cat([a, b]), torch.zeros(50, 4), torch.tensor([0] * 30 + [1] * 20))
    assert torch.allclose(latent.class_mean(encoded, 1) - latent.class_mean(encoded, 0), direction, atol=1e-6)
    with pytest.raises(DataError):
        latent.class_mean(encoded, 7)


def test_edit_strength_zero_is_the_reconstruction_and_codes_move_linearly():
    model = tiny_model()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2))
    direction = torch.tensor([1.0, -1.0, 0.5, 0.0])
    table = latent.edit_images(model, x, direction, torch.tensor([0.0, 0.5, 1.0]))
    z = model.encode(x[None]).mean[0]
    assert torch.allclose(table.codes[1:], z + torch.tensor([0.0, 0.5, 1.0])[:, None] * direction, atol=1e-6)
    assert torch.allclose(table.images[1], model.reconstruct(x[None])[0], atol=1e-6)


def test_attribute_edit_moves_the_classifier_toward_the_target_more_than_a_random_direction(digits, classifier):
    model = train_on_digits(digits, conditional=False, latent_dim=8, epochs=15)
    train_codes = latent.encode_split(model, digits.train)
    means = torch.stack([latent.class_mean(train_codes, c) for c in range(10)])
    gen = torch.Generator().manual_seed(1)
    test = digits.test
    n = 150
    hits = {"edit": 0, "random": 0}
    for i in range(n):
        a = int(test.labels[i])
        b = (a + int(torch.randint(1, 10, (1,), generator=gen))) % 10
        direction = means[b] - means[a]
        x = to_float(test.images[i])
        for name, d in (("edit", direction), ("random", latent.random_direction(direction, gen))):
            edited = latent.edit_images(model, x, d, torch.tensor([1.0])).images[-1]
            hits[name] += int(classifier.predict(edited.flatten()[None].numpy())[0] == b)
    edit_rate, random_rate = hits["edit"] / n, hits["random"] / n
    assert edit_rate >= 0.4, (edit_rate, random_rate)
    assert edit_rate >= random_rate + 0.25, (edit_rate, random_rate)


# ---- conditional VAE --------------------------------------------------------------------------------


def test_conditional_samples_are_classified_as_their_label(digits, classifier):
    model = train_on_digits(digits, conditional=True, latent_dim=2, epochs=15)
    correct = 0
    for label in range(10):
        table = latent.sample_images(model, 30, label=label, seed=label)
        correct += int((classifier.predict(table.images.flatten(1).numpy()) == label).sum())
    accuracy = correct / 300
    assert accuracy >= 0.6, accuracy  # chance is 0.1
    # Keeping the code and switching the label changes what the classifier sees.
    x = to_float(digits.test.images[0])
    a = int(digits.test.labels[0])
    b = (a + 5) % 10
    table = latent.relabel_images(model, x, a, b, torch.tensor([0.0, 1.0]))
    z = model.encode(x[None], torch.tensor([a])).mean
    assert torch.allclose(table.images[1], model.decode_images(z, torch.tensor([a]))[0], atol=1e-6)
    assert torch.allclose(table.images[2], model.decode_images(z, torch.tensor([b]))[0], atol=1e-6)


def test_labels_on_a_plain_model_and_missing_labels_on_a_conditional_one_are_errors():
    with pytest.raises(ConfigError, match="not conditional"):
        latent.sample_images(tiny_model(), 4, label=3)
    with pytest.raises(ConfigError, match="conditional"):
        latent.reconstruct_images(tiny_model(conditional=True), torch.rand(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="conditional"):
        latent.relabel_images(tiny_model(), torch.rand(1, 8, 8), 1, 2, torch.tensor([1.0]))
    cond = tiny_model(conditional=True)
    table = latent.sample_images(cond, 20)  # no label: one class per column
    assert table.nrow == 10 and table.col_labels == [str(c) for c in range(10)]
    z = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(table.images, cond.decode_images(z, torch.arange(20) % 10), atol=1e-6)


def test_samples_are_prior_draws_scaled_by_the_temperature():
    model = tiny_model()
    table = latent.sample_images(model, 9, temperature=0.5, seed=4)
    expected = torch.randn(9, 4, generator=torch.Generator().manual_seed(4)) * 0.5
    assert torch.allclose(table.codes, expected)
    assert torch.allclose(table.images, model.decode_images(expected), atol=1e-6)
    assert table.nrow == 3
    with pytest.raises(ConfigError):
        latent.sample_images(model, 4, temperature=0.0)
    with pytest.raises(ConfigError, match="at most"):
        latent.sample_images(model, 10**7)
    with pytest.raises(ConfigError, match="finite"):
        latent.traverse_images(model, [0], span=(float("nan"), 3.0))


def test_user_image_files_are_converted_to_the_models_format(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, 15:] = (255, 255, 255)  # right half white
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    x = latent.load_image_files(tiny_model(), [tmp_path / "wide.png"])
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    assert x[0, 0, :, :3].max() < 0.05 and x[0, 0, :, -3:].min() > 0.95
    with pytest.raises(DataError, match="not found"):
        latent.load_image_files(tiny_model(), [tmp_path / "missing.png"])
    reconstructed = latent.reconstruct_images(tiny_model(), x)
    assert reconstructed.images.shape == (2, 1, 8, 8) and math.isclose(reconstructed.images[0].sum(), x.sum())

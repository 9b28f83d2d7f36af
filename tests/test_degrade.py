"""Synthetic degradations (vaelab/data/degrade.py) against references: the noise's measured std,
the blur against scipy.ndimage.gaussian_filter, downsampling + bicubic on constant images (a closed
form) and against PIL-independent shape rules, JPEG error falling as the quality rises, and the
degradation drawn afresh per batch from the generator it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.config import DegradeConfig
from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches
from vaelab.data.degrade import (
    Degradation,
    downsample_upsample,
    gaussian_blur,
    jpeg_round_trip,
    low_resolution_size,
    parse_degrade,
)
from vaelab.errors import ConfigError


def test_noise_has_the_requested_std_and_is_fresh_each_draw():
    grey = torch.full((64, 1, 32, 32), 0.5)  # mid-grey: clipping to [0, 1] never bites at std 0.1
    degrade = Degradation(DegradeConfig(noise=0.1))
    gen = torch.Generator().manual_seed(0)
    a, b = degrade(grey, gen), degrade(grey, gen)
    noise = a - grey
    assert abs(float(noise.std()) - 0.1) < 0.002 and abs(float(noise.mean())) < 0.002
    assert not torch.equal(a, b)  # a second use of the same image gets new noise
    again = degrade(grey, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)  # ... and the same seed gives the same noise


def test_noise_is_clipped_to_the_pixel_range():
    black = torch.zeros(8, 1, 16, 16)
    out = Degradation(DegradeConfig(noise=0.3))(black, torch.Generator().manual_seed(1))
    assert out.min() >= 0 and out.max() <= 1 and (out > 0).float().mean() > 0.4


@pytest.mark.parametrize("sigma", [0.6, 1.5, 2.0])
def test_blur_matches_scipy_gaussian_filter(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    image = torch.rand(2, 3, 29, 31, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = gaussian_blur(image, sigma)
    ref = ndimage.gaussian_filter(image.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)


def test_blur_keeps_constant_images_and_the_mean_of_periodic_ones():
    constant = torch.full((1, 1, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 1.5), constant)
    tiny = torch.rand(1, 1, 3, 3)  # a kernel wider than the image is cut, not an error
    assert gaussian_blur(tiny, 5.0).shape == tiny.shape


@pytest.mark.parametrize("size, factor", [((28, 28), 2), ((32, 30), 2), ((28, 28), 3), ((13, 17), 1.5)])
def test_downsample_then_bicubic_keeps_shape_and_constants(size, factor):
    value = 0.37
    x = torch.full((2, 1, *size), value)
    out = downsample_upsample(x, factor)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)  # bicubic weights sum to 1: a constant stays constant
    assert low_resolution_size(*size, factor) == (round(size[0] / factor), round(size[1] / factor))


def test_downsampling_loses_detail_that_bicubic_cannot_bring_back():
    checker = ((torch.arange(28)[:, None] + torch.arange(28)[None]) % 2).float()[None, None]  # finest detail
    out = downsample_upsample(checker, 2)
    # A 2x antialiased downsampling averages each 2x2 checker cell to grey: the detail is gone.
    assert float((out - 0.5).abs().max()) < 0.05
    smooth = torch.linspace(0, 1, 28)[None, None, None].expand(1, 1, 28, 28)
    assert float((downsample_upsample(smooth, 2) - smooth).abs().mean()) < 0.01  # a ramp survives


def test_jpeg_error_falls_as_quality_rises():
    gen = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0, 1, 32)
    image = (0.5 * ramp[None, :] + 0.3 * ramp[:, None] + 0.2 * torch.rand(32, 32, generator=gen)).clamp(0, 1)
    for channels in (1, 3):
        x = image.expand(1, channels, 32, 32).clone()
        if channels == 3:
            x[:, 1] = 1 - x[:, 1]
        errors = [float((jpeg_round_trip(x, q) - x).square().mean()) for q in (10, 30, 50, 70, 90)]
        assert all(a > b for a, b in zip(errors, errors[1:])), errors
        assert jpeg_round_trip(x, 50).shape == x.shape


def test_steps_apply_in_order_and_describe_themselves():
    cfg = DegradeConfig(noise=0.05, blur=1.0, downsample=2, jpeg=40)
    degrade = Degradation(cfg)
    assert degrade.kinds == ["blur", "downsample", "noise", "jpeg"]
    assert "JPEG quality 40" in degrade.describe()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    out = degrade(x, torch.Generator().manual_seed(5))
    # The same steps by hand, with the same noise draw.
    by_hand = downsample_upsample(gaussian_blur(x, 1.0), 2)
    by_hand = (by_hand + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    torch.testing.assert_close(out, jpeg_round_trip(by_hand, 40))


@pytest.mark.parametrize("text, message", [
    ("noise", "name=value"), ("sharpen=2", "name=value"), ("noise=lots", "must be a number"),
    ("jpeg=3.5", "must be a whole number"), ("", "at least one"), ("noise=nan", "finite"),
])
def test_parse_degrade_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_degrade(text)


def test_parse_degrade_and_config_validation():
    assert parse_degrade("noise=0.1, blur=1.5,downsample=2,jpeg=30") == {"noise": 0.1, "blur": 1.5,
                                                                         "downsample": 2.0, "jpeg": 30}
    assert DegradeConfig(noise=0.1).problems() == []
    assert "changes nothing" in DegradeConfig().problems()[0]
    assert any("jpeg" in p for p in DegradeConfig(jpeg=101).problems())
    assert any("downsample" in p for p in DegradeConfig(downsample=0.5).problems())


def test_batches_of_a_degraded_split_draw_from_the_generator():
    """The inputs come from the generator the loop passes (the checkpointed data generator): the
    same generator state gives the same inputs, a later batch of the same images new ones."""
    images = (torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 255).to(torch.uint8)
    split = Split(images, None, degrade=Degradation(DegradeConfig(noise=0.2)))
    gen = torch.Generator().manual_seed(7)
    first = list(iterate_batches(split, 8, shuffle=False, generator=gen))
    state = gen.get_state()
    second = list(iterate_batches(split, 8, shuffle=False, generator=gen))
    assert [x.shape[0] for x, _ in first] == [8, 8, 4]
    for (x, y), (x2, y2) in zip(first, second):
        assert torch.equal(x, x2) and not torch.equal(y, y2)
    gen.set_state(state)
    replay = list(iterate_batches(split, 8, shuffle=False, generator=gen))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(second, replay))
    # Resuming at batch 1 from the state after batch 0 continues the same stream.
    gen = torch.Generator().manual_seed(7)
    head = next(iterate_batches(split, 8, shuffle=False, generator=gen))
    rest = list(iterate_batches(split, 8, shuffle=False, generator=gen, start=1))
    assert torch.equal(head[1], first[0][1]) and all(torch.equal(a[1], b[1]) for a, b in zip(rest, first[1:]))


def test_sharded_batches_see_the_single_process_draws():
    images = (torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(8)) * 255).to(torch.uint8)
    split = Split(images, None, degrade=Degradation(DegradeConfig(noise=0.1)))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(9))
    whole = list(iterate_batches(split, 6, shuffle=True, order=order, generator=torch.Generator().manual_seed(1)))
    parts = [list(iterate_batches(split, 6, shuffle=True, order=order, generator=torch.Generator().manual_seed(1),
                                  shard=(rank, 2))) for rank in (0, 1)]
    for b, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
        torch.testing.assert_close(torch.cat([parts[0][b][0], parts[1][b][0]]), x)

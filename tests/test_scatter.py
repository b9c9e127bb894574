"""Subsurface scattering in the photometric model: render.blur_at_pixels, and the photo decoded from sRGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsider.io import srgb_decode, srgb_encode
from fastsider.render import blur_at_pixels


def grid_pixels(w: int, h: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(float(w)), torch.arange(float(h)), indexing="xy"), -1).reshape(-1, 2)


def test_blur_keeps_a_constant_to_the_border_and_spreads_an_impulse_by_sigma():
    pix = grid_pixels(20, 15)
    torch.testing.assert_close(blur_at_pixels(torch.ones(len(pix), 3), pix, 2.0), torch.ones(len(pix), 3))
    v = torch.zeros(len(pix), 1)
    v[(pix[:, 0] == 10) & (pix[:, 1] == 7)] = 1.0
    row = blur_at_pixels(v, pix, 1.5)[:, 0].reshape(15, 20)[7]
    x = torch.arange(20.0) - 10
    assert (row * x**2).sum() / row.sum() == pytest.approx(1.5**2, rel=0.02)  # the second moment is sigma^2
    assert torch.equal(blur_at_pixels(v, pix, 0.0), v)


def test_blur_of_scattered_pixels_and_its_gradient():
    """Pixels of an irregular face region in any order: the blur is a linear map, its backward is its
    transpose (gradcheck in float64)."""
    g = torch.Generator().manual_seed(0)
    pix = grid_pixels(9, 7)[torch.randperm(63, generator=g)[:40]].double()
    values = torch.rand(40, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: blur_at_pixels(v, pix, 1.2), (values,))


def test_srgb_round_trip_and_the_curve_s_known_points():
    x = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(srgb_encode(srgb_decode(x)), x, atol=1e-12)
    assert float(srgb_decode(np.array(0.5))) == pytest.approx(0.214, abs=1e-3)  # mid grey is ~21% of the light
    assert float(srgb_encode(np.array(0.0031308))) == pytest.approx(0.04045, abs=1e-5)  # the curve's knee


def test_blur_per_channel_is_each_channel_blurred_alone():
    g = torch.Generator().manual_seed(1)
    pix = grid_pixels(12, 10)
    values = torch.rand(len(pix), 3, generator=g)
    each = blur_at_pixels(values, pix, (1.5, 0.0, 0.7))
    for k, s in enumerate((1.5, 0.0, 0.7)):
        torch.testing.assert_close(each[:, k:k + 1], blur_at_pixels(values[:, k:k + 1], pix, s))
    torch.testing.assert_close(blur_at_pixels(values, pix, (0.9,)), blur_at_pixels(values, pix, 0.9))

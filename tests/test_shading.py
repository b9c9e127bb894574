"""Shading (fastsider.nn.shading): the albedo x SH2 light, the directional light with a sheen by hand,
recovered from a lit sphere, and its warm-up handing the colour to the albedo."""

from __future__ import annotations

import math

import torch

from fastsider.config import ModelConfig
from fastsider.model import build_model


def test_albedo_sh_shading_is_lambertian_in_the_normal():
    """rgb = albedo(x) * (c0 + c3 n_z): doubling the lit term's share changes colour as the formula says."""
    cfg = ModelConfig(sdf="mlp", detail="mlp", shading="albedo_sh", albedo="mlp")
    net = build_model(cfg, torch.device("cpu")).appearance
    with torch.no_grad():
        net.light.sh.zero_()
        net.light.sh[:, 0] = 0.3
        net.light.sh[:, 3] = -0.6    # light from the camera: -z normals are lit
    x = torch.rand(5, 3)
    n = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    rgb = net(x, n, n, torch.zeros(5, 16))
    albedo = net(x, torch.tensor([[0.0, 0.0, -1.0]]).expand(5, 3), n, torch.zeros(5, 16)) / 0.9
    expected = albedo * (0.3 - 0.6 * n[:, 2:3]).clamp_min(0)
    assert torch.allclose(rgb, expected, atol=1e-6)


def _lit_sphere(n_points: int = 3000, seed: int = 0):
    """Normals of a sphere's camera-facing half and its render under one light with a sheen
    (orthographic camera along +z), the synthetic benchmark's reflectance."""
    from fastsider.nn.shading import DirectionalShading

    g = torch.Generator().manual_seed(seed)
    n = torch.nn.functional.normalize(torch.randn(n_points, 3, generator=g), dim=-1)
    n = torch.where(n[:, 2:3] > 0, -n, n)                      # towards the camera
    view = torch.tensor([[0.0, 0.0, 1.0]]).expand_as(n)
    truth = DirectionalShading()
    with torch.no_grad():
        truth.light.copy_(torch.tensor([-0.35, -0.55, -0.75]))
        truth.ambient.copy_(torch.tensor([0.3, 0.28, 0.25]))
        truth.diffuse.copy_(torch.tensor([0.7, 0.66, 0.6]))
        truth.specular.fill_(0.05)
        truth.log_shininess.fill_(math.log(30.0))
    albedo = torch.tensor([[0.8, 0.6, 0.5]]).expand_as(n)
    with torch.no_grad():
        rgb = truth(albedo, n, view)
    return n, view, albedo, rgb, truth


def test_directional_shading_is_ambient_plus_lambert_plus_a_white_sheen():
    """Per point, by hand: a lit normal gets all three terms, a normal facing away ambient only."""
    from fastsider.nn.shading import DirectionalShading

    shade = DirectionalShading()
    with torch.no_grad():
        shade.light.copy_(torch.tensor([0.0, 0.0, -2.0]))      # unnormalized on purpose
        shade.ambient.fill_(0.2)
        shade.diffuse.fill_(0.6)
        shade.specular.fill_(0.1)
        shade.log_shininess.fill_(math.log(10.0))
    view = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    s = math.sqrt(0.5)
    n = torch.tensor([[0.0, 0.0, -1.0], [s, 0.0, -s], [0.0, 0.0, 1.0]])
    albedo = torch.tensor([[0.5, 0.4, 0.3]] * 3)
    rgb = shade(albedo, n, view)
    # half vector = -z; n.h = n.l for this light
    expected = torch.stack([albedo[0] * (0.2 + 0.6) + 0.1,
                            albedo[1] * (0.2 + 0.6 * s) + 0.1 * s**10,
                            albedo[2] * 0.2])
    assert torch.allclose(rgb, expected, atol=1e-6)


def test_directional_light_is_recovered_from_a_lit_sphere():
    """From the camera-facing start, Adam finds the light's direction (< 1 deg), its ambient and
    diffuse parts and the sheen; the best SH2 light cannot make this render (its residual is the
    clamped cosine's terminator and the highlight), which is why the fast preset uses this model."""
    from fastsider.nn.shading import DirectionalShading, sh_basis

    n, view, albedo, rgb, truth = _lit_sphere()
    fit = DirectionalShading()
    opt = torch.optim.Adam(fit.parameters(), lr=0.01)
    for _ in range(1500):
        loss = (fit(albedo, n, view) - rgb).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    angle = torch.rad2deg(torch.arccos((fit.light_direction() @ truth.light_direction()).clamp(-1, 1)))
    assert angle < 1.0
    assert torch.allclose(fit.ambient, truth.ambient, atol=0.02)
    assert torch.allclose(fit.diffuse, truth.diffuse, atol=0.02)
    assert abs(fit.specular.item() - 0.05) < 0.01
    with torch.no_grad():
        directional_rms = (fit(albedo, n, view) - rgb).pow(2).mean().sqrt()
    # SH2 is linear in its coefficients: the least-squares fit of rgb / albedo is its best
    coef = torch.linalg.lstsq(sh_basis(n), rgb / albedo).solution
    sh_rms = (albedo * (sh_basis(n) @ coef) - rgb).pow(2).mean().sqrt()
    assert directional_rms < 2e-3 and sh_rms > 5 * directional_rms


def test_light_warm_up_fits_the_lamp_then_hands_the_colour_to_the_albedo():
    """warm_up fits with one white albedo, then divides ambient and diffuse by the albedo the
    stage starts from: rendered with that albedo, the light reproduces the photo."""
    from fastsider.nn.shading import DirectionalShading

    n, view, albedo, rgb, truth = _lit_sphere()
    fit = DirectionalShading()
    error = fit.warm_up(n, view, rgb, albedo[0], steps=1500)
    angle = torch.rad2deg(torch.arccos((fit.light_direction() @ truth.light_direction()).clamp(-1, 1)))
    assert angle < 1.0 and error < 5e-3  # Adam's steps at lr 0.02 leave ~3e-3 of jitter
    with torch.no_grad():
        assert (fit(albedo, n, view) - rgb).abs().max() < 1e-2
        assert torch.allclose(fit.ambient, truth.ambient, atol=0.02)

"""Networks: encoding, geometric init, the two normal modes, backend selection."""

from __future__ import annotations

import math

import pytest
import torch

from fastsider.config import EncodingConfig, GeometryMLPConfig, ModelConfig, NetworkConfig
from fastsider.errors import FastsiderError
from fastsider.nn._tcnn import check_tcnn_config
from fastsider.nn.encoding import FrequencyEncoding
from fastsider.model import build_model
from fastsider.nn.fields import GeometryMLP, sdf_with_gradient
from fastsider.nn.mlp import resolve_backend


def test_frequency_encoding_values():
    enc = FrequencyEncoding(1, EncodingConfig(n_frequencies=2))
    x = torch.tensor([[0.25]])
    expected = [0.25, math.sin(math.pi * 0.25), math.cos(math.pi * 0.25),
                math.sin(2 * math.pi * 0.25), math.cos(2 * math.pi * 0.25)]
    torch.testing.assert_close(enc(x), torch.tensor([expected]))
    assert enc.n_output_dims == 5


def test_geometric_init_is_a_sphere():
    cfg = GeometryMLPConfig(network=NetworkConfig(n_neurons=256, n_hidden_layers=4, skip_layers=(2,),
                                                  geometric_init=True, softplus_beta=100.0),
                            init_sphere_radius=0.5)
    net = GeometryMLP(cfg, "torch")
    x = torch.randn(2000, 3)
    r = torch.rand(2000, 1) * 0.9
    x = x / x.norm(dim=1, keepdim=True) * r
    sdf = net(x)[0].detach()
    # IDR init approximates |x| - 0.5 (to ~0.1 at width 256): inside/outside and radial slope hold
    assert (sdf[r[:, 0] < 0.3] < 0).all() and (sdf[r[:, 0] > 0.7] > 0).all()
    slope = torch.linalg.lstsq(torch.cat([r, torch.ones_like(r)], 1), sdf[:, None]).solution[0, 0]
    assert 0.7 < slope < 1.3, slope


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_finite_difference_normals_match_autograd(device):
    torch.manual_seed(0)
    net = GeometryMLP(GeometryMLPConfig(), "torch").to(device).double()
    x = (torch.rand(64, 3, dtype=torch.float64, device=device) * 2 - 1) * 0.8
    exact = sdf_with_gradient(net, x, "autograd", 1e-6, create_graph=False).gradient
    fd = sdf_with_gradient(net, x, "finite_difference", 1e-6, create_graph=False).gradient
    # float64 central differences, h = 1e-6: truncation ~h^2 * third derivative (softplus
    # beta 100 makes it ~1e4) ~ 1e-8, rounding ~eps/h ~ 1e-10; 1e-6 leaves a wide margin
    torch.testing.assert_close(fd, exact, atol=1e-6, rtol=1e-5)


def test_finite_difference_gradient_trains_without_double_backward():
    """The FD eikonal path must backpropagate with a single backward (what tcnn allows)."""
    net = GeometryMLP(GeometryMLPConfig(), "torch")
    x = torch.rand(32, 3) * 2 - 1
    s = sdf_with_gradient(net, x, "finite_difference", 1e-3, create_graph=True)
    loss = ((s.gradient.norm(dim=1) - 1) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_backend_selection():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(FastsiderError, match="tcnn"):
        resolve_backend("tcnn", torch.device("cpu"))


def test_tcnn_refuses_torch_only_options():
    with pytest.raises(FastsiderError, match="skip_layers"):
        check_tcnn_config(NetworkConfig(skip_layers=(4,)))
    with pytest.raises(FastsiderError, match="n_neurons"):
        check_tcnn_config(NetworkConfig(n_neurons=512, softplus_beta=10.0))
    with pytest.raises(FastsiderError, match="beta of 10"):  # tcnn's Softplus: log(1 + exp(10 x)) / 10
        check_tcnn_config(NetworkConfig(n_neurons=64, softplus_beta=100.0))
    check_tcnn_config(NetworkConfig(n_neurons=64, softplus_beta=10.0))  # a config tcnn can run


PAPER_MODEL = ModelConfig(sdf="mlp", detail="mlp", shading="mlp")  # MLPs only: nothing needs the photo


def _paper_appearance(**switches):
    from dataclasses import replace

    cfg = replace(PAPER_MODEL, rendering_mlp=replace(PAPER_MODEL.rendering_mlp, **switches))
    return build_model(cfg, torch.device("cpu")).appearance


def test_rendering_ablation_switches_change_inputs():
    n_full = _paper_appearance(use_feature=True).mlp.net.layers[0].in_features
    no_feat = _paper_appearance(use_feature=False).mlp.net.layers[0].in_features
    assert no_feat == n_full - PAPER_MODEL.geometry_mlp.feature_dim

    # without x and v the colour is a function of the normal alone (one camera: v is the pixel)
    normal_only = _paper_appearance(use_position=False, use_view=False)
    n = torch.nn.functional.normalize(torch.randn(16, 3), dim=1)
    x1, x2, v1, v2, feat = torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 16)
    torch.testing.assert_close(normal_only(x1, n, v1, feat), normal_only(x2, n, v2, feat))
    assert not torch.allclose(normal_only(x1, n, v1, feat), normal_only(x1, n.flip(1), v1, feat))
    with_view = _paper_appearance(use_position=False)
    assert not torch.allclose(with_view(x1, n, v1, feat), with_view(x1, n, v2, feat))


def test_model_builds_only_what_the_config_uses():
    """The fast preset has no MLP at all; the paper's has both; a lattice residual starts at exactly 0."""
    from fastsider.camera import Camera, Normalization
    from fastsider.config import load_config

    cam = Camera(width=32, height=32, fx=128.0, fy=128.0, cx=15.5, cy=15.5)
    norm = Normalization(centre=torch.tensor([0.0, 0.0, 600.0]).numpy(), half_size=100.0)
    sphere = lambda p: (p**2).sum(-1) ** 0.5 - 0.5  # noqa: E731, unit-box SDF of a sphere
    colors = torch.full((10, 3), 0.5)
    fast = build_model(load_config("fast").model, torch.device("cpu"), sphere, cam, norm, colors)
    assert fast.geometry.mlp is None and fast.appearance.mlp is None and fast.backend == "none"
    assert fast.geometry.height is not None and fast.appearance.albedo_map is not None
    ref = build_model(load_config("reference").model, torch.device("cpu"))
    assert ref.geometry.base is None and ref.geometry.height is None and ref.appearance.light is None
    assert ref.geometry.mlp is not None and ref.appearance.mlp is not None

    residual = build_model(ModelConfig(detail="mlp", shading="mlp"), torch.device("cpu"), sphere)
    x = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(residual.sdf(x), residual.geometry.base(x), atol=0, rtol=0)
    assert residual.geometry.mlp_parameters()  # stage 2 trains it


def test_residual_gain_starts_the_residual_at_zero_and_learns():
    """tcnn's path: f = base + gain * mlp with gain 0 equals the base, and the gain gets a gradient."""
    from fastsider.nn.fields import Geometry, ResidualGain

    base = lambda p: p[:, 2]  # noqa: E731
    geo = Geometry(base, GeometryMLP(GeometryMLPConfig(), "torch"), None, ResidualGain())
    x = torch.rand(20, 3) * 2 - 1
    torch.testing.assert_close(geo.sdf(x), x[:, 2], atol=0, rtol=0)
    (geo.sdf(x) ** 2).sum().backward()
    assert geo.residual_gain.gain.grad.abs() > 0


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

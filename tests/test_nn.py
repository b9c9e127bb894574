"""Networks (fastsider.nn: encoding, MLPs and their backends, fields) and the model built from the
config (fastsider.model): encoding, geometric init, the two normal modes, backend selection, the
rendering MLP's inputs, only the parts a config uses, a residual that starts at zero."""

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

"""Networks: encoding, geometric init, the two normal modes, backend selection."""

from __future__ import annotations

import math

import pytest
import torch

from fastsider.config import EncodingConfig, GeometryNetConfig, ModelConfig, NetworkConfig
from fastsider.errors import FastsiderError
from fastsider.nn._tcnn import check_tcnn_config
from fastsider.nn.encoding import FrequencyEncoding
from fastsider.nn.fields import GeometryNet, SiderModel, sdf_with_gradient
from fastsider.nn.mlp import resolve_backend


def test_frequency_encoding_values():
    enc = FrequencyEncoding(1, EncodingConfig(n_frequencies=2))
    x = torch.tensor([[0.25]])
    expected = [0.25, math.sin(math.pi * 0.25), math.cos(math.pi * 0.25),
                math.sin(2 * math.pi * 0.25), math.cos(2 * math.pi * 0.25)]
    torch.testing.assert_close(enc(x), torch.tensor([expected]))
    assert enc.n_output_dims == 5


def test_geometric_init_is_a_sphere():
    cfg = GeometryNetConfig(network=NetworkConfig(n_neurons=256, n_hidden_layers=4, skip_layers=(2,),
                                                  geometric_init=True, softplus_beta=100.0),
                            init_sphere_radius=0.5)
    net = GeometryNet(cfg, "torch")
    x = torch.randn(2000, 3)
    r = torch.rand(2000, 1) * 0.9
    x = x / x.norm(dim=1, keepdim=True) * r
    sdf = net.sdf(x).detach()
    # IDR init approximates |x| - 0.5 (to ~0.1 at width 256): inside/outside and radial slope hold
    assert (sdf[r[:, 0] < 0.3] < 0).all() and (sdf[r[:, 0] > 0.7] > 0).all()
    slope = torch.linalg.lstsq(torch.cat([r, torch.ones_like(r)], 1), sdf[:, None]).solution[0, 0]
    assert 0.7 < slope < 1.3, slope


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_finite_difference_normals_match_autograd(device):
    torch.manual_seed(0)
    net = GeometryNet(GeometryNetConfig(), "torch").to(device).double()
    x = (torch.rand(64, 3, dtype=torch.float64, device=device) * 2 - 1) * 0.8
    exact = sdf_with_gradient(net, x, "autograd", 1e-6, create_graph=False).gradient
    fd = sdf_with_gradient(net, x, "finite_difference", 1e-6, create_graph=False).gradient
    # float64 central differences, h = 1e-6: truncation ~h^2 * third derivative (softplus
    # beta 100 makes it ~1e4) ~ 1e-8, rounding ~eps/h ~ 1e-10; 1e-6 leaves a wide margin
    torch.testing.assert_close(fd, exact, atol=1e-6, rtol=1e-5)


def test_finite_difference_gradient_trains_without_double_backward():
    """The FD eikonal path must backpropagate with a single backward (what tcnn allows)."""
    net = GeometryNet(GeometryNetConfig(), "torch")
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
        check_tcnn_config(NetworkConfig(n_neurons=512, softplus_beta=1.0))
    check_tcnn_config(NetworkConfig(n_neurons=64, softplus_beta=1.0))  # a config tcnn can run


def test_rendering_ablation_switches_change_inputs():
    from dataclasses import replace

    default = ModelConfig()  # the paper's MLP shading g(x, n, v, feature), where the switches apply
    cfg = replace(default, rendering=replace(default.rendering, shading="mlp", albedo_resolution=0))
    full = SiderModel(replace(cfg, rendering=replace(cfg.rendering, use_feature=True)), "torch")
    no_feat = SiderModel(replace(cfg, rendering=replace(cfg.rendering, use_feature=False)), "torch")
    n_full = full.rendering.mlp.layers[0].in_features
    assert no_feat.rendering.mlp.layers[0].in_features == n_full - cfg.geometry.feature_dim

    # without x and v the colour is a function of the normal alone (one camera: v is the pixel)
    normal_only = SiderModel(replace(cfg, rendering=replace(cfg.rendering, use_position=False, use_view=False)),
                             "torch").rendering
    n = torch.nn.functional.normalize(torch.randn(16, 3), dim=1)
    x1, x2, v1, v2, feat = torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 16)
    torch.testing.assert_close(normal_only(x1, n, v1, feat), normal_only(x2, n, v2, feat))
    assert not torch.allclose(normal_only(x1, n, v1, feat), normal_only(x1, n.flip(1), v1, feat))
    with_view = SiderModel(replace(cfg, rendering=replace(cfg.rendering, use_position=False)), "torch").rendering
    assert not torch.allclose(with_view(x1, n, v1, feat), with_view(x1, n, v2, feat))


def test_coarse_to_fine_encoding_weights():
    """alpha = F is the plain encoding; alpha = k passes frequencies below k only; half-way fades."""
    from fastsider.config import EncodingConfig
    from fastsider.nn.encoding import FrequencyEncoding

    enc = FrequencyEncoding(3, EncodingConfig(n_frequencies=4))
    x = torch.rand(7, 3) * 2 - 1
    full = enc(x)
    enc.set_active(2.0)
    two = enc(x).reshape(7, -1)
    per_freq = two[:, 3:].reshape(7, 4, 2, 3)
    assert torch.equal(two[:, :3], x)                               # raw x always passes
    assert torch.allclose(per_freq[:, :2], full[:, 3:].reshape(7, 4, 2, 3)[:, :2])
    assert per_freq[:, 2:].abs().max() == 0
    enc.set_active(2.5)                                             # w_2 = (1 - cos(pi/2)) / 2 = 0.5
    half = enc(x)[:, 3:].reshape(7, 4, 2, 3)
    assert torch.allclose(half[:, 2], 0.5 * full[:, 3:].reshape(7, 4, 2, 3)[:, 2])
    assert "active" in enc.state_dict()                             # checkpoints keep alpha


def test_albedo_sh_shading_is_lambertian_in_the_normal():
    """rgb = albedo(x) * (c0 + c3 n_z): doubling the lit term's share changes colour as the formula says."""
    from fastsider.config import ModelConfig, RenderingNetConfig
    from fastsider.nn.fields import SiderModel

    cfg = ModelConfig(rendering=RenderingNetConfig(shading="albedo_sh"))
    net = SiderModel(cfg, "torch").rendering
    with torch.no_grad():
        net.sh.zero_()
        net.sh[:, 0] = 0.3
        net.sh[:, 3] = -0.6          # light from the camera: -z normals are lit
    x = torch.rand(5, 3)
    n = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    rgb = net(x, n, n, torch.zeros(5, 16))
    albedo = net(x, torch.tensor([[0.0, 0.0, -1.0]]).expand(5, 3), n, torch.zeros(5, 16)) / 0.9
    expected = albedo * (0.3 - 0.6 * n[:, 2:3]).clamp_min(0)
    assert torch.allclose(rgb, expected, atol=1e-6)


def test_silenced_frequencies_do_not_change_the_sdf_when_faded_in():
    from fastsider.config import GeometryNetConfig, EncodingConfig
    from fastsider.nn.fields import GeometryNet

    net = GeometryNet(GeometryNetConfig(encoding=EncodingConfig(n_frequencies=8)), "torch")
    x = torch.rand(50, 3) * 2 - 1
    net.encoding.set_active(6)
    net.silence_frequencies(6)
    before = net.sdf(x)
    net.encoding.set_active(8)
    assert torch.allclose(net.sdf(x), before, atol=1e-6)

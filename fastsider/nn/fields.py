"""SIDER's two networks and the SDF gradient (normals), with autograd or finite differences.

Geometry net  f(phi(x)) -> (sdf, feature)        x in the normalized box [-1, 1]^3
Rendering net g(phi(x), n, phi(v), feature) -> rgb in [0, 1]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastsider.config import GeometryNetConfig, ModelConfig, RenderingNetConfig
from fastsider.nn.encoding import FrequencyEncoding
from fastsider.nn.mlp import make_mlp
from fastsider.nn.shading import DirectionalShading, SphericalHarmonicsShading


class GeometryNet(torch.nn.Module):
    """f(phi(x)) -> (sdf, feature); with a fixed base SDF attached, sdf = base(x) + MLP's output."""

    def __init__(self, cfg: GeometryNetConfig, backend: str):
        super().__init__()
        self.encoding = FrequencyEncoding(3, cfg.encoding)
        self.feature_dim = cfg.feature_dim
        self.mlp = make_mlp(self.encoding.n_output_dims, 1 + cfg.feature_dim, cfg.network, backend,
                            sphere_radius=cfg.init_sphere_radius)
        self.base: torch.nn.Module | None = None
        self.height: torch.nn.Module | None = None  # set_height: stage 2's detail, f -= h(project(x))
        self.residual_starts_at_zero = False  # set_base zeroed the MLP's SDF output: f == base until trained

    def set_base(self, base: torch.nn.Module) -> None:
        """Make the MLP a residual on ``base`` (points [n, 3] -> sdf [n]); its SDF output starts at 0."""
        self.base = base
        layers = getattr(self.mlp, "layers", None)
        if layers is not None:  # torch: zero the SDF row of the last layer (tcnn: stage 1 drives it to 0)
            with torch.no_grad():
                layers[-1].weight[0].zero_()
                layers[-1].bias[0].zero_()
            self.residual_starts_at_zero = True

    def mlp_parameters(self) -> list[torch.nn.Parameter]:
        """What stage 1 trains (and stage 2 too, unless a height map carries the detail)."""
        return list(self.mlp.parameters())

    def set_height(self, height: torch.nn.Module) -> None:
        """Subtract ``height`` (points [n, 3] -> displacement [n], unit-box units) from the SDF."""
        self.height = height

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [n_pts, 3] -> sdf [n_pts], feature [n_pts, feature_dim]."""
        out = self.mlp(self.encoding(x))
        sdf = out[:, 0] if self.base is None else self.base(x) + out[:, 0]
        if self.height is not None:
            sdf = sdf - self.height(x)
        return sdf, out[:, 1:]

    def sdf(self, x: Tensor) -> Tensor:  # [n_pts, 3] -> [n_pts]
        return self.forward(x)[0]

    @torch.no_grad()
    def silence_frequencies(self, first: int) -> None:
        """Zero the input weights of encoding frequencies >= ``first`` (torch MLP), so that fading
        them in later (coarse-to-fine) starts from the current function instead of random noise."""
        layers = getattr(self.mlp, "layers", None)
        if layers is None:
            return  # tcnn: its padded weights are not addressable per input; annealing alone applies
        d = self.encoding.n_input_dims
        start = d + 2 * d * first  # encoding layout: [x (d), then per frequency sin (d), cos (d)]
        stop = self.encoding.n_output_dims
        layers[0].weight[:, start:stop] = 0.0
        for i in getattr(self.mlp, "skip_layers", ()):
            if i > 0:
                layers[i].weight[:, layers[i].in_features - stop + start:] = 0.0


class RenderingNet(torch.nn.Module):
    def __init__(self, cfg: RenderingNetConfig, feature_dim: int, backend: str):
        super().__init__()
        self.use_feature, self.use_normal = cfg.use_feature, cfg.use_normal
        self.use_position, self.use_view = cfg.use_position, cfg.use_view
        self.shading = cfg.shading
        albedo_times_light = self.shading != "mlp"
        if albedo_times_light and not cfg.use_normal:
            raise ValueError(f"rendering.shading = {self.shading!r} needs use_normal = true (shading is a function of n)")
        self.pos_encoding = FrequencyEncoding(3, cfg.encoding)
        self.view_encoding = FrequencyEncoding(3, cfg.view_encoding)
        feature_in = feature_dim if cfg.use_feature else 0
        pos_in = self.pos_encoding.n_output_dims if cfg.use_position else 0
        self.light: torch.nn.Module | None = None
        if albedo_times_light:  # the MLP is the albedo alone; the light is a shading model's
            n_in = max(pos_in + feature_in, 1)
            self.light = (SphericalHarmonicsShading() if self.shading == "albedo_sh"
                          else DirectionalShading(cfg.shininess, cfg.specular))
        else:
            n_in = (pos_in + (self.view_encoding.n_output_dims if cfg.use_view else 0)
                    + (3 if cfg.use_normal else 0) + feature_in)
        self.mlp = make_mlp(n_in, 3, cfg.network, backend)
        self.albedo: torch.nn.Module | None = None  # set_albedo: the shading models read it instead of the MLP

    def set_albedo(self, albedo: torch.nn.Module) -> None:
        """Take the albedo from ``albedo`` (unit-box points [n, 3] -> rgb [n, 3]) instead of the MLP."""
        if self.light is None:
            raise ValueError("an albedo module needs an albedo x light shading, not 'mlp'")
        self.albedo = albedo

    def forward(self, x: Tensor, normals: Tensor, view_dirs: Tensor, features: Tensor) -> Tensor:
        """x, normals, view_dirs [n_rays, 3], features [n_rays, F] -> rgb [n_rays, 3]."""
        if self.light is not None:
            return self.light(self.albedo_at(x, features), normals, view_dirs)
        parts = [self.pos_encoding(x)] if self.use_position else []
        if self.use_view:
            parts.append(self.view_encoding(view_dirs))
        if self.use_normal:
            parts.append(normals)
        if self.use_feature:
            parts.append(features)
        return self.mlp(torch.cat(parts, dim=-1))

    def albedo_at(self, x: Tensor, features: Tensor) -> Tensor:
        """The albedo [n, 3] of an albedo x light shading at x [n, 3]: the albedo module's, else the MLP's."""
        if self.albedo is not None:
            return self.albedo(x)
        parts = [self.pos_encoding(x)] if self.use_position else []
        if self.use_feature:
            parts.append(features)
        return self.mlp(torch.cat(parts, dim=-1) if parts else torch.ones_like(x[:, :1]))


class SdfSample(NamedTuple):
    sdf: Tensor       # [n_pts]
    feature: Tensor   # [n_pts, F]
    gradient: Tensor  # [n_pts, 3], d sdf / d x


def sdf_with_gradient(net: GeometryNet, x: Tensor, mode: str, fd_eps: float, create_graph: bool) -> SdfSample:
    """SDF, feature and spatial gradient at x [n_pts, 3].

    autograd:           exact; ``create_graph`` keeps the graph for the eikonal term (double backward).
    finite_difference:  (f(x + h e_i) - f(x - h e_i)) / 2h; differentiable w.r.t. theta with a
                        plain backward (what tcnn allows). Six extra evaluations.
    Differentiable w.r.t.: network parameters (both modes); x (autograd mode).
    """
    if mode == "autograd":
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            sdf, feat = net(xg)
            (grad,) = torch.autograd.grad(sdf, xg, torch.ones_like(sdf), create_graph=create_graph)
        return SdfSample(sdf, feat, grad)
    sdf, feat = net(x)
    offsets = torch.eye(3, device=x.device, dtype=x.dtype) * fd_eps  # [3, 3]
    probes = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).reshape(-1, 3)
    f = net.sdf(probes).reshape(-1, 6)
    grad = (f[:, :3] - f[:, 3:]) / (2.0 * fd_eps)
    if not create_graph:
        grad = grad.detach()
    return SdfSample(sdf, feat, grad)


class SiderModel(torch.nn.Module):
    """Both networks plus how normals are computed; one object the stages train and checkpoint."""

    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.backend = backend
        self.normal_mode = "finite_difference" if backend == "tcnn" else cfg.normals
        self.fd_eps = cfg.fd_eps
        self.geometry = GeometryNet(cfg.geometry, backend)
        self.rendering = RenderingNet(cfg.rendering, cfg.geometry.feature_dim, backend)

    def sdf(self, x: Tensor) -> Tensor:
        return self.geometry.sdf(x)

    def sdf_with_gradient(self, x: Tensor, create_graph: bool = True) -> SdfSample:
        return sdf_with_gradient(self.geometry, x, self.normal_mode, self.fd_eps, create_graph)

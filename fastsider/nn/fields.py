"""SIDER's fields: the geometry f(x) -> (sdf, feature) and the appearance (x, n, v, feature) -> rgb.

Each is assembled from parts that ``fastsider/model.py`` chooses from the config and builds once:

Geometry    f(x) = base(x) [+ MLP residual] - h(project(x))   or the paper's MLP f(phi(x)) alone
Appearance  rgb = g(phi(x), n, phi(v), feature) (the paper's rendering MLP)
            rgb = light(albedo(x), n, v)       (an albedo map or MLP times a learned light)

x lives in the normalized box [-1, 1]^3.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastsider.config import GeometryMLPConfig, RenderingMLPConfig
from fastsider.nn.encoding import FrequencyEncoding
from fastsider.nn.mlp import make_mlp


class GeometryMLP(torch.nn.Module):
    """f(phi(x)) -> (sdf, feature), the paper's geometry network."""

    def __init__(self, cfg: GeometryMLPConfig, backend: str):
        super().__init__()
        self.encoding = FrequencyEncoding(3, cfg.encoding)
        self.feature_dim = cfg.feature_dim
        self.net = make_mlp(self.encoding.n_output_dims, 1 + cfg.feature_dim, cfg.network, backend,
                            sphere_radius=cfg.init_sphere_radius)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [n_pts, 3] -> sdf [n_pts], feature [n_pts, feature_dim]."""
        out = self.net(self.encoding(x))
        return out[:, 0], out[:, 1:]

    def start_as_residual(self) -> "ResidualGain | None":
        """Make the SDF output start at exactly 0 (a residual on a base SDF): torch zeroes the SDF row
        of the last layer; tcnn's weights are one flat buffer, so a gain at 0 is returned to apply."""
        layers = getattr(self.net, "layers", None)
        if layers is None:
            return ResidualGain()
        with torch.no_grad():
            layers[-1].weight[0].zero_()
            layers[-1].bias[0].zero_()
        return None


class ResidualGain(torch.nn.Module):
    """A learned scalar on the residual MLP's SDF output, starting at 0: f == base until trained,
    whatever the MLP's initialisation (tcnn's weights cannot be zeroed row by row)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sdf: Tensor) -> Tensor:
        return self.gain * sdf


class Geometry(torch.nn.Module):
    """The SDF: a fixed ``base`` (points [n, 3] -> sdf [n]) and/or a geometry ``mlp``, minus a ``height`` map.

    Args:
        base: the coarse SDF sampled on a lattice (sdf/lattice.py), or None.
        mlp: the geometry MLP; with a base it is a residual whose SDF output starts at 0.
        height: stage 2's detail (points [n, 3] -> h [n], unit-box units), or None.
        residual_gain: with a base and an MLP that cannot be zeroed (tcnn), the gain that starts it at 0.
    """

    def __init__(self, base: torch.nn.Module | None, mlp: GeometryMLP | None, height: torch.nn.Module | None,
                 residual_gain: ResidualGain | None = None):
        super().__init__()
        if base is None and mlp is None:
            raise ValueError("a geometry needs a base SDF, an MLP, or both")
        self.base, self.mlp, self.height, self.residual_gain = base, mlp, height, residual_gain
        self.feature_dim = mlp.feature_dim if mlp is not None else 0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [n_pts, 3] -> sdf [n_pts], feature [n_pts, feature_dim]."""
        if self.mlp is None:
            sdf, feature = self.base(x), x.new_zeros(x.shape[0], 0)
        else:
            sdf, feature = self.mlp(x)
            if self.base is not None:
                sdf = self.base(x) + (sdf if self.residual_gain is None else self.residual_gain(sdf))
        if self.height is not None:
            sdf = sdf - self.height(x)
        return sdf, feature

    def sdf(self, x: Tensor) -> Tensor:  # [n_pts, 3] -> [n_pts]
        return self.forward(x)[0]

    def mlp_parameters(self) -> list[torch.nn.Parameter]:
        """What stage 1 trains, and stage 2 with the MLP detail."""
        if self.mlp is None:
            return []
        gain = list(self.residual_gain.parameters()) if self.residual_gain is not None else []
        return list(self.mlp.parameters()) + gain


class RenderingMLP(torch.nn.Module):
    """The paper's g(phi(x), n, phi(v), feature) -> rgb, or with ``albedo_only`` the albedo a(phi(x), feature).

    Where x enters un-encoded and without the feature (the default), the net cannot paint shading in
    as high-frequency albedo and must explain it through normals.
    """

    def __init__(self, cfg: RenderingMLPConfig, feature_dim: int, backend: str, albedo_only: bool):
        super().__init__()
        self.use_feature, self.use_normal = cfg.use_feature, cfg.use_normal and not albedo_only
        self.use_position, self.use_view = cfg.use_position, cfg.use_view and not albedo_only
        self.pos_encoding = FrequencyEncoding(3, cfg.encoding)
        self.view_encoding = FrequencyEncoding(3, cfg.view_encoding)
        n_in = ((self.pos_encoding.n_output_dims if self.use_position else 0)
                + (self.view_encoding.n_output_dims if self.use_view else 0)
                + (3 if self.use_normal else 0) + (feature_dim if self.use_feature else 0))
        self.net = make_mlp(max(n_in, 1), 3, cfg.network, backend)

    def forward(self, x: Tensor, normals: Tensor, view_dirs: Tensor, features: Tensor) -> Tensor:
        """x, normals, view_dirs [n_rays, 3], features [n_rays, F] -> rgb [n_rays, 3]."""
        parts = [self.pos_encoding(x)] if self.use_position else []
        if self.use_view:
            parts.append(self.view_encoding(view_dirs))
        if self.use_normal:
            parts.append(normals)
        if self.use_feature:
            parts.append(features)
        return self.net(torch.cat(parts, dim=-1) if parts else torch.ones_like(x[:, :1]))

    def albedo(self, x: Tensor, features: Tensor) -> Tensor:
        """The albedo [n, 3] at x [n, 3] of an ``albedo_only`` net (no normal, no view direction)."""
        return self(x, x, x, features)


class Appearance(torch.nn.Module):
    """rgb at surface points: the rendering MLP alone, or ``light(albedo(x), n, v)``.

    Args:
        mlp: the paper's rendering MLP (no light), or the albedo MLP under a light.
        light: a shading model (nn/shading.py), or None for the rendering MLP.
        albedo_map: an albedo field over the crop (nn/maps.py: points [n, 3] -> rgb [n, 3]) instead of an MLP.
    """

    def __init__(self, mlp: RenderingMLP | None, light: torch.nn.Module | None = None,
                 albedo_map: torch.nn.Module | None = None):
        super().__init__()
        if light is None and mlp is None:
            raise ValueError("an appearance needs a rendering MLP or a light")
        if light is not None and (mlp is None) == (albedo_map is None):
            raise ValueError("a light needs exactly one albedo: an MLP or a map")
        self.mlp, self.light, self.albedo_map = mlp, light, albedo_map

    def forward(self, x: Tensor, normals: Tensor, view_dirs: Tensor, features: Tensor,
                visibility: Tensor | None = None) -> Tensor:
        """x, normals, view_dirs [n_rays, 3], features [n_rays, F] -> rgb [n_rays, 3]; ``visibility``
        [n_rays]: the share of a directional light reaching each point (cast shadows), None: all."""
        if self.light is None:
            return self.mlp(x, normals, view_dirs, features)
        if visibility is None:
            return self.light(self.albedo_at(x, features), normals, view_dirs)
        return self.light(self.albedo_at(x, features), normals, view_dirs, visibility)

    def albedo_at(self, x: Tensor, features: Tensor) -> Tensor:
        """The albedo [n, 3] of an albedo x light appearance at x [n, 3]."""
        if self.albedo_map is not None:
            return self.albedo_map(x)
        return self.mlp.albedo(x, features)


class SdfSample(NamedTuple):
    sdf: Tensor       # [n_pts]
    feature: Tensor   # [n_pts, F]
    gradient: Tensor  # [n_pts, 3], d sdf / d x


def sdf_with_gradient(net: torch.nn.Module, x: Tensor, mode: str, fd_eps: float, create_graph: bool) -> SdfSample:
    """SDF, feature and spatial gradient at x [n_pts, 3] of ``net`` (x -> (sdf, feature)).

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
    f = net(probes)[0].reshape(-1, 6)
    grad = (f[:, :3] - f[:, 3:]) / (2.0 * fd_eps)
    if not create_graph:
        grad = grad.detach()
    return SdfSample(sdf, feat, grad)


class SiderModel(torch.nn.Module):
    """The geometry and the appearance plus how normals are computed: what the stages train and checkpoint.

    Built by :func:`fastsider.model.build_model`; ``backend`` and ``normal_mode`` say which
    implementation runs (for the log and summary.json).
    """

    def __init__(self, geometry: Geometry, appearance: Appearance, backend: str, normal_mode: str, fd_eps: float):
        super().__init__()
        self.geometry, self.appearance = geometry, appearance
        self.backend, self.normal_mode, self.fd_eps = backend, normal_mode, fd_eps

    def sdf(self, x: Tensor) -> Tensor:
        return self.geometry.sdf(x)

    def sdf_with_gradient(self, x: Tensor, create_graph: bool = True) -> SdfSample:
        return sdf_with_gradient(self.geometry, x, self.normal_mode, self.fd_eps, create_graph)

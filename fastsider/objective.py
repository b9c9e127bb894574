"""Stage 2's objective: SIDER's three terms (L1 colour + w |f - SDF_GT| + w eikonal) and the height
map's priors, weighted as the config says, for either detail carrier.

Each function returns the named terms and their weighted sum under "loss".
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastsider.config import DetailStageConfig, TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.nn.priors import laplacian_energy, log_sparsity, raised_cost, total_variation
from fastsider.render import FrozenSurface, PixelBlur, RayBundle, render_height_map, render_rays
from fastsider.sdf import losses


def combine_terms(model: SiderModel, rgb: Tensor, target: Tensor, pts_sdf: Tensor, pts_target: Tensor,
                  pts_gradient: Tensor, cfg: DetailStageConfig, unit_mm: float,
                  height_grid: Tensor | None = None) -> dict[str, Tensor]:
    """The three SIDER terms (+ the height map's priors) and their weighted sum ('loss').

    rgb, target [n_rays, 3]; pts_sdf, pts_target [n_pts]; pts_gradient [n_pts, 3]; ``height_grid``:
    the height map [1, R, R] as composed this step (None: composed here).
    """
    zero = torch.zeros((), device=target.device)
    color = losses.color_l1(rgb, target) if target.numel() else zero
    sdf = losses.sdf_l1(pts_sdf, pts_target, unit_mm)
    eik = losses.eikonal(pts_gradient)
    total = cfg.color_weight * color + cfg.sdf_weight * sdf + cfg.eikonal_weight * eik
    out = {"color": color, "sdf": sdf, "eikonal": eik}
    height = model.geometry.height
    if height is not None:
        hm = cfg.height_map
        height_mm = (height.height_map() if height_grid is None else height_grid)[0]
        out["smoothness"] = laplacian_energy(height_mm)
        out["total_variation"] = total_variation(height_mm, height.prior_weight)
        out["sparsity"] = log_sparsity(height_mm, hm.sparsity_mm, height.prior_weight)
        total = (total + hm.smoothness * out["smoothness"] + hm.tv * out["total_variation"]
                 + hm.sparsity * out["sparsity"])
        if hm.raised > 0:
            out["raised"] = raised_cost(height_mm, hm.sparsity_mm, hm.raised_from_mm, height.prior_weight)
            total = total + hm.raised * out["raised"]
    out["loss"] = total
    out["psnr"] = torch.tensor(losses.psnr(rgb, target)) if target.numel() else zero
    return out


def traced_terms(model: SiderModel, rays: RayBundle, points: Tensor, points_sdf: Tensor, cfg: DetailStageConfig,
                 trace: TraceConfig, unit_mm: float) -> dict[str, Tensor]:
    """The "mlp" detail: traced rays and SDF points [n_pts, 3] (targets [n_pts]) through the full networks."""
    r = render_rays(model, rays, trace, create_graph=True)
    pts = model.sdf_with_gradient(points, create_graph=True)
    out = combine_terms(model, r.rgb, rays.colors[r.hit], pts.sdf, points_sdf, pts.gradient, cfg, unit_mm)
    out["hit_fraction"] = r.hit.float().mean()
    return out


def height_map_terms(model: SiderModel, s: FrozenSurface, points_sdf: Tensor, point_idx: Tensor,
                     cfg: DetailStageConfig, unit_mm: float, scatter: PixelBlur | None = None) -> dict[str, Tensor]:
    """The "height_map" detail: every frozen ray, and the pool's points ``point_idx`` (their cached F;
    targets ``points_sdf``) with f = F - h and grad f = grad F - grad h. ``scatter``: the rendered colours
    blurred over the frozen rays' pixels first (subsurface scattering)."""
    grid = model.geometry.height.height_map()  # once a step: three reads of it below
    _, _, rgb = render_height_map(model, s, grid=grid)
    if scatter is not None:
        rgb = scatter(rgb)
    h, h_grad = model.geometry.height.read(s.pool_reads.subset(point_idx), grid)
    pts_sdf = s.pool_sdf[point_idx] - h
    pts_grad = s.pool_gradient[point_idx] - h_grad
    out = combine_terms(model, rgb, s.rays.colors, pts_sdf, points_sdf, pts_grad, cfg, unit_mm, grid)
    out["hit_fraction"] = torch.tensor(s.hit_fraction)
    return out

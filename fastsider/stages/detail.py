"""Stage 2: photometric detail optimization (SIDER eq.: L1 colour + 100 |f - SDF_GT| + 1e-4 eikonal).

Two ways to carry the detail (``model.geometry.detail``):
- "mlp" (the paper): the geometry MLP moves; each step sphere-traces a batch of rays and reattaches
  the hits to the parameters (IDR's implicit differentiation).
- "height_map": f = F - h(project(x)) with F, stage 1's SDF, frozen. Along a pixel's ray h is one
  number, so the hit follows from F(x0 + t d) = h: one Newton step from the traced hit x0 with F's
  value and gradient there cached -- the same implicit differentiation, exact to first order in
  h (sub-mm), at no network cost. Every face ray then enters every step, and each step is cheap.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from fastsider.camera import Camera, pixel_rays
from fastsider.config import DetailStageConfig, RunConfig, TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.nn.height_map import (
    AlbedoGrid, HeightMap, debias_weight, laplacian_energy, log_sparsity, total_variation,
)
from fastsider.nn.shading import DirectionalShading
from fastsider.sdf import losses
from fastsider.sdf.grid import OccupancyGrid
from fastsider.sdf.shell import Normalization
from fastsider.sdf.trace import ray_aabb_intersect
from fastsider.sdf.views import RayBundle, render_rays, trace_model
from fastsider.stages.coarse_sdf import PointPool
from fastsider.stages.loop import CheckpointFn, Schedule, StepCallback, optimize

MASK_EROSION_PX = 2  # keep rays off the silhouette of the coarse face (grazing, unreliable colour)


def face_rays(camera: Camera, norm: Normalization, face_mask: np.ndarray, image: np.ndarray,
              grid: OccupancyGrid | None, device: torch.device, erode: int = MASK_EROSION_PX) -> RayBundle:
    """One ray per face pixel of the working crop, in the unit box, with its search segment."""
    mask = binary_erosion(face_mask, iterations=erode) if erode > 0 else face_mask
    v, u = np.nonzero(mask)
    pixels = torch.tensor(np.stack([u, v], 1), dtype=torch.float32, device=device)
    origins_mm, dirs = pixel_rays(camera, pixels)
    origins = norm.rays_to_unit(origins_mm, dirs)
    box = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    t_start, t_end = box.t_near, box.t_far
    if grid is not None:
        seg = grid.ray_segments(origins, dirs, box.t_near, box.t_far)
        t_start, t_end = seg.t_start, seg.t_end
    colors = torch.tensor(image[v, u], dtype=torch.float32, device=device)
    return RayBundle(pixels, origins, dirs, t_start, t_end, colors)


def attach_height_map(model: SiderModel, camera: Camera, norm: Normalization, resolution: int,
                      device: torch.device) -> None:
    """Give the geometry net a zero height map over the working crop (``model.geometry.detail``)."""
    model.geometry.set_height(HeightMap(camera, norm, resolution or camera.width).to(device))


def attach_albedo_grid(model: SiderModel, camera: Camera, norm: Normalization, resolution: int,
                       colors: torch.Tensor) -> None:
    """Give the albedo x light shading a coarse image-space albedo grid starting at the face's mean colour [n, 3]."""
    model.rendering.set_albedo(AlbedoGrid(camera, norm, resolution, colors.mean(0).cpu()).to(colors.device))


def combine_terms(model: SiderModel, rgb: torch.Tensor, target: torch.Tensor, pts_sdf: torch.Tensor,
                  pts_target: torch.Tensor, pts_gradient: torch.Tensor, cfg: DetailStageConfig,
                  unit_mm: float) -> dict[str, torch.Tensor]:
    """The three SIDER terms (+ the height map's priors) and their weighted sum ('loss')."""
    zero = torch.zeros((), device=target.device)
    color = losses.color_l1(rgb, target) if target.numel() else zero
    sdf = losses.sdf_l1(pts_sdf, pts_target, unit_mm)
    eik = losses.eikonal(pts_gradient)
    total = cfg.color_weight * color + cfg.sdf_weight * sdf + cfg.eikonal_weight * eik
    out = {"color": color, "sdf": sdf, "eikonal": eik}
    if model.geometry.height is not None:
        height = model.geometry.height
        height_mm = height.height_mm()
        out["smoothness"] = laplacian_energy(height_mm)
        out["total_variation"] = total_variation(height_mm, height.prior_weight)
        out["sparsity"] = log_sparsity(height_mm, cfg.height_sparsity_mm, height.prior_weight)
        total = (total + cfg.height_smoothness * out["smoothness"] + cfg.height_tv * out["total_variation"]
                 + cfg.height_sparsity * out["sparsity"])
    out["loss"] = total
    out["psnr"] = torch.tensor(losses.psnr(rgb, target)) if target.numel() else zero
    return out


def detail_losses(model: SiderModel, rays: RayBundle, pool: PointPool, point_idx: torch.Tensor,
                  cfg: DetailStageConfig, trace: TraceConfig, unit_mm: float) -> dict[str, torch.Tensor]:
    """Traced rays and SDF points through the full networks (the "mlp" detail)."""
    r = render_rays(model, rays, trace, create_graph=True)
    pts = model.sdf_with_gradient(pool.points[point_idx], create_graph=True)
    out = combine_terms(model, r.rgb, rays.colors[r.hit], pts.sdf, pool.sdf[point_idx], pts.gradient, cfg, unit_mm)
    out["hit_fraction"] = r.hit.float().mean()
    return out


class FrozenSurface(NamedTuple):
    """Stage 1's SDF F (the geometry net without its height map) cached where stage 2 reads it."""

    rays: RayBundle         # the face rays that hit, [n]
    points: torch.Tensor    # [n, 3] traced hits x0
    sdf: torch.Tensor       # [n] F(x0)
    gradient: torch.Tensor  # [n, 3] grad F(x0)
    feature: torch.Tensor   # [n, F]
    pool_sdf: torch.Tensor       # [m] F at the SDF pool's points
    pool_gradient: torch.Tensor  # [m, 3]
    hit_fraction: float


def height_with_gradient(height: HeightMap, x: torch.Tensor, create_graph: bool = True):
    """h(project(x)) [n] and its gradient in x [n, 3] (unit-box units) from one read of the map;
    both differentiable w.r.t. the map when ``create_graph``, detached otherwise."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        h = height(xr)
        (g,) = torch.autograd.grad(h.sum(), xr, create_graph=create_graph)
    return (h, g) if create_graph else (h.detach(), g)


def frozen_sdf(model: SiderModel, x: torch.Tensor, chunk: int = 32768) -> tuple[torch.Tensor, ...]:
    """F, grad F and the feature at x [n, 3], where F = f + h: the net without its height map."""
    height = model.geometry.height
    parts = []
    for i in range(0, x.shape[0], chunk):
        xi = x[i:i + chunk]
        s = model.sdf_with_gradient(xi, create_graph=False)
        h, h_grad = height_with_gradient(height, xi, create_graph=False)
        parts.append((s.sdf.detach() + h, s.gradient.detach() + h_grad, s.feature.detach()))
    return tuple(torch.cat(p) for p in zip(*parts))


@torch.no_grad()
def freeze_surface(model: SiderModel, rays: RayBundle, pool: PointPool, trace: TraceConfig) -> FrozenSurface:
    """Trace every face ray once and cache F at the hits and at the pool (the "height_map" detail)."""
    traced = trace_model(model, rays, trace)
    hit_rays = rays.subset(traced.hit)
    x0 = traced.points[traced.hit]
    sdf, grad, feature = frozen_sdf(model, x0)
    pool_sdf, pool_grad, _ = frozen_sdf(model, pool.points)
    return FrozenSurface(hit_rays, x0, sdf, grad, feature, pool_sdf, pool_grad, float(traced.hit.float().mean()))


def render_height_map(model: SiderModel, s: FrozenSurface, create_graph: bool = True):
    """Hits, unit normals and colours [n, 3] of f = F - h for the frozen surface's rays.

    Differentiable w.r.t.: the height map and the rendering net.
    """
    height = model.geometry.height
    d = s.rays.dirs
    h, h_grad = height_with_gradient(height, s.points, create_graph)
    t = (h - s.sdf) / (s.gradient * d).sum(-1)  # F(x0) + (grad F . d) t = h
    x = s.points + t[:, None] * d
    normals = torch.nn.functional.normalize(s.gradient - h_grad, dim=-1)
    return x, normals, model.rendering(x, normals, d, s.feature)


def height_map_losses(model: SiderModel, s: FrozenSurface, pool: PointPool, point_idx: torch.Tensor,
                      cfg: DetailStageConfig, unit_mm: float) -> dict[str, torch.Tensor]:
    """Every frozen ray, and SDF points with f = F - h and grad f = grad F - grad h."""
    _, _, rgb = render_height_map(model, s)
    h, h_grad = height_with_gradient(model.geometry.height, pool.points[point_idx])
    pts_sdf = s.pool_sdf[point_idx] - h
    pts_grad = s.pool_gradient[point_idx] - h_grad
    out = combine_terms(model, rgb, s.rays.colors, pts_sdf, pool.sdf[point_idx], pts_grad, cfg, unit_mm)
    out["hit_fraction"] = torch.tensor(s.hit_fraction)
    return out


def warm_up_light(model: SiderModel, s: FrozenSurface, steps: int) -> float:
    """Fit the directional light to the frozen surface's pixels (h = 0, one albedo), before stage 2."""
    with torch.no_grad():
        mean_albedo = model.rendering.albedo_at(s.points, s.feature).mean(0)
    normals = torch.nn.functional.normalize(s.gradient, dim=-1)
    return model.rendering.light.warm_up(normals, s.rays.dirs, s.rays.colors, mean_albedo, steps)


def fit_details(model: SiderModel, rays: RayBundle, pool: PointPool, cfg: DetailStageConfig, trace: TraceConfig,
                unit_mm: float, generator: torch.Generator, on_step: StepCallback | None = None,
                on_snapshot: Callable[[int], None] | None = None, run: RunConfig = RunConfig(),
                resume: dict[str, Any] | None = None, checkpoint: CheckpointFn | None = None,
                anneal_from: float = 0.0) -> dict[str, float]:
    """Adam over both networks, batches of face rays and SDF points. Returns final stats.

    With a height map: Adam over the map and the rendering net, every face ray each step.

    ``anneal_from`` > 0: the geometry encoding starts with that many frequencies (stage 1's) and
    reaches all of them after ``cfg.anneal_iterations`` steps.
    """
    device = rays.origins.device
    n_rays, n_pts = rays.origins.shape[0], pool.points.shape[0]

    height = model.geometry.height
    frozen = freeze_surface(model, rays, pool, trace) if height is not None else None
    # a resumed run restores the light it had; warming it up first would be overwritten
    if (frozen is not None and resume is None and isinstance(model.rendering.light, DirectionalShading)
            and cfg.light_warmup_steps > 0):
        warm_up_light(model, frozen, cfg.light_warmup_steps)

    def loss_fn() -> dict[str, torch.Tensor]:
        if frozen is not None:
            pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
            terms = height_map_losses(model, frozen, pool, pt_idx, cfg, unit_mm)
        else:
            ray_idx = torch.randint(n_rays, (min(cfg.rays_per_batch, n_rays),), generator=generator, device=device)
            pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
            terms = detail_losses(model, rays.subset(ray_idx), pool, pt_idx, cfg, trace, unit_mm)
        terms["sdf_mm"] = terms.pop("sdf") * losses.MM_PER_M
        return terms

    schedule = Schedule("stage 2", cfg.iterations, cfg.lr, cfg.lr_decay, cfg.max_seconds, cfg.lr_decay_steps)
    encoding = model.geometry.encoding
    start = anneal_from if anneal_from > 0 else encoding.n_frequencies

    debias_at = (cfg.iterations - cfg.debias_steps
                 if height is not None and 0 < cfg.debias_steps < cfg.iterations else None)

    def before_step(step: int) -> None:
        # coarse-to-fine: fade in the frequencies stage 1 left out
        frac = min(1.0, (step + 1) / cfg.anneal_iterations) if cfg.anneal_iterations > 0 else 1.0
        encoding.set_active(start + frac * (encoding.n_frequencies - start))
        # the weights are a buffer of the model state: a resume past this step restores them, and a
        # rollback to before it restores the ones, so this step computes them again
        if step == debias_at:
            with torch.no_grad():
                height.prior_weight.copy_(debias_weight(height.height_mm(), cfg.debias_threshold_mm,
                                                        cfg.debias_grow_cells))

    geometry = ({"params": [height.values], "lr_factor": cfg.height_lr / cfg.lr} if height is not None
                else {"params": model.geometry.mlp_parameters()})  # a height map: the MLP stays stage 1's
    groups = [geometry, {"params": list(model.rendering.parameters()), "lr_factor": cfg.rendering_lr_factor}]
    return optimize(model, groups, loss_fn, schedule, run, generator, resume=resume,
                    checkpoint=checkpoint, on_step=on_step, on_snapshot=on_snapshot,
                    snapshot_every=cfg.snapshot_every, before_step=before_step)

"""Stage 2: photometric detail optimization (SIDER eq.: L1 colour + 100 |f - SDF_GT| + 1e-4 eikonal)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from fastsider.camera import Camera, pixel_rays
from fastsider.config import DetailStageConfig, RunConfig, TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.nn.height_map import HeightMap, laplacian_energy
from fastsider.sdf import losses
from fastsider.sdf.grid import OccupancyGrid
from fastsider.sdf.shell import Normalization
from fastsider.sdf.trace import ray_aabb_intersect
from fastsider.sdf.views import RayBundle, render_rays
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


def detail_losses(model: SiderModel, rays: RayBundle, pool: PointPool, point_idx: torch.Tensor,
                  cfg: DetailStageConfig, trace: TraceConfig, unit_mm: float) -> dict[str, torch.Tensor]:
    """The three SIDER terms and their weighted sum ('loss'), as a named dict."""
    r = render_rays(model, rays, trace, create_graph=True)
    target = rays.colors[r.hit]
    pts = model.sdf_with_gradient(pool.points[point_idx], create_graph=True)
    zero = torch.zeros((), device=target.device)
    color = losses.color_l1(r.rgb, target) if target.numel() else zero
    sdf = losses.sdf_l1(pts.sdf, pool.sdf[point_idx], unit_mm)
    eik = losses.eikonal(pts.gradient)
    total = cfg.color_weight * color + cfg.sdf_weight * sdf + cfg.eikonal_weight * eik
    out = {"color": color, "sdf": sdf, "eikonal": eik, "hit_fraction": r.hit.float().mean()}
    if model.geometry.height is not None:
        out["smoothness"] = laplacian_energy(model.geometry.height.values)
        total = total + cfg.height_smoothness * out["smoothness"]
    out["loss"] = total
    out["psnr"] = torch.tensor(losses.psnr(r.rgb, target)) if target.numel() else zero
    return out


def fit_details(model: SiderModel, rays: RayBundle, pool: PointPool, cfg: DetailStageConfig, trace: TraceConfig,
                unit_mm: float, generator: torch.Generator, on_step: StepCallback | None = None,
                on_snapshot: Callable[[int], None] | None = None, run: RunConfig = RunConfig(),
                resume: dict[str, Any] | None = None, checkpoint: CheckpointFn | None = None,
                anneal_from: float = 0.0) -> dict[str, float]:
    """Adam over both networks, batches of face rays and SDF points. Returns final stats.

    ``anneal_from`` > 0: the geometry encoding starts with that many frequencies (stage 1's) and
    reaches all of them after ``cfg.anneal_iterations`` steps.
    """
    device = rays.origins.device
    n_rays, n_pts = rays.origins.shape[0], pool.points.shape[0]

    def loss_fn() -> dict[str, torch.Tensor]:
        ray_idx = torch.randint(n_rays, (min(cfg.rays_per_batch, n_rays),), generator=generator, device=device)
        pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
        terms = detail_losses(model, rays.subset(ray_idx), pool, pt_idx, cfg, trace, unit_mm)
        terms["sdf_mm"] = terms.pop("sdf") * losses.MM_PER_M
        return terms

    schedule = Schedule("stage 2", cfg.iterations, cfg.lr, max_seconds=cfg.max_seconds)
    encoding = model.geometry.encoding
    start = anneal_from if anneal_from > 0 else encoding.n_frequencies

    def anneal(step: int) -> None:  # coarse-to-fine: fade in the frequencies stage 1 left out
        frac = min(1.0, (step + 1) / cfg.anneal_iterations) if cfg.anneal_iterations > 0 else 1.0
        encoding.set_active(start + frac * (encoding.n_frequencies - start))

    height = model.geometry.height
    geometry = ({"params": [height.values], "lr_factor": cfg.height_lr / cfg.lr} if height is not None
                else {"params": model.geometry.mlp_parameters()})  # a height map: the MLP stays stage 1's
    groups = [geometry, {"params": list(model.rendering.parameters()), "lr_factor": cfg.rendering_lr_factor}]
    return optimize(model, groups, loss_fn, schedule, run, generator, resume=resume,
                    checkpoint=checkpoint, on_step=on_step, on_snapshot=on_snapshot,
                    snapshot_every=cfg.snapshot_every, before_step=anneal)

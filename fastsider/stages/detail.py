"""Stage 2: photometric detail optimization (SIDER eq.: L1 colour + 100 |f - SDF_GT| + 1e-4 eikonal)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from fastsider.camera import Camera, pixel_rays
from fastsider.config import DetailStageConfig, TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.sdf import losses
from fastsider.sdf.grid import OccupancyGrid
from fastsider.sdf.shell import Normalization
from fastsider.sdf.trace import ray_aabb_intersect
from fastsider.sdf.views import RayBundle, render_rays
from fastsider.stages.coarse_sdf import PointPool, StepCallback

MASK_EROSION_PX = 2  # keep rays off the silhouette of the coarse face (grazing, unreliable colour)

SnapshotCallback = Callable[[int, SiderModel], None]


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
    out = {"loss": total, "color": color, "sdf": sdf, "eikonal": eik,
           "hit_fraction": r.hit.float().mean()}
    out["psnr"] = torch.tensor(losses.psnr(r.rgb, target)) if target.numel() else zero
    return out


def fit_details(model: SiderModel, rays: RayBundle, pool: PointPool, cfg: DetailStageConfig, trace: TraceConfig,
                unit_mm: float, generator: torch.Generator, on_step: StepCallback | None = None,
                on_snapshot: SnapshotCallback | None = None) -> dict[str, float]:
    """Adam over both networks, batches of face rays and SDF points. Returns final stats."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    device = rays.origins.device
    n_rays, n_pts = rays.origins.shape[0], pool.points.shape[0]
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(cfg.iterations):
        ray_idx = torch.randint(n_rays, (min(cfg.rays_per_batch, n_rays),), generator=generator, device=device)
        pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
        terms = detail_losses(model, rays.subset(ray_idx), pool, pt_idx, cfg, trace, unit_mm)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        stats = {k: v.item() for k, v in terms.items()}
        stats["sdf_mm"] = stats.pop("sdf") * losses.MM_PER_M
        if on_step is not None:
            on_step(step, stats)
        if on_snapshot is not None and cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0:
            on_snapshot(step + 1, model)
    stats["seconds"] = time.perf_counter() - t0
    stats["iterations"] = cfg.iterations
    return stats

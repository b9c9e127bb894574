"""Stage 2: photometric detail optimization (SIDER: L1 colour + 100 |f - SDF_GT| + 1e-4 eikonal).

Two ways to carry the detail (``model.detail``):
- "mlp" (the paper): the geometry MLP moves; each step sphere-traces a batch of rays and reattaches
  the hits to the parameters (IDR's implicit differentiation).
- "height_map": f = F - h(project(x)) with F, stage 1's SDF, frozen: every face ray is traced once
  (``render.freeze_surface``) and enters every step through the linearized hit (``render_height_map``).
The rendering math is in ``fastsider/render.py``, the objective in ``fastsider/objective.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fastsider.config import DetailStageConfig, RunConfig, TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.nn.priors import debias_weight
from fastsider.nn.shading import DirectionalShading
from fastsider.objective import height_map_terms, traced_terms
from fastsider.render import FrozenSurface, PixelBlur, RayBundle, freeze_surface, frozen_subset, light_visibility
from fastsider.sdf import losses
from fastsider.stages.coarse_sdf import PointPool
from fastsider.stages.loop import CheckpointFn, Schedule, StepCallback, optimize


LIGHT_WARMUP_STRIDE = 4  # the light's warm-up reads every 4th frozen ray: ~17k pixels for its ~11 numbers


def warm_up_light(model: SiderModel, s: FrozenSurface, steps: int) -> float:
    """Fit the directional light to the frozen surface's pixels (h = 0, one albedo), before stage 2."""
    with torch.no_grad():
        mean_albedo = model.appearance.albedo_at(s.points, s.feature).mean(0)
    every = slice(None, None, LIGHT_WARMUP_STRIDE)
    normals = torch.nn.functional.normalize(s.gradient[every], dim=-1)
    return model.appearance.light.warm_up(normals, s.rays.dirs[every], s.rays.colors[every], mean_albedo, steps)


def fit_details(model: SiderModel, rays: RayBundle, pool: PointPool, cfg: DetailStageConfig, trace: TraceConfig,
                unit_mm: float, generator: torch.Generator, on_step: StepCallback | None = None,
                on_snapshot: Callable[[int], None] | None = None, run: RunConfig = RunConfig(),
                resume: dict[str, Any] | None = None, checkpoint: CheckpointFn | None = None,
                mm_per_px: float = 0.0) -> dict[str, float]:
    """Adam over the geometry MLP and the appearance, batches of face rays and SDF points; with a
    height map, over the map and the appearance, every face ray each step. Returns final stats.

    ``mm_per_px``: the working crop's pixel footprint on the face (for ``height_map.scatter_mm``)."""
    device = rays.origins.device
    n_rays, n_pts = rays.origins.shape[0], pool.points.shape[0]

    height = model.geometry.height
    hm = cfg.height_map
    if resume is not None:  # the frozen surface is stage 1's (its MLP from the checkpoint) at h = 0, as
        model.load_state_dict(resume["model"])  # in the uninterrupted run; optimize() restores h after
        if height is not None:
            height.zero_()
    frozen = freeze_surface(model, rays, pool.points, trace) if height is not None else None
    # a resumed run restores the light it had; warming it up first would be overwritten
    if (frozen is not None and resume is None and isinstance(model.appearance.light, DirectionalShading)
            and hm.light_warmup_steps > 0):
        warm_up_light(model, frozen, hm.light_warmup_steps)
    # towards the warmed-up light; a resumed run, which skipped the warm-up, towards its checkpoint's
    if frozen is not None and isinstance(model.appearance.light, DirectionalShading) and hm.shadow_rays > 0:
        light = model.appearance.light.light_direction().detach()
        vis = light_visibility(model, frozen, light, trace, unit_mm, hm.shadow_rays, hm.shadow_cone_deg)
        frozen = frozen._replace(light_visibility=vis) if hm.shadow_use == "shade" else frozen_subset(frozen, vis >= 0.5)
    scatter = (PixelBlur(frozen.rays.pixels, tuple(mm / mm_per_px for mm in hm.scatter_mm))
               if frozen is not None and mm_per_px > 0 else None)

    def loss_fn() -> dict[str, torch.Tensor]:
        if frozen is not None:
            pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
            terms = height_map_terms(model, frozen, pool.sdf[pt_idx], pt_idx, cfg, unit_mm, scatter)
        else:
            ray_idx = torch.randint(n_rays, (min(cfg.mlp.rays_per_batch, n_rays),), generator=generator, device=device)
            pt_idx = torch.randint(n_pts, (cfg.sdf_points_per_batch,), generator=generator, device=device)
            terms = traced_terms(model, rays.subset(ray_idx), pool.points[pt_idx], pool.sdf[pt_idx], cfg, trace,
                                 unit_mm)
        terms["sdf_mm"] = terms.pop("sdf") * losses.MM_PER_M
        return terms

    schedule = Schedule("stage 2", cfg.iterations, cfg.appearance_lr, cfg.lr_decay, cfg.max_seconds,
                        cfg.lr_decay_steps)
    debias_at = (cfg.iterations - hm.debias_steps
                 if height is not None and 0 < hm.debias_steps < cfg.iterations else None)

    def before_step(step: int) -> None:
        # the weights are a buffer of the model state: a resume past this step restores them, and a
        # rollback to before it restores the ones, so this step computes them again
        if step == debias_at:
            with torch.no_grad():
                height.prior_weight.copy_(debias_weight(height.height_mm(), hm.debias_threshold_mm,
                                                        hm.debias_grow_cells))

    geometry = ({"params": list(height.parameters()), "base_lr": hm.lr} if height is not None  # the MLP stays stage 1's
                else {"params": model.geometry.mlp_parameters(), "base_lr": cfg.mlp.lr})
    groups = [geometry, {"params": list(model.appearance.parameters())}]  # at the schedule's lr
    return optimize(model, groups, loss_fn, schedule, run, generator, resume=resume,
                    checkpoint=checkpoint, on_step=on_step, on_snapshot=on_snapshot,
                    snapshot_every=cfg.snapshot_every, before_step=before_step)

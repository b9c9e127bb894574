"""Stage 1: fit the geometry MLP to the coarse SDF (|f - SDF_GT| + eikonal).

With ``model.sdf = "lattice"`` SDF_GT itself, on a lattice, is the geometry: exact from the start
(a residual MLP starts at 0), and stage 1 takes no steps.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch
import trimesh

from fastsider.config import CoarseStageConfig, RunConfig
from fastsider.nn.fields import SiderModel
from fastsider.sdf import losses
from fastsider.sdf.shell import ShellSDF
from fastsider.stages.loop import CheckpointFn, Schedule, StepCallback, optimize

log = logging.getLogger(__name__)


class PointPool(NamedTuple):
    points: torch.Tensor  # [n_pts, 3] unit box
    sdf: torch.Tensor     # [n_pts] SDF_GT, unit-box units


def sample_point_pool(shell: ShellSDF, n: int, near_std_unit: tuple[float, ...], uniform_fraction: float,
                      rng: np.random.Generator, device: torch.device, base: torch.nn.Module | None = None) -> PointPool:
    """Points near the coarse surface (Gaussian offsets of several widths) plus uniform box points, with
    SDF_GT as their targets, or with ``base`` the base's own values (see :func:`residual_targets`)."""
    n_uniform = int(n * uniform_fraction)
    n_near = n - n_uniform
    mesh = trimesh.Trimesh(shell.vertices, shell.faces, process=False)
    surf, _ = trimesh.sample.sample_surface(mesh, n_near, seed=int(rng.integers(2**31)))
    stds = np.asarray(near_std_unit)[rng.integers(len(near_std_unit), size=n_near)]
    near = surf + rng.normal(size=(n_near, 3)) * stds[:, None]
    uniform = rng.uniform(-1.0, 1.0, size=(n_uniform, 3))
    pts = np.clip(np.concatenate([near, uniform]), -1.0, 1.0)
    points = torch.tensor(pts, dtype=torch.float32, device=device)
    if base is not None:  # the exact SDF would be thrown away (0.8 s of the example's setup)
        return residual_targets(PointPool(points, torch.empty(0, device=device)), base)
    return PointPool(points, torch.tensor(shell.sdf(pts), dtype=torch.float32, device=device))


def residual_targets(pool: PointPool, base: torch.nn.Module | None) -> PointPool:
    """With a base SDF the targets are the base's own values: the residual MLP's target is exactly 0
    (the base's interpolation error, ~0.003 mm in the band, is not passed on to the MLP)."""
    if base is None:
        return pool
    with torch.no_grad():
        return PointPool(pool.points, base(pool.points))


def fit_coarse_sdf(model: SiderModel, pool: PointPool, cfg: CoarseStageConfig, unit_mm: float,
                   generator: torch.Generator, on_step: StepCallback | None = None, run: RunConfig = RunConfig(),
                   resume: dict[str, Any] | None = None, checkpoint: CheckpointFn | None = None) -> dict[str, float]:
    """Adam on L = |f - SDF_GT| + w_eik * eikonal over batches from the pool. Returns final stats.

    A geometry that is already SDF_GT (the lattice, a residual MLP starting at 0) is left as it is:
    Adam's first steps would only add noise of the size of its lr.
    """
    if model.geometry.mlp is None or model.geometry.base is not None:
        log.info("stage 1: the coarse SDF lattice is exact from the start; no steps")
        return {"loss": 0.0, "sdf_mm": 0.0, "seconds": 0.0, "iterations": 0, "rollbacks": 0}
    n_pool = pool.points.shape[0]

    def loss_fn() -> dict[str, torch.Tensor]:
        idx = torch.randint(n_pool, (cfg.batch_points,), generator=generator, device=pool.points.device)
        sample = model.sdf_with_gradient(pool.points[idx], create_graph=True)
        l_sdf = losses.sdf_l1(sample.sdf, pool.sdf[idx], unit_mm)
        l_eik = losses.eikonal(sample.gradient)
        return {"loss": l_sdf + cfg.eikonal_weight * l_eik, "sdf_mm": l_sdf * losses.MM_PER_M, "eikonal": l_eik}

    schedule = Schedule("stage 1", cfg.iterations, cfg.lr, cfg.lr_decay, cfg.max_seconds)
    return optimize(model, model.geometry.mlp_parameters(), loss_fn, schedule, run, generator,
                    resume=resume, checkpoint=checkpoint, on_step=on_step)

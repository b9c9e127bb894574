"""The one seam to nerfacc (>= 0.5.3): CUDA grid traversal for ``OccupancyGrid.ray_segments``.

nerfacc is imported lazily inside the functions, never at module import, so fastsider imports
and runs on machines without it. Untested here (no CUDA in CI); the torch path in ``grid.py``
is the reference and has the same semantics (samples every ``step`` from t_near, a sample
counts when its midpoint's cell is occupied).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=1)
def nerfacc_available() -> bool:
    """True when nerfacc imports and CUDA is available (the nerfacc backend can run)."""
    try:
        import nerfacc  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@torch.no_grad()
def first_last_occupied(
    occupied: Tensor,  # [R, R, R] bool
    origins: Tensor,   # [n_rays, 3]
    dirs: Tensor,      # [n_rays, 3]
    t_near: Tensor,    # [n_rays]
    t_far: Tensor,     # [n_rays]
    rays_mask: Tensor,  # [n_rays] bool
    step: float,
    box: tuple[float, float],
) -> tuple[Tensor, Tensor, Tensor]:
    """Start of the first and end of the last occupied step interval along each ray.

    Formula: nerfacc.traverse_grids marches [t_near, t_far] in steps of ``step`` and keeps the
    intervals whose midpoint lies in an occupied cell; first = min left edge, last = max right
    edge per ray (scatter over the samples' ray indices).

    Args:
        occupied: Occupancy over the box, index order (x, y, z). [R, R, R] bool
        origins: Ray origins. [n_rays, 3]
        dirs: Unit ray directions. [n_rays, 3]
        t_near: March start. [n_rays]
        t_far: March end. [n_rays]
        rays_mask: Rays to traverse. [n_rays] bool
        step: Step size along the ray (t units).
        box: (min, max) of the cubic box the grid spans, all axes.

    Returns:
        (first [n_rays], last [n_rays], valid [n_rays] bool), dtype of ``origins``.

    Differentiable w.r.t.: nothing.
    """
    if not nerfacc_available() or origins.device.type != "cuda":
        raise RuntimeError(
            "nerfacc grid traversal needs the nerfacc package (>= 0.5.3) and CUDA tensors; "
            f"nerfacc+cuda usable={nerfacc_available()}, device={origins.device}"
        )
    from nerfacc.grid import traverse_grids

    n_rays = origins.shape[0]
    f32 = dict(dtype=torch.float32, device=origins.device)
    aabbs = torch.tensor([[box[0]] * 3 + [box[1]] * 3], **f32)  # [1, 6]
    intervals, samples, _ = traverse_grids(
        origins.to(torch.float32).contiguous(),
        dirs.to(torch.float32).contiguous(),
        occupied.to(origins.device).contiguous()[None],  # [1, R, R, R]
        aabbs,
        near_planes=t_near.to(torch.float32).contiguous(),
        far_planes=t_far.to(torch.float32).contiguous(),
        step_size=step,
        cone_angle=0.0,
        rays_mask=rays_mask.contiguous(),
    )
    t_starts = intervals.vals[intervals.is_left]  # [n_samples]
    t_ends = intervals.vals[intervals.is_right]   # [n_samples]
    ray_idx = samples.ray_indices.long()          # [n_samples]
    first = torch.full((n_rays,), float("inf"), **f32).scatter_reduce(
        0, ray_idx, t_starts, reduce="amin", include_self=True
    )
    last = torch.full((n_rays,), -float("inf"), **f32).scatter_reduce(
        0, ray_idx, t_ends, reduce="amax", include_self=True
    )
    valid = torch.bincount(ray_idx, minlength=n_rays) > 0
    first = torch.where(valid, first, t_near.to(torch.float32))
    last = torch.where(valid, last, t_near.to(torch.float32))
    return first.to(origins.dtype), last.to(origins.dtype), valid

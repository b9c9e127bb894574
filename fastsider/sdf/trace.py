"""Ray/box intersection, batched sphere tracing with secant refinement, and IDR reattachment.

Everything works in normalized coordinates (the face fills the box [-1, 1]^3) with unit-length
ray directions, so ``t`` is a Euclidean distance along the ray. An ``sdf_fn`` is any callable
``points [n_pts, 3] -> sdf [n_pts]``; it is positive outside the surface.

Root finding (``sphere_trace``) runs under ``torch.no_grad()``; ``reattach_hits`` is the one
place that makes the hit points differentiable again (IDR, Yariv et al. 2020, eq. 3).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]  # points [n_pts, 3] -> sdf [n_pts]

DIR_EPS = 1e-12           # |dir component| floor in the slab test, keeps 0/0 out of the division
SECANT_DENOM_EPS = 1e-12  # floor of f_lo - f_hi in the secant weight (both sides equal)
MIN_COS = 1e-3            # floor of |n . d| in reattach_hits; sign kept (grazing hits)
SECANT_SAFEGUARD = 0.1    # secant probes stay this share of the bracket away from its ends
SCAN_BLOCK = 32           # samples per sdf_fn call in the post-march sign-change scan


class AabbHits(NamedTuple):
    """Result of ``ray_aabb_intersect``."""

    t_near: Tensor  # [n_rays] entry distance, >= 0; 0 for rays that miss
    t_far: Tensor   # [n_rays] exit distance; 0 for rays that miss
    valid: Tensor   # [n_rays] bool, the ray crosses the box in front of its origin


class TraceResult(NamedTuple):
    """Result of ``sphere_trace``."""

    t: Tensor       # [n_rays] hit distance; for misses the t of the min-|sdf| sample seen
    hit: Tensor     # [n_rays] bool
    points: Tensor  # [n_rays, 3] origins + t * dirs


def check_shape(name: str, x: Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise ValueError naming ``x``'s shape unless it matches ``shape`` (None = any size)."""
    ok = x.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")


def _check_rays(origins: Tensor, dirs: Tensor, *per_ray: tuple[str, Tensor]) -> int:
    check_shape("origins", origins, (None, 3))
    n_rays = origins.shape[0]
    check_shape("dirs", dirs, (n_rays, 3))
    for name, x in per_ray:
        check_shape(name, x, (n_rays,))
    return n_rays


def ray_aabb_intersect(
    origins: Tensor,                 # [n_rays, 3]
    dirs: Tensor,                    # [n_rays, 3]
    box_min: Tensor | float = -1.0,  # [3] or scalar
    box_max: Tensor | float = 1.0,   # [3] or scalar
) -> AabbHits:
    """Slab-method intersection of rays with an axis-aligned box.

    Formula: t_near = max_k min(t1_k, t2_k), t_far = min_k max(t1_k, t2_k),
    t1,2_k = (box_min,max_k - o_k) / d_k; valid = t_far > max(t_near, 0); t_near clamped >= 0.

    Example: o = (0, 0, -3), d = (0, 0, 1), box [-1, 1]^3 -> t_near 2, t_far 4, valid True;
    o = (0, 0, 0) (inside) -> t_near 0, t_far 1.

    Args:
        origins: Ray origins. [n_rays, 3]
        dirs: Ray directions (any length; t is in units of |d|). [n_rays, 3]
        box_min: Lower box corner. [3] or scalar
        box_max: Upper box corner. [3] or scalar

    Returns:
        AabbHits(t_near [n_rays], t_far [n_rays], valid [n_rays]); t_near = t_far = 0 where
        the ray misses the box or the box lies behind the origin.

    Differentiable w.r.t.: nothing (intended for no-grad ray setup).
    """
    _check_rays(origins, dirs)
    lo = torch.as_tensor(box_min, dtype=origins.dtype, device=origins.device).expand(3)
    hi = torch.as_tensor(box_max, dtype=origins.dtype, device=origins.device).expand(3)
    safe_d = torch.copysign(dirs.abs().clamp_min(DIR_EPS), dirs)
    t1 = (lo - origins) / safe_d
    t2 = (hi - origins) / safe_d
    t_near = torch.minimum(t1, t2).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t1, t2).amin(dim=-1)
    valid = t_far > t_near
    zero = torch.zeros_like(t_near)
    return AabbHits(torch.where(valid, t_near, zero), torch.where(valid, t_far, zero), valid)


def _eval_sdf(sdf_fn: SdfFn, points: Tensor) -> Tensor:
    f = sdf_fn(points)
    check_shape("sdf_fn(points)", f, (points.shape[0],))
    return f.to(points.dtype)


def _secant_point(t_lo: Tensor, t_hi: Tensor, f_lo: Tensor, f_hi: Tensor) -> Tensor:
    """Zero of the line through (t_lo, f_lo), (t_hi, f_hi); kept inside [t_lo, t_hi]."""
    w = (f_lo / (f_lo - f_hi).clamp_min(SECANT_DENOM_EPS)).clamp(0.0, 1.0)
    return t_lo + w * (t_hi - t_lo)


class _March(NamedTuple):
    t: Tensor          # [n_rays] last sample (the hit for converged rays)
    converged: Tensor  # [n_rays] bool, |f| < hit_eps reached
    crossed: Tensor    # [n_rays] bool, sign + -> - between two consecutive samples
    t_lo: Tensor       # [n_rays] last positive sample before the crossing
    t_hi: Tensor       # [n_rays] first negative sample
    f_lo: Tensor       # [n_rays]
    f_hi: Tensor       # [n_rays]
    best_t: Tensor     # [n_rays] t of the min-|f| sample (miss report)


def _march(sdf_fn, origins, dirs, t_near, t_far, max_steps, hit_eps, step_scale) -> _March:
    """Sphere-tracing loop; each step evaluates only the rays still marching (most rays of a face
    finish in a few steps, so a fixed-length batch spent most of its evaluations on finished rays)."""
    t = t_near.clone()
    converged = torch.zeros_like(t_near, dtype=torch.bool)
    crossed = torch.zeros_like(converged)
    # f_prev = 0: a ray whose first sample is negative gets the bracket [t_near, t_near]
    t_lo, t_hi = t.clone(), t.clone()
    f_lo, f_hi = torch.ones_like(t), -torch.ones_like(t)
    best_t = t.clone()
    idx = torch.nonzero(t_near < t_far).squeeze(1)  # the rays still marching
    ti, t_prev, f_prev = t[idx], t[idx], torch.zeros_like(t[idx])
    best_f = torch.full_like(ti, float("inf"))
    for _ in range(max_steps):
        if len(idx) == 0:
            break
        f = _eval_sdf(sdf_fn, origins[idx] + ti[:, None] * dirs[idx])
        better = f.abs() < best_f
        best_f = torch.where(better, f.abs(), best_f)
        best_t[idx] = torch.where(better, ti, best_t[idx])
        conv = f.abs() < hit_eps
        cross = ~conv & (f < 0)
        past_far = ti >= t_far[idx]
        c = idx[cross]
        t_lo[c], f_lo[c], t_hi[c], f_hi[c] = t_prev[cross], f_prev[cross], ti[cross], f[cross]
        converged[idx[conv]] = True
        crossed[c] = True
        t[idx] = ti
        go = ~conv & ~cross & ~past_far
        # Clamped to t_far: the last sample sits exactly on t_far, so a crossing just before
        # t_far is still bracketed and the network is never queried beyond the segment.
        idx, t_prev, f_prev, best_f = idx[go], ti[go], f[go], best_f[go]
        ti = torch.minimum(t_prev + step_scale * f_prev, t_far[idx])
    t[idx] = ti
    return _March(t, converged, crossed, t_lo, t_hi, f_lo, f_hi, best_t)


def _scan_first_crossing(sdf_fn, origins, dirs, t_start, t_end, n_samples):
    """First + -> - sign change among n_samples uniform samples of [t_start, t_end].

    Returns (found [n_rays] bool, t_lo, t_hi, f_lo, f_hi [n_rays]); evaluated in blocks of
    SCAN_BLOCK samples per ray so memory stays n_rays * SCAN_BLOCK points.
    """
    n_rays = t_start.shape[0]
    found = torch.zeros(n_rays, dtype=torch.bool, device=t_start.device)
    t_lo, t_hi = t_start.clone(), t_start.clone()
    f_lo, f_hi = torch.ones_like(t_start), -torch.ones_like(t_start)
    t_prev = t_start[:, None]
    f_prev = _eval_sdf(sdf_fn, origins + t_start[:, None] * dirs)[:, None]
    span = (t_end - t_start)[:, None]
    for b in range(1, n_samples, SCAN_BLOCK):
        s = torch.arange(b, min(b + SCAN_BLOCK, n_samples), device=t_start.device)
        ts = t_start[:, None] + span * (s.to(t_start.dtype) / (n_samples - 1))  # [n_rays, k]
        pts = origins[:, None, :] + ts[..., None] * dirs[:, None, :]
        f = _eval_sdf(sdf_fn, pts.reshape(-1, 3)).view(n_rays, -1)
        t_cat, f_cat = torch.cat([t_prev, ts], 1), torch.cat([f_prev, f], 1)
        change = (f_cat[:, :-1] > 0) & (f_cat[:, 1:] <= 0)  # [n_rays, k]
        new = change.any(dim=1) & ~found
        k = change.to(torch.int32).argmax(dim=1, keepdim=True)  # first change in this block
        t_lo = torch.where(new, t_cat.gather(1, k)[:, 0], t_lo)
        f_lo = torch.where(new, f_cat.gather(1, k)[:, 0], f_lo)
        t_hi = torch.where(new, t_cat.gather(1, k + 1)[:, 0], t_hi)
        f_hi = torch.where(new, f_cat.gather(1, k + 1)[:, 0], f_hi)
        found = found | new
        t_prev, f_prev = ts[:, -1:], f[:, -1:]
    return found, t_lo, t_hi, f_lo, f_hi


def _refine_secant(sdf_fn, origins, dirs, t_lo, t_hi, f_lo, f_hi, steps: int) -> Tensor:
    """Safeguarded regula falsi on brackets with f_lo > 0 >= f_hi; returns t [n_rays].

    Each probe is the secant zero of the bracket, kept SECANT_SAFEGUARD * width away from
    both ends: plain regula falsi creeps towards the root from one side on a curved f (a wide
    overshoot bracket near a silhouette), the margin makes the far end move too. The
    returned t is the unclamped secant zero of the final bracket.
    """
    for _ in range(steps):
        margin = SECANT_SAFEGUARD * (t_hi - t_lo)
        t_est = _secant_point(t_lo, t_hi, f_lo, f_hi).clamp(t_lo + margin, t_hi - margin)
        f_est = _eval_sdf(sdf_fn, origins + t_est[:, None] * dirs)
        pos = f_est > 0
        t_lo, f_lo = torch.where(pos, t_est, t_lo), torch.where(pos, f_est, f_lo)
        t_hi, f_hi = torch.where(pos, t_hi, t_est), torch.where(pos, f_hi, f_est)
    return _secant_point(t_lo, t_hi, f_lo, f_hi)


@torch.no_grad()
def sphere_trace(
    sdf_fn: SdfFn,
    origins: Tensor,  # [n_rays, 3]
    dirs: Tensor,     # [n_rays, 3]
    t_near: Tensor,   # [n_rays]
    t_far: Tensor,    # [n_rays]
    *,
    max_steps: int,
    hit_eps: float,
    secant_steps: int,
    step_scale: float = 1.0,
    check_samples: int = 0,
) -> TraceResult:
    """Find the FIRST surface crossing of each ray inside [t_near, t_far].

    Formula: t_{k+1} = min(t_k + step_scale * f(o + t_k d), t_far), from t_0 = t_near.

    A ray is a hit when (a) |f| < hit_eps at a sample, or (b) f changes sign + -> - between two
    consecutive samples (overshoot, e.g. a non-1-Lipschitz network): the bracket
    [last positive, first negative] is refined by ``secant_steps`` safeguarded regula-falsi
    (secant) steps.
    A ray is a miss when it passes t_far, or is still marching after ``max_steps``; its t is
    the sample with the smallest |f|. A ray whose first sample is already negative (starts
    inside) is a hit at t_near. Rays with t_near >= t_far are misses at t_near.

    Thin shells: an overshooting step can jump over a whole sheet (both samples positive)
    and no sign change is seen. With ``check_samples`` = N >= 2, after marching every ray is
    also sampled at N uniform points of [t_near, t_end] (t_end = its hit, or t_far) and the
    first + -> - change found there, if any, replaces the march's bracket before refinement.
    That catches every sheet that is thicker along the ray than (t_end - t_near) / (N - 1),
    at the cost of N extra sdf evaluations per ray. N = 0 (default) skips the scan.

    Example: unit sphere at the origin, o = (0, 0, -3), d = (0, 0, 1), t_near 2, t_far 4
    -> TraceResult(t=2.0, hit=True, points=(0, 0, -1)).

    Args:
        sdf_fn: points [n_pts, 3] -> sdf [n_pts], positive outside.
        origins: Ray origins. [n_rays, 3]
        dirs: Unit ray directions. [n_rays, 3]
        t_near: Start of the search segment. [n_rays]
        t_far: End of the search segment. [n_rays]
        max_steps: Sphere-tracing iterations at most (a ray still marching after them is a miss).
        hit_eps: |f| below this counts as on the surface (sdf units).
        secant_steps: Refinement steps on bracketed crossings.
        step_scale: Multiplier on each step (< 1 for networks that over-estimate distance).
        check_samples: Uniform samples per ray of the post-march sign-change scan: 0 (off)
            or >= 2.

    Returns:
        TraceResult(t [n_rays], hit [n_rays], points [n_rays, 3]).

    Differentiable w.r.t.: nothing (no_grad); use ``reattach_hits`` for gradients.
    """
    _check_rays(origins, dirs, ("t_near", t_near), ("t_far", t_far))
    if check_samples == 1 or check_samples < 0:
        raise ValueError(f"check_samples: expected 0 or >= 2, got {check_samples}")
    m = _march(sdf_fn, origins, dirs, t_near, t_far, max_steps, hit_eps, step_scale)
    converged, crossed = m.converged, m.crossed
    t_lo, t_hi, f_lo, f_hi = m.t_lo, m.t_hi, m.f_lo, m.f_hi
    if check_samples:
        t_end = torch.where(converged | crossed, m.t, t_far)
        t_end = torch.maximum(t_end, t_near)
        found, s_lo, s_hi, sf_lo, sf_hi = _scan_first_crossing(
            sdf_fn, origins, dirs, t_near, t_end, check_samples
        )
        found = found & (t_near < t_far)
        t_lo, t_hi = torch.where(found, s_lo, t_lo), torch.where(found, s_hi, t_hi)
        f_lo, f_hi = torch.where(found, sf_lo, f_lo), torch.where(found, sf_hi, f_hi)
        crossed = crossed | found
        converged = converged & ~found
    t_ref = _refine_secant(sdf_fn, origins, dirs, t_lo, t_hi, f_lo, f_hi, secant_steps)
    t = torch.where(crossed, t_ref, torch.where(converged, m.t, m.best_t))
    hit = crossed | converged
    return TraceResult(t, hit, origins + t[:, None] * dirs)


def reattach_hits(
    sdf_at_x0: Tensor,      # [n_rays]
    normals_at_x0: Tensor,  # [n_rays, 3]
    dirs: Tensor,           # [n_rays, 3]
    x0: Tensor,             # [n_rays, 3]
) -> Tensor:
    """Make detached hit points differentiable w.r.t. the SDF parameters (IDR).

    Formula: x(θ) = x0 − d / (n·d) · (f(x0; θ) − f(x0; θ).detach()), n = ∇_x f(x0) detached.
    Forward value is x0 exactly; dx/dθ = −d / (n·d) · ∂f/∂θ, the implicit-function derivative
    of the ray/surface intersection (from f(o + t d; θ) = 0). |n·d| is floored at MIN_COS with
    its sign kept, so grazing hits get a bounded gradient.

    Example: plane f = x_z + s, d = (0, 0, 1), n = (0, 0, 1): dx/ds = (0, 0, −1).

    Args:
        sdf_at_x0: f(x0; θ) with its graph to θ, evaluated at the detached x0. [n_rays]
        normals_at_x0: The (unnormalized) gradient ∇_x f at x0, detached. [n_rays, 3]
        dirs: Ray directions. [n_rays, 3]
        x0: Traced hit points, detached. [n_rays, 3]

    Returns:
        x: Hit points equal to x0, carrying the gradient. [n_rays, 3]

    Differentiable w.r.t.: sdf_at_x0 only (normals, dirs and x0 are treated as constants).
    """
    _check_rays(x0, dirs, ("sdf_at_x0", sdf_at_x0))
    check_shape("normals_at_x0", normals_at_x0, tuple(x0.shape))
    n_dot_d = (normals_at_x0.detach() * dirs.detach()).sum(dim=-1)
    n_dot_d = torch.where(n_dot_d >= 0, n_dot_d.clamp_min(MIN_COS), n_dot_d.clamp_max(-MIN_COS))
    delta = sdf_at_x0 - sdf_at_x0.detach()  # 0 in value, d f / d θ in gradient
    return x0.detach() - dirs.detach() / n_dot_d[:, None] * delta[:, None]

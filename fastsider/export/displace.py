"""Vertices moved along their normals onto an SDF's zero set, and which of them the camera sees.

A scalar displacement d per vertex, x = base + d n, is what a displacement map stores: found by
Newton's method on the line, d <- d - f(x) / (grad f(x) . n), it puts the vertex on the surface
while the map rebuilds it exactly. The photo constrains only what the camera sees: elsewhere
(under the chin, beyond the silhouette) a height map read at a point's projection would paint the
visible side's detail, so the displacement fades to 0 over a few mm from what is seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import trimesh

# points [n_pts, 3] mm -> (sdf [n_pts] mm, gradient [n_pts, 3] d sdf / d x, unitless)
SdfGradFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

MIN_SLOPE = 0.1  # grad f . n below this (a line nearly along the level set): Newton steps as if it were this
SETTLED_MM = 1e-4  # |f| below this: a vertex takes no more steps (its next would move it about this far)


class Displacement(NamedTuple):
    d_mm: np.ndarray        # [n_verts] signed displacement along the normal (towards the camera side: +)
    residual_mm: np.ndarray  # [n_verts] |f| at base + d n after the last step
    gradient: np.ndarray    # [n_verts, 3] grad f there (the detailed surface's normal, unnormalized)


def displace_onto_zero_set(sdf_fn: SdfGradFn, base_mm: np.ndarray, normals: np.ndarray, d0_mm: float,
                           steps: int, max_mm: float, max_step_mm: float) -> Displacement:
    """Newton's method along each vertex's normal line for f(base + d n) = 0, from d = ``d0_mm``.

    Args:
        sdf_fn: the SDF in mm and its gradient.
        base_mm: [n_verts, 3] points on (or near) the coarse surface.
        normals: [n_verts, 3] unit normals (outward: towards the camera for a face).
        steps: Newton steps; each is clipped to +-max_step_mm and d to +-max_mm.
    Example: the sphere |x| - 10 from base (0, 0, 9) with n = (0, 0, 1): d -> 1 (one step; f is linear on the line).
    """
    if base_mm.shape != normals.shape or base_mm.ndim != 2 or base_mm.shape[1] != 3:
        raise ValueError(f"base [n_verts, 3] and normals [n_verts, 3] expected, got {base_mm.shape}, {normals.shape}")
    d = np.full(len(base_mm), float(d0_mm))
    f, g = sdf_fn(base_mm + d[:, None] * normals)
    moving = np.arange(len(base_mm))
    for _ in range(steps):
        # only the vertices not yet on the zero set are evaluated again (most settle in 2-3 steps)
        moving = moving[np.abs(f[moving]) >= SETTLED_MM]
        if len(moving) == 0:
            break
        n = normals[moving]
        slope = np.maximum(np.einsum("ij,ij->i", g[moving], n), MIN_SLOPE)
        d[moving] = np.clip(d[moving] - np.clip(f[moving] / slope, -max_step_mm, max_step_mm), -max_mm, max_mm)
        f[moving], g[moving] = sdf_fn(base_mm[moving] + d[moving, None] * n)
    return Displacement(d, np.abs(f), g)


def visible_vertices(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, tolerance_mm: float,
                     min_facing: float) -> np.ndarray:
    """[n_verts] bool: vertices of a camera-frame mesh that face the camera at the origin (cosine of
    normal and view direction below -``min_facing``) and are the first hit of the ray towards them
    (no other part of the mesh more than ``tolerance_mm`` nearer). Ray casting by Embree."""
    dist = np.linalg.norm(vertices, axis=1)
    dirs = vertices / dist[:, None]
    facing = np.einsum("ij,ij->i", normals, dirs) < -min_facing
    idx = np.flatnonzero(facing)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    locs, ray_idx, _ = mesh.ray.intersects_location(np.zeros((len(idx), 3)), dirs[idx], multiple_hits=False)
    first = np.full(len(idx), np.inf)  # a ray that misses (grazing at its own vertex) is not blocked
    first[ray_idx] = np.linalg.norm(locs, axis=1)
    visible = np.zeros(len(vertices), dtype=bool)
    visible[idx] = first >= dist[idx] - tolerance_mm
    return visible


def fade_weights(vertices: np.ndarray, visible: np.ndarray, fade_mm: float) -> np.ndarray:
    """[n_verts] weights in [0, 1]: 0 where not ``visible``, rising smoothly (3t^2 - 2t^3) to 1 at
    ``fade_mm`` (straight-line distance) from the nearest vertex that is not."""
    from scipy.spatial import cKDTree

    w = visible.astype(np.float64)
    if fade_mm <= 0 or visible.all() or not visible.any():
        return w
    dist, _ = cKDTree(vertices[~visible]).query(vertices[visible], distance_upper_bound=fade_mm)
    t = np.clip(dist / fade_mm, 0.0, 1.0)  # inf (none within reach) -> 1
    w[visible] = t * t * (3.0 - 2.0 * t)
    return w

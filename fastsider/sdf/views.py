"""What the camera sees of a SIDER model: traced hits, detailed normals, colours, chunked."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastsider.config import TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.sdf.trace import reattach_hits, sphere_trace


class RayBundle(NamedTuple):
    """Rays in the unit box, with where to search along them and what colour they should see."""

    pixels: Tensor   # [n_rays, 2] (u, v) in the working crop
    origins: Tensor  # [n_rays, 3] unit box
    dirs: Tensor     # [n_rays, 3] unit length
    t_start: Tensor  # [n_rays]
    t_end: Tensor    # [n_rays]
    colors: Tensor   # [n_rays, 3] target rgb in [0, 1]

    def subset(self, idx: Tensor) -> "RayBundle":
        return RayBundle(*(x[idx] for x in self))


class RenderedRays(NamedTuple):
    hit: Tensor      # [n_rays] bool
    points: Tensor   # [n_hit, 3] unit box, differentiable w.r.t. the geometry net (reattached)
    normals: Tensor  # [n_hit, 3] unit normals at the hits
    rgb: Tensor      # [n_hit, 3]


def trace_model(model: SiderModel, rays: RayBundle, cfg: TraceConfig):
    """Sphere-trace the geometry net along the rays (no graph)."""
    return sphere_trace(model.sdf, rays.origins, rays.dirs, rays.t_start, rays.t_end,
                        max_steps=cfg.max_steps, hit_eps=cfg.hit_eps, secant_steps=cfg.secant_steps)


def render_rays(model: SiderModel, rays: RayBundle, cfg: TraceConfig, create_graph: bool = True) -> RenderedRays:
    """Trace, reattach the hits to theta (IDR), and colour them with the rendering net.

    Differentiable w.r.t.: both networks' parameters (when create_graph).
    """
    traced = trace_model(model, rays, cfg)
    hit = traced.hit
    x0, dirs = traced.points[hit], rays.dirs[hit]
    n0 = model.sdf_with_gradient(x0, create_graph=False).gradient.detach()
    x = reattach_hits(model.sdf(x0), n0, dirs, x0)
    sample = model.sdf_with_gradient(x, create_graph=create_graph)
    normals = torch.nn.functional.normalize(sample.gradient, dim=-1)
    rgb = model.rendering(x, normals, dirs, sample.feature)
    return RenderedRays(hit, x, normals, rgb)


def render_views(model: SiderModel, rays: RayBundle, cfg: TraceConfig, chunk: int = 16384) -> RenderedRays:
    """``render_rays`` over many rays in chunks, detached (for pictures and meshes)."""
    parts = []
    for i in range(0, rays.origins.shape[0], chunk):
        r = render_rays(model, rays.subset(slice(i, i + chunk)), cfg, create_graph=False)
        parts.append(RenderedRays(*(x.detach() for x in r)))
    return RenderedRays(*(torch.cat(xs) for xs in zip(*parts)))

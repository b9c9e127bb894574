"""What the camera sees of a SIDER model along rays: hits, detailed normals, colours.

Two ways, one per detail carrier:
- traced (``render_rays``): sphere-trace the SDF, reattach the hits to the parameters (IDR's implicit
  differentiation), colour them. The "mlp" detail, and every picture and mesh view.
- linearized (``render_height_map``): f = F - h(project(x)) with F, stage 1's SDF, frozen. Along a
  pixel's ray h is one number, so the hit follows from F(x0 + t d) = h: one Newton step from the
  traced hit x0 with F's value and gradient there cached (``freeze_surface``) -- the same implicit
  differentiation, exact to first order in h (sub-mm), at no network cost.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.fft import next_fast_len
from scipy.ndimage import binary_erosion
from torch import Tensor

from fastsider.camera import Camera, Normalization, pixel_rays
from fastsider.config import TraceConfig
from fastsider.nn.fields import SiderModel
from fastsider.nn.maps import BilinearReads, HeightMap
from fastsider.sdf.occupancy import OccupancyGrid
from fastsider.sdf.trace import ray_aabb_intersect, reattach_hits, sphere_trace


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
    rgb = model.appearance(x, normals, dirs, sample.feature)
    return RenderedRays(hit, x, normals, rgb)


def render_views(model: SiderModel, rays: RayBundle, cfg: TraceConfig, chunk: int = 16384) -> RenderedRays:
    """``render_rays`` over many rays in chunks, detached (for pictures and meshes)."""
    parts = []
    for i in range(0, rays.origins.shape[0], chunk):
        r = render_rays(model, rays.subset(slice(i, i + chunk)), cfg, create_graph=False)
        parts.append(RenderedRays(*(x.detach() for x in r)))
    return RenderedRays(*(torch.cat(xs) for xs in zip(*parts)))


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
    reads: BilinearReads         # the height map's weights at the hits ...
    pool_reads: BilinearReads    # ... and at the pool's points
    light_visibility: torch.Tensor | None = None  # [n] share of the light reaching each hit (cast shadows)


def frozen_subset(s: FrozenSurface, keep: torch.Tensor) -> FrozenSurface:
    """The frozen surface's rays ``keep`` [n] bool (the pool's points stay)."""
    vis = None if s.light_visibility is None else s.light_visibility[keep]
    return s._replace(rays=s.rays.subset(keep), points=s.points[keep], sdf=s.sdf[keep], gradient=s.gradient[keep],
                      feature=s.feature[keep], reads=s.reads.subset(keep), light_visibility=vis)


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
def freeze_surface(model: SiderModel, rays: RayBundle, pool_points: torch.Tensor, trace: TraceConfig) -> FrozenSurface:
    """Trace every face ray once and cache F at the hits and at the SDF pool's points [m, 3]."""
    traced = trace_model(model, rays, trace)
    hit_rays = rays.subset(traced.hit)
    x0 = traced.points[traced.hit]
    sdf, grad, feature = frozen_sdf(model, x0)
    pool_sdf, pool_grad, _ = frozen_sdf(model, pool_points)
    height = model.geometry.height
    return FrozenSurface(hit_rays, x0, sdf, grad, feature, pool_sdf, pool_grad, float(traced.hit.float().mean()),
                         height.reads_at(x0), height.reads_at(pool_points))


def render_height_map(model: SiderModel, s: FrozenSurface, create_graph: bool = True,
                      grid: torch.Tensor | None = None):
    """Hits, unit normals and colours [n, 3] of f = F - h for the frozen surface's rays (``grid``: the
    height map, composed by the caller; None: composed here).

    Differentiable w.r.t.: the height map and the rendering net.
    """
    d = s.rays.dirs
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        h, h_grad = model.geometry.height.read(s.reads, grid)
    t = (h - s.sdf) / (s.gradient * d).sum(-1)  # F(x0) + (grad F . d) t = h
    x = s.points + t[:, None] * d
    normals = torch.nn.functional.normalize(s.gradient - h_grad, dim=-1)
    return x, normals, model.appearance(x, normals, d, s.feature, s.light_visibility)


SHADOW_OFFSET_MM = 1.0  # shadow rays start this far out along the normal: off the hit's own sheet


@torch.no_grad()
def light_visibility(model: SiderModel, s: FrozenSurface, light: torch.Tensor, trace: TraceConfig, unit_mm: float,
                     n_dirs: int, cone_deg: float) -> torch.Tensor:
    """The share [n] of ``n_dirs`` directions within ``cone_deg`` of the unit ``light`` [3] along
    which F lets each frozen hit see out of the box: 0 in a cast shadow, 1 in full light, between
    in a penumbra. The directions are a fixed spiral over the cone (the same for every hit)."""
    n = torch.nn.functional.normalize(s.gradient, dim=-1)
    origins = s.points + (SHADOW_OFFSET_MM / unit_mm) * n
    # a Fibonacci spiral over the spherical cap of half-angle cone_deg around the light
    k = torch.arange(n_dirs, dtype=light.dtype, device=light.device) + 0.5
    cos_cap = math.cos(math.radians(cone_deg))
    z = 1.0 - (1.0 - cos_cap) * k / n_dirs if n_dirs > 1 else torch.ones(1, dtype=light.dtype)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = (1.0 - z * z).clamp_min(0.0).sqrt()
    local = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)  # around +z
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(light[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = torch.nn.functional.normalize(torch.linalg.cross(light, helper.to(light)), dim=0)
    e2 = torch.linalg.cross(light, e1)
    dirs = local @ torch.stack([e1, e2, light])
    # a direction below the hit's own tangent plane is the shading's clamp, not a cast shadow: not traced.
    # The others in one batch (the march evaluates only the rays still in flight)
    above = (n @ dirs.T).T > 0                                     # [n_dirs, n]
    d_i, p_i = torch.nonzero(above, as_tuple=True)
    o, dd = origins[p_i], dirs[d_i]
    blocked = torch.zeros_like(above)
    t_far = ray_aabb_intersect(o, dd, -1.0, 1.0).t_far
    blocked[d_i, p_i] = sphere_trace(model.sdf, o, dd, torch.zeros_like(t_far), t_far, max_steps=trace.max_steps,
                                     hit_eps=trace.hit_eps, secant_steps=0).hit
    seen = (~blocked).to(origins.dtype).sum(0)
    return seen / len(dirs)


def _radius(sigma: float) -> int:
    return max(1, int(3.0 * sigma + 0.5)) if sigma > 0 else 0


def _circular_kernel(sigma: float, n: int, device: torch.device) -> Tensor:
    """The normalized Gaussian of ``sigma`` samples cut at 3 sigma, centred on sample 0 of a circular
    array of length ``n`` (a unit impulse for sigma 0)."""
    r = _radius(sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else torch.ones(1, device=device)
    out = torch.zeros(n, device=device)
    out[x.long() % n] = k / k.sum()
    return out


class PixelBlur:
    """A Gaussian blur (sigma in pixels; one, or one per channel) of per-pixel values [n, C] at fixed
    integer pixels [n, 2] (u, v), distinct, normalized over the pixels present (a missing neighbour does
    not darken the border). Differentiable w.r.t. the values.

    Skin scatters light under its surface: shading is blurred over about a millimetre before it
    leaves the skin, and a sharp shading model would explain the blur with flattened geometry.
    The channels go through one FFT, zero-padded so nothing wraps around (on CPU several
    times faster, with its backward, than separable convolutions); the blurred coverage that
    normalizes them is computed once for the fixed pixels.
    """

    def __init__(self, pixels: Tensor, sigma_px: float | tuple[float, ...], channels: int = 3):
        sigmas = tuple(sigma_px) if isinstance(sigma_px, tuple) else (float(sigma_px),)
        self.sigmas = sigmas * channels if len(sigmas) == 1 else sigmas
        if len(self.sigmas) != channels:
            raise ValueError(f"{len(self.sigmas)} sigmas for {channels} channels")
        self.active = max(self.sigmas) > 0
        if not self.active:
            return
        pad = max(_radius(sig) for sig in self.sigmas)
        uv = pixels.round().long()
        uv = uv - uv.min(dim=0).values + pad
        # (h, w), rounded up to lengths whose only prime factors are 2, 3, 5: an FFT of 437 samples
        # takes 2-3x that of 450
        self.size = tuple(next_fast_len(int(x) + 1 + pad, real=True) for x in uv.max(dim=0).values.flip(0))
        h, w = self.size
        self.flat = uv[:, 1] * w + uv[:, 0]  # each pixel's place in the flattened padded image
        # the transform of the sampled kernel (cut at 3 sigma), laid out circularly: with the padding,
        # exactly the spatial blur
        ky = torch.stack([torch.fft.fft(_circular_kernel(sig, h, pixels.device)).real for sig in self.sigmas])
        kx = torch.stack([torch.fft.rfft(_circular_kernel(sig, w, pixels.device)).real for sig in self.sigmas])
        self.transfer = ky[:, :, None] * kx[:, None, :]  # [C, h, w // 2 + 1]
        coverage = self._blur(torch.ones(len(uv), channels, device=pixels.device))
        self.inv_coverage = 1.0 / coverage.clamp_min(1e-6)

    def _blur(self, values: Tensor) -> Tensor:
        # index_copy / index_select on the flattened image: their backwards are a plain gather and an
        # index_add, where advanced indexing's backward sorts for a deterministic accumulate (3 of a
        # step's ~25 ms on the example)
        c = values.shape[1]
        image = values.new_zeros(c, self.size[0] * self.size[1]).index_copy(1, self.flat, values.T)
        image = torch.fft.irfft2(torch.fft.rfft2(image.view(c, *self.size)) * self.transfer.to(values.dtype),
                                 s=self.size)
        return image.reshape(c, -1).index_select(1, self.flat).T

    def __call__(self, values: Tensor) -> Tensor:
        if not self.active:
            return values
        return self._blur(values) * self.inv_coverage.to(values.dtype)


def blur_at_pixels(values: Tensor, pixels: Tensor, sigma_px: float | tuple[float, ...]) -> Tensor:
    """``PixelBlur(pixels, sigma_px, C)(values)`` for values [n, C]: a one-off blur."""
    return PixelBlur(pixels, sigma_px, values.shape[1])(values)

"""What the camera sees of a model with a height map (fastsider.render): a height moves the traced
surface, and stage 2's linearized hits (freeze_surface + render_height_map) match traced hits of
f = F - h, points, normals and derivatives."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastsider.nn.fields import Appearance, Geometry, SiderModel
from fastsider.nn.maps import HeightMap
from fastsider.nn.shading import SphericalHarmonicsShading
from fastsider.sdf.trace import ray_aabb_intersect, sphere_trace
from synthetic_scenes import CAMERA, NORM, SIZE


def plane_model_with_height(values_mm: torch.Tensor):
    """f = (plane z = 600 mm) - h, h on a SIZE^2 map over CAMERA; double precision, a grey albedo x SH2."""
    plane = lambda x: -x[:, 2]  # noqa: E731, unit box: positive in front of z = 600 mm, |grad| = 1
    grey = lambda x: torch.full_like(x, 0.5)  # noqa: E731
    model = SiderModel(Geometry(plane, None, HeightMap(CAMERA, NORM, SIZE)),
                       Appearance(None, SphericalHarmonicsShading(), grey), "torch", "autograd", 1e-3).double()
    with torch.no_grad():
        model.geometry.height.values.copy_(values_mm)
    return model


def pixel_rays_to_plane(pix: torch.Tensor):
    from fastsider.render import RayBundle

    dirs = torch.stack([(pix[:, 0] - CAMERA.cx) / CAMERA.fx, (pix[:, 1] - CAMERA.cy) / CAMERA.fy,
                        torch.ones(len(pix), dtype=torch.float64)], 1)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    origins = -torch.tensor(NORM.centre, dtype=torch.float64) / NORM.half_size * torch.ones(len(pix), 1,
                                                                                              dtype=torch.float64)
    box = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    return RayBundle(pix, origins, dirs, box.t_near, box.t_far, torch.zeros(len(pix), 3, dtype=torch.float64))


def bump_values(amplitude_mm: float, sigma_px: float = 6.0) -> torch.Tensor:
    r = torch.arange(SIZE, dtype=torch.float64)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    return amplitude_mm * torch.exp(-((cols - 30.0) ** 2 + (rows - 34.0) ** 2) / (2 * sigma_px**2))


def test_a_constant_height_moves_the_traced_surface_towards_the_camera():
    """f = plane(z = 600 mm) - h: a constant h = 0.8 mm moves every hit 0.8 mm closer, to tracer precision."""
    model = plane_model_with_height(torch.full((SIZE, SIZE), 0.8, dtype=torch.float64))
    pix = torch.tensor([[10.0, 20.0], [32.0, 32.0], [50.0, 5.0]], dtype=torch.float64)
    rays = pixel_rays_to_plane(pix)
    hit = sphere_trace(model.sdf, rays.origins, rays.dirs, rays.t_start, rays.t_end, max_steps=64, hit_eps=1e-7,
                       secant_steps=8)
    assert bool(hit.hit.all())
    z_mm = NORM.to_mm(hit.points.numpy())[:, 2]
    assert np.allclose(z_mm, 600.0 - 0.8, atol=1e-3)


def test_linearized_hits_match_traced_hits_and_their_derivative():
    """The height map's stage 2 never re-traces: its hits come from one Newton step on the frozen F.
    Against sphere tracing of f = F - h: same points and normals for a 0.5 mm bump, and the same
    derivative of a hit's depth w.r.t. a map value as finite differences of traced hits."""
    from fastsider.config import TraceConfig
    from fastsider.render import freeze_surface, render_height_map

    pix = torch.tensor([[30.0, 34.0], [24.0, 30.0], [36.0, 40.0], [10.0, 50.0]], dtype=torch.float64)
    rays = pixel_rays_to_plane(pix)
    trace = TraceConfig(max_steps=64, hit_eps=1e-9, use_occupancy_grid=False)

    flat = plane_model_with_height(torch.zeros(SIZE, SIZE, dtype=torch.float64))
    frozen = freeze_surface(flat, rays, torch.zeros(4, 3, dtype=torch.float64), trace)  # frozen where stage 2 starts: h = 0
    bumped = plane_model_with_height(bump_values(0.5))
    flat.geometry.height.values.data.copy_(bumped.geometry.height.values.data)
    x, normals, _ = render_height_map(flat, frozen, create_graph=False)
    traced = sphere_trace(bumped.sdf, rays.origins, rays.dirs, rays.t_start, rays.t_end, max_steps=64,
                          hit_eps=1e-10, secant_steps=8)
    assert bool(traced.hit.all())
    assert np.abs(NORM.to_mm(x.detach().numpy()) - NORM.to_mm(traced.points.numpy())).max() < 2e-3  # mm
    true_normals = torch.nn.functional.normalize(bumped.sdf_with_gradient(traced.points).gradient, dim=-1)
    cos = (normals.detach() * true_normals.detach()).sum(-1).clamp(max=1.0)
    assert torch.rad2deg(torch.acos(cos)).max() < 0.05  # degrees

    # d depth / d value at the bump centre's cell, linearized (autograd) vs traced (central differences)
    values = flat.geometry.height.values
    (grad,) = torch.autograd.grad(render_height_map(flat, frozen)[0][0, 2], values)
    eps = 1e-3  # mm
    depths = []
    for sign in (1.0, -1.0):
        b = plane_model_with_height(bump_values(0.5))
        b.geometry.height.values.data[0, 34, 30] += sign * eps
        hit = sphere_trace(b.sdf, rays.origins[:1], rays.dirs[:1], rays.t_start[:1], rays.t_end[:1], max_steps=64,
                           hit_eps=1e-12, secant_steps=12)
        depths.append(hit.points[0, 2].item())
    fd = (depths[0] - depths[1]) / (2 * eps)
    assert grad[0, 34, 30].item() == pytest.approx(fd, rel=0.02)
    assert fd < 0  # raising h brings the surface towards the camera (smaller z)


class _TwoSpheres(torch.nn.Module):
    """A unit-box SDF: a sphere of radius 0.4 at the origin and a small one (0.1) at (0, 0, -0.7)."""

    def sdf(self, x):
        big = x.norm(dim=-1) - 0.4
        small = (x - torch.tensor([0.0, 0.0, -0.7])).norm(dim=-1) - 0.1
        return torch.minimum(big, small)


def test_light_visibility_finds_the_cast_shadow_and_only_it():
    from fastsider.config import TraceConfig
    from fastsider.render import light_visibility

    # hits on the big sphere: facing the small one (its shadow, light along -z), beside it, and one
    # turned away from the light (an attached shadow: the shading's clamp, counted as visible)
    normals = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0], [0.6, 0.0, -0.8], [0.0, 0.0, 1.0]]), dim=-1)
    points = 0.4 * normals
    surface = SimpleNamespace(points=points, gradient=normals)
    light = torch.tensor([0.0, 0.0, -1.0])
    vis = light_visibility(_TwoSpheres(), surface, light, TraceConfig(), unit_mm=100.0, n_dirs=8, cone_deg=2.0)
    assert vis.tolist() == [0.0, 1.0, 1.0]
    # a wide cone puts the first hit in a penumbra: some directions pass the small sphere
    soft = light_visibility(_TwoSpheres(), surface, light, TraceConfig(), unit_mm=100.0, n_dirs=16, cone_deg=30.0)
    assert 0.0 < float(soft[0]) < 1.0

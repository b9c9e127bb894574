"""Small synthetic scenes with known geometry (no photo, no detector): a height-field patch and a
bump on a dome for the stages; a 64 px camera on a box 600 mm away for the maps, the meshing and
the render; a sphere in the unit box and its camera rays for tracing and the occupancy grid."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import trimesh

from fastsider.camera import Camera, Normalization
from fastsider.pictures import raycast_mesh

# a 64 px crop's camera looking at a 120 mm box 600 mm away (the maps over it and the render)
SIZE = 64
CAMERA = Camera(SIZE, SIZE, fx=320.0, fy=320.0, cx=(SIZE - 1) / 2, cy=(SIZE - 1) / 2)
NORM = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=60.0)  # a 120 mm box 600 mm away

LIGHT = np.array([0.6, -0.5, -0.62]) / np.linalg.norm([0.6, -0.5, -0.62])  # towards the light, camera frame
ALBEDO = 0.75
AMBIENT = 0.15


def height_field_mesh(size_mm: float, depth_mm: float, n: int, bump_mm: float, sigma_mm: float,
                      dome_radius_mm: float = 0.0) -> trimesh.Trimesh:
    """A square patch facing the camera at z = depth + r^2 / 2R - bump * gauss(r), normals towards the
    camera (R = ``dome_radius_mm``; 0: flat)."""
    xs = np.linspace(-size_mm / 2, size_mm / 2, n)
    x, y = np.meshgrid(xs, xs, indexing="xy")
    r2 = x**2 + y**2
    z = depth_mm - bump_mm * np.exp(-r2 / (2 * sigma_mm**2)) + (r2 / (2 * dome_radius_mm) if dome_radius_mm else 0.0)
    verts = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + n], 1), np.stack([a + 1, a + n + 1, a + n], 1)])
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.face_normals[:, 2].mean() > 0:
        mesh.invert()
    return mesh


class BumpScene(NamedTuple):
    camera: Camera
    image: np.ndarray        # [S, S, 3] float, Lambertian render of the true surface
    true_mesh: trimesh.Trimesh
    coarse_mesh: trimesh.Trimesh
    true_depth: np.ndarray   # [S, S] mm
    bump_region: np.ndarray  # [S, S] bool, where the bump is more than a third of its height


def bump_scene(size_px: int = 64, bump_mm: float = 4.0, sigma_mm: float = 12.0, dome_radius_mm: float = 100.0) -> BumpScene:
    """A bump on a dome, and the dome alone as the coarse surface. The dome's own shading pins the
    light: on a flat patch a bump and a dent under the mirrored light give the same picture."""
    cam = Camera(size_px, size_px, fx=size_px * 5.0, fy=size_px * 5.0, cx=(size_px - 1) / 2, cy=(size_px - 1) / 2)
    true = height_field_mesh(120.0, 600.0, 121, bump_mm, sigma_mm, dome_radius_mm)
    coarse = height_field_mesh(120.0, 600.0, 41, 0.0, sigma_mm, dome_radius_mm)
    surf = raycast_mesh(true.vertices, true.faces, cam)
    shading = ALBEDO * np.clip(surf.normals @ LIGHT, 0, 1) + AMBIENT
    image = np.repeat(np.where(surf.mask, shading, 0.0)[..., None], 3, axis=2)
    flat = raycast_mesh(coarse.vertices, coarse.faces, cam)
    region = surf.mask & ((flat.depth - surf.depth) > bump_mm / 3)
    return BumpScene(cam, image.astype(np.float32), true, coarse, surf.depth, region)


def bump_depth_error_mm(model, rays, norm, trace, scene: BumpScene) -> float:
    """Mean |traced depth - true depth| (mm) over the scene's bump region, through the sphere tracer."""
    from fastsider.render import render_views

    r = render_views(model, rays, trace)
    pix = rays.pixels[r.hit].long().numpy()
    depth = np.full(scene.true_depth.shape, np.nan)
    depth[pix[:, 1], pix[:, 0]] = norm.to_mm(r.points.numpy())[:, 2]
    return float(np.nanmean(np.abs(depth - scene.true_depth)[scene.bump_region]))


# a sphere in the unit box, seen from (0, 0, -3) (tracing and the occupancy grid)
CENTRE = (0.1, -0.05, 0.2)
RADIUS = 0.5
GRAZE = 0.02          # rays whose closest approach is within this of a sheet's radius are
                      # left out of mask/depth checks: near-tangent rays converge slowly and
                      # "hit or miss" is decided by hit_eps, not by geometry
TRACE = dict(max_steps=128, hit_eps=1e-5, secant_steps=8)


def camera_rays(device, n=48, half_fov=0.3, dtype=torch.float32):
    """Pinhole at (0, 0, -3) looking down +z; n x n unit directions."""
    u = torch.linspace(-half_fov, half_fov, n, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(u, u, indexing="xy")
    dirs = torch.stack([uu, vv, torch.ones_like(uu)], -1).view(-1, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = torch.tensor([0.0, 0.0, -3.0], dtype=dtype, device=device).expand_as(dirs)
    return origins.contiguous(), dirs


def sphere_sdf(centre, radius, scale=1.0):
    def f(x):
        return scale * ((x - x.new_tensor(centre)).norm(dim=-1) - radius)
    return f


def sphere_depth(origins, dirs, centre, radius):
    """Closed-form first hit t (nan on misses) and closest-approach distance of each ray."""
    oc = origins - origins.new_tensor(centre)
    b = (oc * dirs).sum(-1)
    closest = (oc.pow(2).sum(-1) - b * b).clamp_min(0).sqrt()
    disc = b * b - (oc.pow(2).sum(-1) - radius**2)
    return -b - disc.sqrt(), closest

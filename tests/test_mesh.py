"""Meshing the SDF (fastsider.sdf.mesh): the front sheet of a shell, no walls at a band's edge, the band
sampled slab by slab, a coarse SDF sparing the full one, marching cubes on the band's bounding box."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from fastsider.camera import Normalization
from synthetic_scenes import CAMERA

NORM = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=40.0)  # an 80 mm box 600 mm away


def test_meshing_keeps_the_front_sheet_of_a_shell_and_the_mid_surface_is_the_plane():
    """A 1 mm shell around the plane z = 600 mm: the kept sheet is the camera-facing one (599.5 mm),
    oriented towards the camera; moved to the mid-surface it lies on the plane."""
    import torch

    from fastsider.sdf.mesh import extract_face_mesh
    from fastsider.sdf.shell import to_mid_surface

    cam, norm = CAMERA, NORM
    plane_z = (600.0 - norm.centre[2]) / norm.half_size

    def shell_sdf(x):  # unit box in, unit box out
        return (x[:, 2] - plane_z).abs() - 0.5 / norm.half_size
    verts, faces = extract_face_mesh(shell_sdf, norm, None, 96, cam, np.ones((64, 64), bool),
                                     torch.device("cpu"), 1 << 16)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert len(faces) > 100
    np.testing.assert_allclose(verts[:, 2], 599.5, atol=1e-3)
    assert (mesh.face_normals[:, 2] < -0.99).all()  # towards the camera (-z)
    mid = to_mid_surface(verts, mesh.vertex_normals, 0.5)
    np.testing.assert_allclose(mid[:, 2], 600.0, atol=1e-3)


def test_meshing_a_solid_in_a_band_keeps_no_walls_at_the_band_edge():
    """A solid half-space behind the plane z = 600 mm (negative behind it, as a face's signed SDF),
    evaluated only in a band around the plane whose back edge is a staircase (an occupancy grid's
    cells): behind the plane the SDF is still negative against the positive fill outside the band,
    and the stairs' risers face the camera on one side. Those crossings are not surface; every kept
    vertex must be on the plane."""
    import torch

    from fastsider.sdf.occupancy import OccupancyGrid
    from fastsider.sdf.mesh import extract_face_mesh

    cam, norm = CAMERA, NORM

    def solid_sdf(x):  # unit box; the plane through the box centre, inside = behind it (+z)
        return -x[:, 2]
    r = 32
    c = (torch.arange(r) + 0.5) / r * 2 - 1  # cell centres
    cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
    back = 0.2 + 0.15 * torch.floor((cx + 1.0) * 3.0)  # deeper by 6 mm every third of the box
    band = OccupancyGrid((cz > -0.2) & (cz < back) & (cx.abs() < 0.6) & (cy.abs() < 0.6))
    verts, faces = extract_face_mesh(solid_sdf, norm, band, 96, cam, np.ones((64, 64), bool),
                                     torch.device("cpu"), 1 << 16)
    assert len(faces) > 100
    np.testing.assert_allclose(verts[:, 2], 600.0, atol=1e-3)


@pytest.mark.parametrize("slab_points", [7 * 33 * 33, 1 << 20])  # several x-planes a slab, and all
def test_band_sampling_slab_by_slab_matches_the_sdf_at_every_lattice_point(monkeypatch, slab_points):
    """The volume is filled slab by slab along x (memory); every band sample must hold the SDF of
    its own lattice point, x index first, and everything outside the band the OUTSIDE fill."""
    import torch

    from fastsider.sdf import mesh
    from fastsider.sdf.occupancy import OccupancyGrid

    monkeypatch.setattr(mesh, "SLAB_POINTS", slab_points)
    r = 33  # 33 x-planes: the last slab is a partial one

    def sdf(x):  # no symmetry between the axes, so a transposed lattice would show
        return x[:, 0] + 10.0 * x[:, 1] + 100.0 * x[:, 2]
    c = torch.arange(8)
    band = OccupancyGrid(((c[:, None, None] + 2 * c[None, :, None] + c[None, None, :]) % 3) == 0)
    values, evaluated = mesh.sample_sdf_volume(sdf, r, band, torch.device("cpu"), chunk=100)
    axis = np.linspace(-1.0, 1.0, r)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    lattice = torch.tensor(np.stack([x, y, z], -1).reshape(-1, 3), dtype=torch.float32)
    expected_in = band.contains(lattice).numpy().reshape(r, r, r)
    assert 0.1 < expected_in.mean() < 0.9
    np.testing.assert_array_equal(evaluated, expected_in)
    np.testing.assert_allclose(values[evaluated], (x + 10.0 * y + 100.0 * z)[evaluated], atol=1e-4)
    assert (values[~evaluated] == mesh.OUTSIDE).all()


def test_a_coarse_sdf_spares_the_full_one_away_from_the_surface_and_the_mesh_is_unchanged():
    """Full SDF: a sphere with a 1 mm dimple; coarse: the plain sphere, margin 3 mm. Within the margin
    the full SDF is evaluated, beyond it the coarse sign stands: the same mesh, far fewer calls."""
    import torch

    from fastsider.sdf.occupancy import OccupancyGrid
    from fastsider.sdf.mesh import Coarse, extract_face_mesh

    cam, norm = CAMERA, NORM

    def sphere(x):  # radius 24 mm
        return x.norm(dim=-1) - 0.6

    calls = {"points": 0}

    def dimpled(x):  # 1 mm deep towards the camera's side of the sphere
        calls["points"] += len(x)
        return sphere(x) + 0.025 * torch.exp(-((x[:, 0] ** 2 + x[:, 1] ** 2) / 0.02)) * (x[:, 2] < 0)

    # a band that starts away from index 0 on every axis, and chunks smaller than a slab's band
    c = (torch.arange(16) + 0.5) / 16 * 2 - 1
    cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
    band = OccupancyGrid(((cx**2 + cy**2 + cz**2).sqrt() - 0.6).abs() < 0.3)
    full = extract_face_mesh(dimpled, norm, band, 64, cam, np.ones((64, 64), bool), torch.device("cpu"), 1000)
    n_full, calls["points"] = calls["points"], 0
    spared = extract_face_mesh(dimpled, norm, band, 64, cam, np.ones((64, 64), bool), torch.device("cpu"),
                               1000, Coarse(sphere, 3.0 / norm.half_size))
    assert len(full[1]) > 500
    np.testing.assert_array_equal(spared[1], full[1])
    np.testing.assert_allclose(spared[0], full[0], atol=1e-9)
    assert calls["points"] < 0.3 * n_full  # 3 mm of a 12 mm band each side
    z_min = full[0][:, 2].min()  # the dimple is there: the front pole is 1 mm behind the sphere's
    assert 600.0 - 24.0 + 0.8 < z_min < 600.0 - 24.0 + 1.2


def test_marching_cubes_runs_on_the_band_bounding_box():
    from fastsider.sdf.mesh import evaluated_bounds

    ev = np.zeros((10, 12, 14), dtype=bool)
    assert evaluated_bounds(ev) == (slice(0, 10), slice(0, 12), slice(0, 14))  # nothing: all of it
    ev[2, 5, 13] = ev[6, 3, 7] = True
    assert evaluated_bounds(ev) == (slice(2, 7), slice(3, 6), slice(7, 14))
    ev[:] = False
    ev[9, 0, 4] = True  # one sample at the far edge: still a cube's width
    assert evaluated_bounds(ev) == (slice(8, 10), slice(0, 2), slice(4, 6))

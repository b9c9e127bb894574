"""The shell SDF target (fastsider.sdf.shell): the paper's shell and the signed target against a plane,
and the move from the shell's outer sheet back to the coarse surface."""

from __future__ import annotations

import numpy as np
import pytest


def test_mid_surface_undoes_the_shell_offset_on_a_sphere():
    """Points on the outer sheet of a shell around a 50 mm sphere go back to radius 50 mm."""
    from fastsider.sdf.shell import to_mid_surface

    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    outer = dirs * (50.0 + 0.5)                      # shell of 1 mm: outer sheet at r + eps/2
    back = to_mid_surface(outer, dirs * 3.0, 0.5)  # normals need not be unit length
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 50.0, atol=1e-9)


def test_signed_target_is_the_signed_distance_to_a_camera_facing_plane():
    """target='signed': zero on the mesh, positive towards the camera, |.| the exact distance."""
    from fastsider.camera import Normalization
    from fastsider.sdf.shell import ShellSDF
    from synthetic_scenes import height_field_mesh

    mesh = height_field_mesh(100.0, 600.0, 21, bump_mm=0.0, sigma_mm=10.0)  # faces towards the camera (-z)
    norm = Normalization.around(mesh.vertices, 0.15)
    sdf = ShellSDF(mesh.vertices, mesh.faces, 1.0, norm, target="signed")
    z_mm = np.array([590.0, 599.0, 600.0, 603.0])
    pts = norm.to_unit(np.stack([np.zeros(4), np.full(4, 10.0), z_mm], 1))
    np.testing.assert_allclose(sdf.sdf(pts) * norm.half_size, 600.0 - z_mm, atol=1e-9)
    assert sdf.surface_offset_mm == 0.0
    shell = ShellSDF(mesh.vertices, mesh.faces, 1.0, norm, target="shell")
    np.testing.assert_allclose(shell.sdf(pts) * norm.half_size, np.abs(600.0 - z_mm) - 0.5, atol=1e-9)
    assert shell.surface_offset_mm == pytest.approx(0.5)

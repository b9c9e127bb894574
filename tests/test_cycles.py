"""The physically based renderer (eval/cycles.py, Blender's Cycles through bpy): its camera is the
case's camera.json, and its photos are what a camera makes (sRGB, noise, JPEG).

bpy is the optional ``bench`` extra; CI installs it (.ci/run)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from fastsider.camera import Camera
from fastsider.pictures import raycast_mesh

bpy = pytest.importorskip("bpy", reason="the bench extra (pip install -e '.[bench]') brings bpy")

from fastsider.eval.cycles import (  # noqa: E402
    camera_intrinsics, draw_scene, finish_photo, render_cycles, srgb_decode, srgb_encode,
)


def test_silhouette_matches_the_projected_mesh_with_an_off_centre_camera():
    """A tiny render's coverage against the Embree ray cast of the same mesh and camera.json: IoU > 0.98,
    with the principal point moved off the centre (the shift's sign and units) and a non-square image."""
    cam = Camera(width=80, height=64, fx=300.0, fy=300.0, cx=(80 - 1) / 2 + 7.0, cy=(64 - 1) / 2 - 5.0)
    head = trimesh.creation.icosphere(3, radius=45.0)
    head.vertices[:, 1] *= 1.3  # taller than wide: a flip of x or y would show
    head.apply_translation([12.0, -8.0, 600.0])
    v, f = np.asarray(head.vertices), np.asarray(head.faces)
    scene = draw_scene(np.random.default_rng(0))
    linear, alpha = render_cycles(v, f, np.full((len(v), 3), 0.5), cam, scene, samples=4)
    assert linear.shape == (64, 80, 3) and alpha.shape == (64, 80)
    mine, truth = alpha > 0.5, raycast_mesh(v, f, cam).mask
    iou = (mine & truth).sum() / (mine | truth).sum()
    assert iou > 0.98, iou
    assert np.all(linear[mine].max(axis=1) > 0)  # lit


def test_intrinsics_are_the_pinhole_in_blender_terms():
    cam = Camera(width=512, height=512, fx=2048.0, fy=2048.0, cx=255.5, cy=255.5)
    k = camera_intrinsics(cam)
    assert k["lens"] == pytest.approx(2048.0 * 36.0 / 512) and k["shift_x"] == 0.0 and k["shift_y"] == 0.0
    off = camera_intrinsics(Camera(width=512, height=512, fx=2048.0, fy=2048.0, cx=255.5 + 51.2, cy=255.5))
    assert off["shift_x"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="square pixels"):
        camera_intrinsics(Camera(width=64, height=64, fx=100.0, fy=120.0, cx=31.5, cy=31.5))


def test_finished_photo_is_srgb_with_noise_and_jpeg():
    rng = np.random.default_rng(1)
    scene = draw_scene(rng)
    linear = np.full((32, 32, 3), 0.2)
    alpha = np.zeros((32, 32))
    alpha[8:24, 8:24] = 1.0
    backdrop = np.full((32, 32, 3), 0.25)
    photo = finish_photo(linear * alpha[..., None], alpha, backdrop, scene, np.random.default_rng(2))
    assert photo.dtype == np.uint8 and photo.shape == (32, 32, 3)
    # exposure puts the face at 0.7 linear: 0.854 after the sRGB curve
    assert photo[12:20, 12:20].mean() / 255 == pytest.approx(float(srgb_encode(np.array(0.7))), abs=0.03)
    assert photo[:4, :4].mean() / 255 == pytest.approx(0.25, abs=0.03) and photo[12:20, 12:20].std() > 0.5
    x = np.linspace(0, 1, 11)
    np.testing.assert_allclose(srgb_decode(srgb_encode(x)), x, atol=1e-9)


def test_a_tiny_cycles_case_is_made_and_written(tmp_path):
    from dataclasses import replace

    from fastsider.eval.synthetic import make_case, write_case
    from fastsider.eval.synthetic_params import CYCLES_PARAMS

    params = replace(CYCLES_PARAMS, image_size=64, cycles_samples=4, loop_levels=2, coarse_loop_levels=1)
    case = make_case(2, params)
    assert case.image.shape == (64, 64, 3) and case.info["scene"]["jpeg_quality"] >= 80
    import igl

    sq, _, _ = igl.point_mesh_squared_distance(case.coarse_vertices, case.base_vertices, case.gt_faces)
    assert 1.5 < np.sqrt(sq).max() <= 2.6  # the coarse input is off by a smooth error peaking at 2.5 mm
    write_case(case, tmp_path / "c")
    assert (tmp_path / "c" / "base.ply").is_file() and (tmp_path / "c" / "image.png").is_file()

"""The camera convention (fastsider.camera): projection round trips, pixel rays through their pixels,
JSON round trip and the working crop's camera."""

from __future__ import annotations

import json

import numpy as np

from fastsider.camera import Camera, pixel_rays, project, unproject
from fastsider.io import square_crop_around


def test_project_unproject_round_trip():
    cam = Camera(640, 480, 900.0, 910.0, 321.5, 239.0)
    rng = np.random.default_rng(0)
    pts = rng.uniform([-100, -100, 500], [100, 100, 900], size=(50, 3))
    px = project(cam, pts)
    np.testing.assert_allclose(unproject(cam, px, pts[:, 2]), pts, atol=1e-9)


def test_pixel_rays_pass_through_their_pixels():
    import torch

    cam = Camera(64, 64, 100.0, 100.0, 31.5, 31.5)
    pix = torch.tensor([[0.0, 0.0], [31.5, 31.5], [63.0, 10.0]], dtype=torch.float64)
    o, d = pixel_rays(cam, pix)
    pts = (o + 700.0 * d).numpy()
    np.testing.assert_allclose(project(cam, pts), pix.numpy(), atol=1e-9)
    np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0)


def test_camera_json_round_trip_and_crop():
    cam = Camera(512, 400, 1000.0, 1000.0, 250.0, 190.0)
    again = Camera.from_json_dict(json.loads(json.dumps(cam.to_json_dict())))
    assert again.to_json_dict() == cam.to_json_dict()
    crop = square_crop_around(np.array([[100.0, 80.0], [300.0, 260.0]]), 0.25, 128)
    pts = np.array([[10.0, -20.0, 800.0], [-30.0, 15.0, 760.0]])
    # projecting with the cropped camera == projecting then cropping
    cropped = cam.transformed(crop.scale, crop.offset_x, crop.offset_y, 128, 128)
    np.testing.assert_allclose(project(cropped, pts), crop.to_crop(project(cam, pts)), atol=1e-9)
    np.testing.assert_allclose(crop.to_input(crop.to_crop(pts[:, :2])), pts[:, :2], atol=1e-9)

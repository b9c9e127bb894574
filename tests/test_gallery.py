"""The real-photo gallery (eval/gallery.py): every photo is there with its source and licence, and
the side-lit picture is lit from where it says."""

from __future__ import annotations

import numpy as np
import trimesh

from fastsider.camera import Camera
from fastsider.io import load_image, save_mesh


def test_every_gallery_photo_loads_and_says_where_it_is_from():
    from fastsider.config import ImageConfig
    from fastsider.eval.gallery import PHOTOS

    assert len({p.name for p in PHOTOS}) == len(PHOTOS) >= 4
    for photo in PHOTOS:
        assert photo.source and "public domain" in photo.licence and photo.what, photo.name
        path = photo.path()
        if path is None:  # the embedded example
            continue
        image = load_image(path, ImageConfig())
        assert image.ndim == 3 and min(image.shape[:2]) >= 400, photo.name


def test_relit_mesh_is_bright_where_it_faces_the_light(tmp_path):
    from fastsider.eval.gallery import SIDE_LIGHT, relit

    cam = Camera(width=64, height=64, fx=256.0, fy=256.0, cx=31.5, cy=31.5)
    ball = trimesh.creation.icosphere(4, radius=60.0)
    ball.apply_translation([0.0, 0.0, 600.0])
    save_mesh(tmp_path / "m.ply", np.asarray(ball.vertices), np.asarray(ball.faces))
    picture = relit(tmp_path / "m.ply", cam)
    assert picture.shape == (64, 64, 3) and np.all(picture[0, 0] == 1.0)  # background white
    # SIDE_LIGHT points up-left (x < 0, y < 0): the upper left of the ball is lit, the lower right dark
    assert SIDE_LIGHT[0] < 0 and SIDE_LIGHT[1] < 0
    assert picture[22, 22, 0] > picture[42, 42, 0] + 0.3

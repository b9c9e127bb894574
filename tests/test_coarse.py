"""`fastsider coarse` on the example photo: the files it writes, a camera that maps the mesh onto the
input photo's landmarks, and the user-mesh path fed its own mesh and camera back."""

from __future__ import annotations

import numpy as np

from fastsider.camera import Camera, project
from fastsider.cli import main
from fit_helpers import read_mesh


def test_coarse_cli_on_example(tmp_path, capsys, example_files):
    photo, lmk = example_files
    out = tmp_path / "o" / "coarse.ply"
    assert main(["coarse", str(photo), "--landmarks", str(lmk), "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert {"coarse.ply", "camera.json", "landmarks.npy", "overlay.png", "coarse_landmarks7.txt"} <= names
    assert not any(n.startswith(".fastsider-tmp") for n in names)
    cam = Camera.load(out.parent / "camera.json")
    mesh = read_mesh(out)
    # the written camera maps the landmark vertices onto the landmarks of the *input* photo
    lm = np.load(out.parent / "landmarks.npy")
    err = np.linalg.norm(project(cam, np.asarray(mesh.vertices)[:468]) - lm[:468, :2], axis=1)
    assert err.mean() < 3.0, err.mean()  # ~1 crop px = ~2 input px at this crop scale


def test_user_mesh_path_round_trip(tmp_path, example_files):
    """Feeding `coarse`'s own mesh + camera.json back in reproduces the same crop and mesh."""
    photo, lmk = example_files
    first = tmp_path / "a"
    assert main(["coarse", str(photo), "--landmarks", str(lmk), "--out", str(first)]) == 0
    second = tmp_path / "b"
    assert main(["coarse", str(photo), "--coarse", str(first / "coarse.ply"), "--camera",
                 str(first / "camera.json"), "--out", str(second)]) == 0
    a = read_mesh(first / "coarse.ply")
    b = read_mesh(second / "coarse.ply")
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-4)
    assert not (second / "landmarks.npy").exists()  # no detection on this path

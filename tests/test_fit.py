"""End-to-end `fastsider fit` runs on the example photo with the tiny config: every output written,
the mesh on the coarse face, and the fast preset's lattice + height map path."""

from __future__ import annotations

import json

import igl
import numpy as np
import pytest

from fastsider.cli import main
from fit_helpers import fit_argv, read_mesh

pytestmark = pytest.mark.slow  # whole fits


def test_fit_end_to_end_tiny(tmp_path, example_files):
    photo, lmk = example_files
    out = tmp_path / "run" / "mesh.ply"
    assert main(fit_argv(photo, lmk, out)) == 0
    d = out.parent
    for name in ("mesh.ply", "coarse.ply", "camera.json", "normals.png", "depth.npy", "depth.png",
                 "render.png", "overlay.png", "summary.json", "landmarks7.txt", "snapshots/step_00002.png"):
        assert (d / name).is_file(), name
    summary = json.loads((d / "summary.json").read_text())
    assert summary["stage2"]["iterations"] == 4 and summary["implementation"]["networks"] == "none"  # the fast preset has no MLP
    assert set(summary["seconds"]) >= {"prepare", "stage1", "stage2", "outputs", "total"}
    assert np.linalg.norm(summary["light"]["light_direction"]) == pytest.approx(1.0, abs=1e-3)  # the fitted lamp
    mesh = read_mesh(out)
    coarse = read_mesh(d / "coarse.ply")
    assert len(mesh.faces) > 100 and np.isfinite(mesh.vertices).all()
    # the detailed mesh lies on the coarse face (same frame, mm): a few mm at most after 300 short steps
    sq, _, _ = igl.point_mesh_squared_distance(np.asarray(mesh.vertices[::10]), np.asarray(coarse.vertices),
                                               np.asarray(coarse.faces))
    assert np.median(np.sqrt(sq)) < 3.0, np.median(np.sqrt(sq))
    depth = np.load(d / "depth.npy")
    assert depth.shape == (96, 96) and np.median(depth[depth > 0]) > 500.0  # mm in front of the camera


def test_fit_with_height_map_end_to_end(tmp_path, example_files):
    photo, lmk = example_files
    out = tmp_path / "hm" / "mesh.ply"
    argv = fit_argv(photo, lmk, out, "model.lattice.resolution=64", "model.shading=albedo_sh",
                    "stage2.skip_features=true", "stage2.height_map.lr=0.05")
    assert main(argv) == 0
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["config"]["model"]["detail"] == "height_map"
    assert summary["stage1"]["iterations"] == 0  # the lattice base is exact: no stage-1 steps
    assert summary["stage2"]["iterations"] == 4 and summary["stage2"]["smoothness"] > 0.0  # h moved off zero
    assert np.array(summary["light"]["sh_coefficients_rgb"]).shape == (3, 9)

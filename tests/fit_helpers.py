"""The tiny `fastsider fit` configuration the end-to-end tests share (seconds on a CPU), the argv of
their runs and reading the meshes they write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

# stage-1 and MLP-detail keys act only where a test switches to the paper's path (the fast preset
# warns that they do nothing there)
TINY_FIT = ("image.resolution=96", "stage1.iterations=300", "stage1.batch_points=2048", "sdf_pool.size=49152",
            "stage2.iterations=4", "stage2.mlp.rays_per_batch=256", "stage2.sdf_points_per_batch=512",
            "stage2.snapshot_every=2", "mesh.resolution=64", "trace.grid_resolution=32",
            "model.lattice.resolution=96", "model.height_map.resolution=0", "export.texture_size=256")


def fit_argv(photo: Path, landmarks: Path, out: Path, *overrides: str, seed: int = 3) -> list[str]:
    """argv for ``fastsider fit`` on the example with the tiny config, plus more ``--set`` overrides."""
    argv = ["fit", str(photo), "--landmarks", str(landmarks), "--out", str(out), "--seed", str(seed)]
    return argv + set_flags(*TINY_FIT, *overrides)


def set_flags(*overrides: str) -> list[str]:
    """``--set key=value`` for each override, in order."""
    argv = []
    for t in overrides:
        argv += ["--set", t]
    return argv


def read_mesh(path: Path) -> trimesh.Trimesh:
    """A mesh a run wrote, as written (no merging or reordering)."""
    return trimesh.load(path, process=False)


def mesh_vertices(path: Path) -> np.ndarray:
    return np.asarray(read_mesh(path).vertices)

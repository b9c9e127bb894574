"""The tiny `fastsider fit` configuration the end-to-end tests share (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

# stage-1 and MLP-detail keys act only where a test switches to the paper's path (the fast preset
# warns that they do nothing there)
TINY_FIT = ("image.resolution=96", "stage1.iterations=300", "stage1.batch_points=2048", "sdf_pool.size=49152",
            "stage2.iterations=4", "stage2.mlp.rays_per_batch=256", "stage2.sdf_points_per_batch=512",
            "stage2.snapshot_every=2", "mesh.resolution=64", "trace.grid_resolution=32",
            "model.lattice.resolution=96", "model.height_map.resolution=0")


def fit_argv(photo: Path, landmarks: Path, out: Path, *overrides: str, seed: int = 3) -> list[str]:
    """argv for ``fastsider fit`` on the example with the tiny config, plus more ``--set`` overrides."""
    argv = ["fit", str(photo), "--landmarks", str(landmarks), "--out", str(out), "--seed", str(seed)]
    for t in (*TINY_FIT, *overrides):
        argv += ["--set", t]
    return argv

"""The tiny `fastsider fit` configuration the end-to-end tests share (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

TINY_FIT = ("image.resolution=96", "stage1.iterations=300", "stage1.batch_points=2048",
            "stage2.iterations=4", "stage2.rays_per_batch=256", "stage2.sdf_points_per_batch=512",
            "stage2.snapshot_every=2", "mesh.resolution=64", "trace.grid_resolution=32",
            "model.geometry.base_resolution=96", "model.geometry.height_map_resolution=0")


def fit_argv(photo: Path, landmarks: Path, out: Path, *overrides: str, seed: int = 3) -> list[str]:
    """argv for ``fastsider fit`` on the example with the tiny config, plus more ``--set`` overrides."""
    argv = ["fit", str(photo), "--landmarks", str(landmarks), "--out", str(out), "--seed", str(seed)]
    for t in (*TINY_FIT, *overrides):
        argv += ["--set", t]
    return argv

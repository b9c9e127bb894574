"""What ``tools/compare_to_reference.py`` measures of the fast and reference fits.

Speed from each fit's ``summary.json`` (per-stage wall time, iterations, throughput, memory) and the
reference / fast ratios; and how far apart the meshes are over the face region (Chamfer,
scan-to-mesh, normal angle), from the coarse mesh and from a ground truth if given. Also the names
of the two presets and their stages, which the run and the report share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from fastsider.camera import Camera, world_to_camera_points
from fastsider.eval.bench import evaluation_region, mesh_errors
from fastsider.eval.metrics import ErrorStats, chamfer
from fastsider.io import load_mesh

FAST, REFERENCE = "fast", "reference"
PRESETS = (FAST, REFERENCE)                # run in this order: a time budget needs fast's stage times
CHAMFER_SAMPLES = 50_000                   # area-uniform samples per mesh
BUSY_MACHINE = 0.1                         # other processes' CPU share above which timings are flagged
STAGES = ("stage1", "stage2")


# --------------------------------------------------------------------------------------------
# speed


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def stage_speed(summary: dict[str, Any], stage: str) -> dict[str, Any]:
    """Wall seconds, iterations and throughput of one stage of a fit's summary.json (rays/s: stage 2)."""
    stats = summary.get(stage) or {}
    seconds = float(stats.get("seconds", summary["seconds"].get(stage, 0.0)))
    iterations = int(stats.get("iterations", 0))
    out = {"seconds": seconds, "iterations": iterations, "iterations_per_s": ratio(iterations, seconds),
           "seconds_per_iteration": ratio(seconds, iterations)}
    if stage == "stage2":
        face_rays = int(summary.get("face_rays", 2**62))
        every_ray = summary["config"].get("model", {}).get("detail") == "height_map"
        rays = face_rays if every_ray else min(int(summary["config"]["stage2"]["mlp"]["rays_per_batch"]), face_rays)
        out["rays_per_batch"] = rays
        out["rays_per_s"] = ratio(iterations * rays, seconds)
    return out


def preset_speed(summary: dict[str, Any]) -> dict[str, Any]:
    mem = summary.get("peak_memory_mb", {})
    return {**{s: stage_speed(summary, s) for s in STAGES},
            "total_seconds": float(summary["seconds"]["total"]),
            "peak_rss_mb": mem.get("rss"), "cuda_max_allocated_mb": mem.get("cuda_max_allocated"),
            "device": summary.get("device"), "implementation": summary.get("implementation", {}),
            "psnr": (summary.get("stage2") or {}).get("psnr")}


def speedups(fast: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    """Reference / fast time ratios (> 1: fast is faster), from two :func:`preset_speed` dicts."""
    stages_wall = [sum(p[s]["seconds"] for s in STAGES) for p in (ref, fast)]
    return {"stage1_per_iteration": ratio(ref["stage1"]["seconds_per_iteration"],
                                           fast["stage1"]["seconds_per_iteration"]),
            "stage2_per_iteration": ratio(ref["stage2"]["seconds_per_iteration"],
                                           fast["stage2"]["seconds_per_iteration"]),
            "stages_wall": ratio(*stages_wall),
            "total_wall": ratio(ref["total_seconds"], fast["total_seconds"])}


# --------------------------------------------------------------------------------------------
# quality


def _region_of_samples(meshes: list[trimesh.Trimesh], regions: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Points [n, 3] -> bool [n]: in the region when the nearest vertex of any of the meshes is."""
    tree = cKDTree(np.concatenate([np.asarray(m.vertices) for m in meshes]))
    flags = np.concatenate(regions)
    return lambda pts: flags[tree.query(pts)[1]]


def mesh_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, region_a: np.ndarray | None = None,
                  region_b: np.ndarray | None = None, n_samples: int = CHAMFER_SAMPLES,
                  seed: int = 0) -> dict[str, Any]:
    """How far surface A is from surface B (mm, degrees), over the vertex regions (None: everywhere).

    Chamfer: area-uniform samples of each surface, kept when their nearest vertex is in its mesh's
    region, to the other surface. Scan-to-mesh: A's region vertices to B. Normal angle: A's region
    face normals against B's at the closest points (bench.mesh_errors).
    """
    region_a = np.ones(len(a.vertices), bool) if region_a is None else region_a
    region_b = np.ones(len(b.vertices), bool) if region_b is None else region_b
    ch = chamfer(a.vertices, a.faces, b.vertices, b.faces, n_samples, seed,
                 region=_region_of_samples([a, b], [region_a, region_b]))
    errs, _ = mesh_errors(a, np.zeros(len(a.vertices)), region_a, b)
    return {"chamfer_mm": ch.mean, "chamfer_a_to_b_mm": ErrorStats.from_errors(ch.a_to_b).to_json_dict(),
            "chamfer_b_to_a_mm": ErrorStats.from_errors(ch.b_to_a).to_json_dict(),
            "scan_to_mesh_mm": errs.scan_to_mesh.to_json_dict(), "normal_deg": errs.normal_deg.to_json_dict()}


def quality(meshes: dict[str, trimesh.Trimesh], camera: Camera, gt: trimesh.Trimesh | None,
            gt_labels: np.ndarray | None) -> dict[str, Any]:
    """Fast vs reference over the face region, each one's distance from the coarse mesh, errors to GT."""
    coarse = meshes["coarse"]
    region = {k: evaluation_region(meshes[k], coarse, camera) for k in PRESETS}
    out: dict[str, Any] = {"fast_vs_reference": mesh_distance(meshes[FAST], meshes[REFERENCE], region[FAST],
                                                              region[REFERENCE]),
                           "from_coarse": {}, "to_gt": None}
    for k in PRESETS:
        errs, _ = mesh_errors(meshes[k], np.zeros(len(meshes[k].vertices)), region[k], coarse)
        out["from_coarse"][k] = errs.scan_to_mesh.to_json_dict()
    if gt is not None:
        labels = gt_labels if gt_labels is not None else np.zeros(len(gt.vertices))
        gt_region = evaluation_region(gt, coarse, camera)
        keep = ("scan_to_mesh", "normal_deg") + (("wrinkle_scan_to_mesh", "wrinkle_normal_deg")
                                                  if gt_labels is not None else ())
        out["to_gt"] = {k: {m: getattr(mesh_errors(gt, labels, gt_region, meshes[k])[0], m).to_json_dict()
                            for m in keep} for k in ("coarse", *PRESETS)}
    return out


def load_gt(path: Path, camera_path: Path) -> tuple[trimesh.Trimesh, np.ndarray | None]:
    """The GT mesh in the camera frame, and its detail labels when a ``gt_labels.npy`` (bench case) lies beside it."""
    gt = load_mesh(path)
    gt = trimesh.Trimesh(world_to_camera_points(Camera.load(camera_path), np.asarray(gt.vertices)), gt.faces,
                         process=False)
    labels_path = path.parent / "gt_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else None
    return gt, labels if labels is not None and len(labels) == len(gt.vertices) else None

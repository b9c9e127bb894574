"""``fastsider bench``: fit synthetic faces with known wrinkles and measure what the detail stage gains.

Per case: generate (eval.synthetic) -> ``fit`` with the case's coarse mesh and camera (the
bring-your-own-mesh path) -> errors of the coarse mesh and of the detailed mesh to the ground
truth over the face region (scan-to-mesh, mm; normal angle, degrees; also in the wrinkle regions)
-> a report (markdown, JSON, cumulative error plot, one picture per case). Real photos can be
added for timing only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import trimesh
from scipy.ndimage import binary_erosion

from fastsider.camera import Camera, project
from fastsider.config import FitConfig
from fastsider.eval.metrics import (
    ErrorStats,
    MeshQuery,
    depth_recovered,
    finite_or_none,
    normal_angle_error,
    normal_offsets,
    scan_to_mesh,
)
from fastsider.io import load_mesh
from fastsider.pictures import normal_map, raycast_mesh

log = logging.getLogger(__name__)

REGION_EROSION_PX = 6      # evaluate GT vertices this far inside the coarse face's silhouette
CURVE_MAX_MM = 1.5         # x range of the cumulative error plot
CASE_PREFIX = "case_"

# (what, index, total) -> None; the CLI draws a progress bar with it
BenchProgress = Callable[[str, int, int], None]


@dataclass
class CaseErrors:
    """Errors of one mesh to one case's ground truth (over the evaluation region)."""

    scan_to_mesh: ErrorStats           # mm, every GT vertex in the region
    wrinkle_scan_to_mesh: ErrorStats   # mm, GT vertices with a detail label
    normal_deg: ErrorStats             # degrees, region
    wrinkle_normal_deg: ErrorStats     # degrees, detail labels
    depth_recovered: dict[str, float] = field(default_factory=dict)  # detail region -> share of its depth

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v.to_json_dict() for k, v in self.__dict__.items() if isinstance(v, ErrorStats)}
        out["depth_recovered"] = {k: finite_or_none(v) for k, v in self.depth_recovered.items()}
        return out


@dataclass
class CaseResult:
    name: str
    coarse: CaseErrors
    detailed: CaseErrors
    seconds: dict[str, float]
    peak_memory_mb: dict[str, float]
    device: str
    implementation: dict[str, str]
    distances: dict[str, np.ndarray] = field(repr=False)  # "coarse" / "detailed" -> [n_region] mm
    renderer: str = "simple"
    seed: int = 0
    highpass: dict[str, dict[str, Any]] = field(default_factory=dict)  # mesh -> eval.highpass scores

    def reduction(self, what: str, stat: str) -> float:
        """Relative reduction (coarse - detailed) / coarse of ``what`` ('scan_to_mesh', ...)."""
        before = getattr(getattr(self.coarse, what), stat)
        after = getattr(getattr(self.detailed, what), stat)
        return (before - after) / before if before else float("nan")


def evaluation_region(gt: trimesh.Trimesh, coarse: trimesh.Trimesh, camera: Camera) -> np.ndarray:
    """GT vertices [n_verts] bool: facing the camera and inside the eroded coarse face silhouette."""
    mask = binary_erosion(raycast_mesh(coarse.vertices, coarse.faces, camera).mask, iterations=REGION_EROSION_PX)
    uv = np.round(project(camera, gt.vertices)).astype(int)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    in_mask = np.zeros(len(uv), dtype=bool)
    in_mask[inside] = mask[uv[inside, 1], uv[inside, 0]]
    facing = np.einsum("ij,ij->i", gt.vertex_normals, gt.vertices) < 0.0
    return in_mask & facing


def mesh_errors(gt: trimesh.Trimesh, labels: np.ndarray, region: np.ndarray,
                pred: trimesh.Trimesh) -> tuple[CaseErrors, np.ndarray]:
    wrinkles = labels[region] > 0
    dist = scan_to_mesh(np.asarray(gt.vertices)[region], pred.vertices, pred.faces)
    # normals at GT triangle centres with the triangles' own normals: exact for the GT itself,
    # where vertex normals (averages) would differ from any face normal by degrees in a wrinkle
    faces = np.asarray(gt.faces)
    in_region = region[faces].all(axis=1)
    wrinkle_faces = (labels[faces] > 0).any(axis=1)[in_region]
    angle = normal_angle_error(gt.triangles_center[in_region], gt.face_normals[in_region], pred.vertices,
                               pred.faces)
    stats = CaseErrors(ErrorStats.from_errors(dist), ErrorStats.from_errors(dist[wrinkles]),
                       ErrorStats.from_errors(angle), ErrorStats.from_errors(angle[wrinkle_faces]))
    return stats, dist


def depth_recovered_by_region(gt: trimesh.Trimesh, coarse: trimesh.Trimesh, labels: np.ndarray,
                              region: np.ndarray, meshes: Sequence[trimesh.Trimesh]) -> list[dict[str, float]]:
    """Per mesh: detail region name -> share of its true depth the mesh reproduces (metrics.depth_recovered).

    Both displacements are measured from the coarse surface (the synthetic base) along its normal
    at the point closest to each GT vertex: the GT vertex's own, and where that normal meets the mesh.
    """
    from fastsider.eval.synthetic_details import REGIONS

    points = np.asarray(gt.vertices)[region]
    query = MeshQuery(np.asarray(coarse.vertices), np.asarray(coarse.faces))
    closest = query.closest(points)
    normals = query.face_normals()[closest.face]
    normals *= -np.sign(np.einsum("ij,ij->i", normals, closest.point))[:, None]  # towards the camera (origin)
    true = np.einsum("ij,ij->i", points - closest.point, normals)
    lab = labels[region]
    out = []
    for mesh in meshes:
        found = normal_offsets(closest.point, normals, np.asarray(mesh.vertices), np.asarray(mesh.faces))
        out.append({name: depth_recovered(true[lab == code], found[lab == code])
                    for name, code in REGIONS.items() if code})
    return out


def evaluate_highpass(case_dir: Path, fit_dir: Path, mesh_name: str = "mesh.ply") -> dict[str, dict[str, Any]]:
    """The high-passed detail scores (eval.highpass) of the GT, the coarse and the detailed mesh."""
    from fastsider.eval.highpass import highpass_detail
    from fastsider.eval.synthetic_details import REGIONS

    meshes = {"coarse": _vf(load_mesh(case_dir / "coarse.ply")), "detailed": _vf(load_mesh(fit_dir / mesh_name))}
    return highpass_detail(_vf(load_mesh(case_dir / "gt.ply")), _vf(load_mesh(case_dir / "base.ply")),
                           np.load(case_dir / "gt_labels.npy"), meshes, Camera.load(case_dir / "camera.json"), REGIONS)


def evaluate_fit(case_dir: Path, fit_dir: Path, mesh_name: str = "mesh.ply") -> tuple[CaseErrors, CaseErrors, dict]:
    """(coarse errors, detailed errors, distance arrays) of one fitted case."""
    gt = load_mesh(case_dir / "gt.ply")
    coarse = load_mesh(case_dir / "coarse.ply")
    detailed = load_mesh(fit_dir / mesh_name)
    labels = np.load(case_dir / "gt_labels.npy")
    region = evaluation_region(gt, coarse, Camera.load(case_dir / "camera.json"))
    coarse_err, d_coarse = mesh_errors(gt, labels, region, coarse)
    detailed_err, d_detailed = mesh_errors(gt, labels, region, detailed)
    coarse_err.depth_recovered, detailed_err.depth_recovered = depth_recovered_by_region(
        gt, coarse, labels, region, (coarse, detailed))
    return coarse_err, detailed_err, {"coarse": d_coarse, "detailed": d_detailed}


def case_picture(case_dir: Path, fit_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Input, GT / coarse / detailed normals and the detailed depth error (mm) seen from the camera."""
    import imageio.v3 as iio

    cam = Camera.load(case_dir / "camera.json")
    surf = {name: raycast_mesh(*_vf(load_mesh(path)), cam) for name, path in
            (("gt", case_dir / "gt.ply"), ("coarse", case_dir / "coarse.ply"), ("detailed", fit_dir / "mesh.ply"))}
    both = surf["gt"].mask & surf["detailed"].mask
    err = np.where(both, np.abs(surf["detailed"].depth - surf["gt"].depth), np.nan)
    return [("input", iio.imread(case_dir / "image.png")),
            *((f"{k} normals", normal_map(s.normals, s.mask)) for k, s in surf.items()),
            ("|depth error| detailed (mm)", err)]


def _vf(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


@dataclass
class BenchResult:
    cases: list[CaseResult]
    photos: list[dict[str, Any]]   # timing-only fits of real photos
    config: FitConfig
    seconds: float


RENDERERS = ("simple", "cycles")


def bench_dirs(out_dir: Path, renderer: str) -> tuple[Path, Path]:
    """(cases, fits) folders of one renderer's cases: ``cases/``, ``fits/`` for the simple renderer,
    ``<renderer>/cases/``, ``<renderer>/fits/`` for the others."""
    root = out_dir if renderer == "simple" else out_dir / renderer
    return root / "cases", root / "fits"


def run_bench(out_dir: Path, n_cases: int, seed: int, cfg: FitConfig, photos: list[Path] | None = None,
              synthetic_params: Any = None, progress: BenchProgress | None = None,
              renderers: tuple[str, ...] = ("simple",)) -> BenchResult:
    """Per renderer, generate ``n_cases`` synthetic faces (seeds ``seed`` on) under
    :func:`bench_dirs`, fit each, evaluate, and time the optional real ``photos``. The simple
    renderer's cases have an exact coarse input, the path-traced ones a smooth 0.5-3 mm error
    (``CYCLES_PARAMS``). The report is written by :func:`write_bench_report`."""
    from fastsider.eval.synthetic import generate_cases
    from fastsider.eval.synthetic_params import CYCLES_PARAMS, SyntheticParams
    from fastsider.stages.fit import run_fit
    from fastsider.stages.prepare import CoarseInputs

    t0 = time.perf_counter()
    results = []
    for renderer in renderers:
        if renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {renderer!r}; known: {RENDERERS}")
        params = synthetic_params or (SyntheticParams() if renderer == "simple" else CYCLES_PARAMS)
        cases, fits = bench_dirs(out_dir, renderer)
        if progress is not None:
            progress(f"{renderer} cases", 0, n_cases)
        case_dirs = generate_cases(cases, n_cases, seed, params)
        for i, case_dir in enumerate(case_dirs):
            if progress is not None:
                progress(f"fit {renderer} {case_dir.name}", i, len(case_dirs))
            fit_dir = fits / case_dir.name
            summary = run_fit(case_dir / "image.png", cfg, CoarseInputs(mesh=case_dir / "coarse.ply",
                                                                        camera=case_dir / "camera.json"), fit_dir)
            coarse, detailed, dist = evaluate_fit(case_dir, fit_dir)
            results.append(CaseResult(case_dir.name, coarse, detailed, summary["seconds"], summary["peak_memory_mb"],
                                      summary["device"], summary["implementation"], dist, renderer, seed + i,
                                      evaluate_highpass(case_dir, fit_dir)))
            hp = results[-1].highpass
            log.info("%s %s: scan-to-mesh median %.3f -> %.3f mm, wrinkle normals %.1f -> %.1f deg, high-passed "
                     "wrinkles: correlation %s, depth %s", renderer, case_dir.name, coarse.scan_to_mesh.median,
                     detailed.scan_to_mesh.median, coarse.wrinkle_normal_deg.mean, detailed.wrinkle_normal_deg.mean,
                     _num(hp["detailed"]["wrinkles"]["correlation"]), _num(hp["detailed"]["wrinkles"]["depth_recovered"]))
    timed = []
    for j, photo in enumerate(photos or []):
        if progress is not None:
            progress(f"time {photo.name}", j, len(photos))
        summary = run_fit(photo, cfg, CoarseInputs(), out_dir / "photos" / photo.stem)
        timed.append({"photo": str(photo), "seconds": summary["seconds"], "peak_memory_mb": summary["peak_memory_mb"],
                      "device": summary["device"], "implementation": summary["implementation"]})
    return BenchResult(results, timed, cfg, time.perf_counter() - t0)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"

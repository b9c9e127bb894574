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
from fastsider.config import FitConfig, to_dict
from fastsider.eval.metrics import (
    ErrorStats,
    MeshQuery,
    cumulative_curve,
    depth_recovered,
    finite_or_none,
    normal_angle_error,
    normal_offsets,
    scan_to_mesh,
)
from fastsider.io import OutputStage, load_mesh, save_json
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


def run_bench(out_dir: Path, n_cases: int, seed: int, cfg: FitConfig, photos: list[Path] | None = None,
              synthetic_params: Any = None, progress: BenchProgress | None = None) -> BenchResult:
    """Generate ``n_cases`` synthetic faces under ``out_dir/cases``, fit each into ``out_dir/fits``,
    evaluate, and time the optional real ``photos``. The report is written by :func:`write_bench_report`."""
    from fastsider.eval.synthetic import generate_cases
    from fastsider.eval.synthetic_params import SyntheticParams
    from fastsider.stages.fit import run_fit
    from fastsider.stages.prepare import CoarseInputs

    t0 = time.perf_counter()
    params = synthetic_params or SyntheticParams()
    case_dirs = generate_cases(out_dir / "cases", n_cases, seed, params)
    results = []
    for i, case_dir in enumerate(case_dirs):
        if progress is not None:
            progress(f"fit {case_dir.name}", i, len(case_dirs))
        fit_dir = out_dir / "fits" / case_dir.name
        summary = run_fit(case_dir / "image.png", cfg, CoarseInputs(mesh=case_dir / "coarse.ply",
                                                                    camera=case_dir / "camera.json"), fit_dir)
        coarse, detailed, dist = evaluate_fit(case_dir, fit_dir)
        results.append(CaseResult(case_dir.name, coarse, detailed, summary["seconds"], summary["peak_memory_mb"],
                                  summary["device"], summary["implementation"], dist))
        log.info("%s: scan-to-mesh median %.3f -> %.3f mm, wrinkle normals %.1f -> %.1f deg", case_dir.name,
                 coarse.scan_to_mesh.median, detailed.scan_to_mesh.median, coarse.wrinkle_normal_deg.mean,
                 detailed.wrinkle_normal_deg.mean)
    timed = []
    for j, photo in enumerate(photos or []):
        if progress is not None:
            progress(f"time {photo.name}", j, len(photos))
        summary = run_fit(photo, cfg, CoarseInputs(), out_dir / "photos" / photo.stem)
        timed.append({"photo": str(photo), "seconds": summary["seconds"], "peak_memory_mb": summary["peak_memory_mb"],
                      "device": summary["device"], "implementation": summary["implementation"]})
    return BenchResult(results, timed, cfg, time.perf_counter() - t0)


CASE_HEADERS = ("case", "coarse median", "coarse mean", "detailed median", "detailed mean", "median lower %",
                "mean lower %", "wrinkle coarse mean", "wrinkle detailed mean", "normal coarse", "normal detailed",
                "wrinkle normal coarse", "wrinkle normal detailed",
                "stage 1 s", "stage 2 s", "total s", "peak RSS MB")


def case_rows(result: BenchResult) -> list[list[Any]]:
    rows = []
    for c in result.cases:
        rows.append([c.name, c.coarse.scan_to_mesh.median, c.coarse.scan_to_mesh.mean,
                     c.detailed.scan_to_mesh.median, c.detailed.scan_to_mesh.mean,
                     100 * c.reduction("scan_to_mesh", "median"), 100 * c.reduction("scan_to_mesh", "mean"),
                     c.coarse.wrinkle_scan_to_mesh.mean, c.detailed.wrinkle_scan_to_mesh.mean,
                     c.coarse.normal_deg.mean, c.detailed.normal_deg.mean,
                     c.coarse.wrinkle_normal_deg.mean, c.detailed.wrinkle_normal_deg.mean,
                     c.seconds.get("stage1"), c.seconds.get("stage2"),
                     c.seconds.get("total"), c.peak_memory_mb.get("rss")])
    return rows


TERMINAL_HEADERS = ("case", "s2m coarse", "s2m detailed", "wrinkle s2m coarse", "wrinkle s2m detailed",
                    "wrinkle normal coarse", "wrinkle normal detailed", "total s")


def terminal_rows(result: BenchResult) -> list[list[Any]]:
    """The short table for the terminal: mean errors (mm, degrees) and time."""
    return [[c.name, c.coarse.scan_to_mesh.mean, c.detailed.scan_to_mesh.mean, c.coarse.wrinkle_scan_to_mesh.mean,
             c.detailed.wrinkle_scan_to_mesh.mean, c.coarse.wrinkle_normal_deg.mean,
             c.detailed.wrinkle_normal_deg.mean, c.seconds.get("total")] for c in result.cases]


def overall(result: BenchResult) -> dict[str, Any]:
    """Pooled errors over all cases and the mean per-case reductions."""
    pooled = {k: np.concatenate([c.distances[k] for c in result.cases]) for k in ("coarse", "detailed")}
    stats = {k: ErrorStats.from_errors(v) for k, v in pooled.items()}

    def mean_reduction(what: str, stat: str) -> float:
        return float(np.mean([c.reduction(what, stat) for c in result.cases]))
    return {
        "scan_to_mesh_mm": {k: s.to_json_dict() for k, s in stats.items()},
        "pooled_reduction": {s: (getattr(stats["coarse"], s) - getattr(stats["detailed"], s))
                             / getattr(stats["coarse"], s) for s in ("median", "mean")},
        "mean_case_reduction": {
            "scan_to_mesh_median": mean_reduction("scan_to_mesh", "median"),
            "scan_to_mesh_mean": mean_reduction("scan_to_mesh", "mean"),
            "wrinkle_scan_to_mesh_mean": mean_reduction("wrinkle_scan_to_mesh", "mean"),
            "normal_mean": mean_reduction("normal_deg", "mean"),
            "wrinkle_normal_mean": mean_reduction("wrinkle_normal_deg", "mean"),
        },
        "depth_recovered_mean": {k: finite_or_none(v) for k, v in mean_depth_recovered(result).items()},
    }


def mean_depth_recovered(result: BenchResult) -> dict[str, float]:
    """Detail region -> mean over the cases that have it of the detailed mesh's depth recovered."""
    names = dict.fromkeys(k for c in result.cases for k in c.detailed.depth_recovered)  # first-seen order
    out = {}
    for name in names:
        values = [c.detailed.depth_recovered.get(name, np.nan) for c in result.cases]
        finite = [v for v in values if np.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    return out


def depth_rows(result: BenchResult) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the depth-recovered table: one row per case and the mean."""
    mean = mean_depth_recovered(result)
    rows = [[c.name, *(c.detailed.depth_recovered.get(k, np.nan) for k in mean)] for c in result.cases]
    rows.append(["mean", *mean.values()])
    return ["case", *(k.replace("_", " ") for k in mean)], rows


def _change(reduction: float) -> str:
    """A relative reduction as words: 0.4 -> '40.0% lower', -0.2 -> '20.0% higher (worse)'."""
    return f"{100 * reduction:.1f}% lower" if reduction >= 0 else f"{-100 * reduction:.1f}% higher (worse)"


def write_bench_report(result: BenchResult, out_dir: Path) -> dict[str, Any]:
    """bench_report.md, bench_report.json, cumulative_error.png, cases/<case>.png. Returns the JSON data."""
    from fastsider.report import image_panel, markdown_table, plot_cumulative

    summary = overall(result) if result.cases else {}
    data = {"config": to_dict(result.config), "seconds": result.seconds, "overall": summary,
            "cases": [{"name": c.name, "coarse": c.coarse.to_json_dict(), "detailed": c.detailed.to_json_dict(),
                       "seconds": c.seconds, "peak_memory_mb": c.peak_memory_mb, "device": c.device,
                       "implementation": c.implementation} for c in result.cases],
            "photos": result.photos}
    with OutputStage(out_dir) as out:
        lines = ["# fastsider bench", "",
                 f"{len(result.cases)} synthetic case(s), {len(result.photos)} timed photo(s); "
                 f"{result.seconds:.0f} s in all.", ""]
        if result.cases:
            c0 = result.cases[0]
            red = summary["mean_case_reduction"]
            lines += [f"Device `{c0.device}`, networks `{c0.implementation.get('networks')}`, normals "
                      f"`{c0.implementation.get('normals')}`, occupancy grid `{c0.implementation.get('occupancy_grid')}`.",
                      "", "## Detail stage gain (mean over cases)", "",
                      markdown_table(("scan-to-mesh median", "scan-to-mesh mean", "wrinkle scan-to-mesh mean",
                                      "normal error", "wrinkle normal error"),
                                     [[_change(red["scan_to_mesh_median"]), _change(red["scan_to_mesh_mean"]),
                                       _change(red["wrinkle_scan_to_mesh_mean"]), _change(red["normal_mean"]),
                                       _change(red["wrinkle_normal_mean"])]]),
                      "", "Wrinkle regions: ground-truth vertices (scan-to-mesh) and faces (normals) the generator "
                      "labels as forehead lines, crow's feet, nasolabial folds or bumps.",
                      "", "## Per case (errors to ground truth: mm, normals in degrees)", "",
                      markdown_table(CASE_HEADERS, case_rows(result), digits=3), "",
                      "## Depth recovered by region (detailed mesh)", "",
                      "The share of the true displacement the detailed mesh reproduces along the coarse "
                      "surface's normal (least squares over the region's ground-truth vertices): 1 is full "
                      "depth, 0 a missed detail. The coarse mesh scores 0 by construction.", "",
                      markdown_table(*depth_rows(result), digits=2), "",
                      "![cumulative error](cumulative_error.png)", ""]
            errors = {k: np.concatenate([c.distances[k] for c in result.cases]) for k in ("coarse", "detailed")}
            curves = {f"{k} (median {np.median(e):.3f})": cumulative_curve(e, CURVE_MAX_MM, 201) for k, e in errors.items()}
            plot_cumulative(curves, out.path("cumulative_error.png"), CURVE_MAX_MM, "scan-to-mesh error [mm]",
                            "all cases, face region")
            for c in result.cases:
                image_panel(case_picture(out_dir / "cases" / c.name, out_dir / "fits" / c.name),
                            out.path(f"pictures/{c.name}.png"), c.name, colorbar_max=1.0)
                lines.append(f"![{c.name}](pictures/{c.name}.png)")
        if result.photos:
            lines += ["", "## Real photos (timing only)", "",
                      markdown_table(("photo", "stage 1 s", "stage 2 s", "total s", "peak RSS MB"),
                                     [[Path(p["photo"]).name, p["seconds"].get("stage1"), p["seconds"].get("stage2"),
                                       p["seconds"].get("total"), p["peak_memory_mb"].get("rss")] for p in result.photos])]
        out.path("bench_report.md").write_text("\n".join(lines) + "\n")
        save_json(out.path("bench_report.json"), data)
        out.commit()
    return data

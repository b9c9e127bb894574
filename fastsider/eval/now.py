"""The NoW benchmark protocol (Sanyal et al., CVPR 2019, "RingNet"), reimplemented.

Follows the official evaluation (github.com/soubhiksanyal/now_evaluation: ``compute_error.py``,
``scan2mesh_computations.py``, ``scan2mesh_computations_metrical.py``, ``cumulative_errors.py``):

1. crop the ground-truth scan to a ball around the face centre, from its 7 landmarks;
2. align the prediction to the scan by a similarity transform (rotation, translation, scale) fitted
   to the 7 corresponding landmarks;
3. refine that transform by least squares on the scan-to-mesh distances of the cropped scan;
4. error = distance from every cropped scan vertex to the aligned predicted surface, pooled over all
   images for the median / mean / std of the NoW table.

Units: NoW scans and their landmarks are in mm ("Scans are in unit mm", ``get_unit_factor`` in
``scan2mesh_computations_metrical.py``; ``cumulative_errors.py`` plots the raw distances as mm).
fastsider predictions are in mm too; other units are converted with ``predicted_unit``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from fastsider.errors import InputError
from fastsider.eval.metrics import ErrorStats, MeshQuery, cumulative_curve, within_radius
from fastsider.io import OutputStage, load_mesh, save_json

log = logging.getLogger(__name__)

SPLIT_LISTS = {"val": "imagepathsvalidation.txt", "test": "imagepathstest.txt"}
SCANS_DIR = "scans"
SCAN_LANDMARKS_DIR = "scans_lmks_onlypp"
N_LANDMARKS = 7  # order: outer/inner right eye, inner/outer left eye, subnasale, mouth corners r/l
CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
UNIT_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}

# Scan crop, from compute_mask() in scan2mesh_computations.py: centre = subnasale moved 0.3 of the
# way towards the midpoint of the inner eye corners; radius = 1.4 * (outer-eye distance +
# subnasale-to-eye-midpoint distance) / 2. Both are multiples of face size, not fixed mm.
CROP_CENTRE_TOWARDS_EYES = 0.3
CROP_RADIUS_FACTOR = 1.4

# Refinement stop rules. The official code runs chumpy's dogleg (e_3 = 1e-4); ours is
# Levenberg-Marquardt on the same objective, stopped when the cost stops falling.
REFINE_MAX_ITERS = 100
REFINE_REL_TOL = 1e-9  # stop when the sum of squared distances falls by less than this fraction
PLOT_MAX_MM = 8.0  # cumulative_errors.py draws 0..8 mm


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation (mm). ``rotation`` may be a reflection (det -1)."""

    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3] mm

    def apply(self, pts: np.ndarray) -> np.ndarray:  # [n_pts, 3] -> [n_pts, 3]
        return self.scale * pts @ self.rotation.T + self.translation

    def apply_inverse(self, pts: np.ndarray) -> np.ndarray:  # [n_pts, 3] -> [n_pts, 3]
        return (pts - self.translation) @ self.rotation / self.scale

    def to_json_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation_mm": self.translation.tolist()}


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True, allow_reflection: bool = True) -> Similarity:
    """Least-squares similarity taking points ``src`` [n, 3] onto ``dst`` [n, 3] (Umeyama 1991).

    min over s, R, t of sum |s R src_i + t - dst_i|^2. The official NoW code calls a MATLAB-style
    ``procrustes(..., reflection='best')``, which may return a reflection; ``allow_reflection``
    keeps that behaviour (it only triggers for mirrored landmark orders).
    """
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sv, vt = np.linalg.svd(d0.T @ s0 / len(src))
    sign = np.ones(3)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float(np.sum(sv * sign) / np.mean(np.sum(s0**2, axis=1))) if with_scale else 1.0
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def refine_alignment(
    scan_points: np.ndarray,  # [n_pts, 3] cropped scan vertices, mm
    pred: MeshQuery,
    init: Similarity,
    with_scale: bool = True,
) -> tuple[Similarity, int]:
    """Refine a prediction->scan similarity to minimise sum_i d(scan_i, T(pred surface))^2.

    The objective of ``rigid_scan_2_mesh_alignment`` in the official code (unsigned scan-to-mesh
    residuals over the cropped scan vertices; scale kept positive; scale frozen when metrical).
    Solved by Levenberg-Marquardt with closest points re-found every step; each update is a small
    scale / rotation / translation about the scan centroid composed onto the current transform.
    Returns the transform and the number of accepted steps.
    """
    centre = scan_points.mean(axis=0)
    transform, lam, steps = init, 1e-3, 0
    d, c = _residuals(scan_points, pred, transform)
    cost = float(d @ d)
    for _ in range(REFINE_MAX_ITERS):
        if cost == 0.0:
            break
        jac = _jacobian(scan_points, d, c, centre, with_scale)
        a, g = jac.T @ jac, jac.T @ d
        damp = np.diag(np.diag(a)) + 1e-12 * np.eye(len(a))  # Marquardt scaling: mm vs radians
        while lam < 1e10:
            delta = np.linalg.solve(a + lam * damp, -g)
            cand = _compose_update(transform, delta, centre, with_scale)
            d_new, c_new = _residuals(scan_points, pred, cand)
            cost_new = float(d_new @ d_new)
            if cost_new < cost:
                break
            lam *= 4.0
        else:
            break  # no step lowers the cost: converged
        converged = cost - cost_new <= REFINE_REL_TOL * cost
        transform, d, c, cost, lam, steps = cand, d_new, c_new, cost_new, max(lam / 3.0, 1e-9), steps + 1
        if converged:
            break
    return transform, steps


def _residuals(x: np.ndarray, pred: MeshQuery, t: Similarity) -> tuple[np.ndarray, np.ndarray]:
    # query in the prediction's own frame so the AABB tree is built once per mesh
    cp = pred.closest(t.apply_inverse(x))
    c = t.apply(cp.point)
    return np.linalg.norm(x - c, axis=1), c


def _jacobian(x: np.ndarray, d: np.ndarray, c: np.ndarray, centre: np.ndarray, with_scale: bool) -> np.ndarray:
    # d_i = |x_i - c_i|; moving c_i by dc changes d_i by -n_i . dc with n_i = (x_i - c_i) / d_i
    n = np.divide(x - c, d[:, None], out=np.zeros_like(c), where=d[:, None] > 1e-12)
    q = c - centre
    cols = [np.sum(n * q, axis=1, keepdims=True)] if with_scale else []
    cols += [np.cross(q, n), n]  # n . (w x q) = w . (q x n)
    return -np.concatenate(cols, axis=1)


def _compose_update(t: Similarity, delta: np.ndarray, centre: np.ndarray, with_scale: bool) -> Similarity:
    # U(y) = e^sigma R(w) (y - centre) + centre + tau, applied after t; e^sigma keeps scale > 0
    sigma = float(delta[0]) if with_scale else 0.0
    w, tau = (delta[1:4], delta[4:7]) if with_scale else (delta[0:3], delta[3:6])
    s_u, r_u = np.exp(sigma), Rotation.from_rotvec(w).as_matrix()
    return Similarity(
        scale=float(s_u * t.scale),
        rotation=r_u @ t.rotation,
        translation=s_u * r_u @ (t.translation - centre) + centre + tau,
    )


def crop_ball(scan_landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """NoW's face crop from the scan's 7 landmarks [7, 3]: (centre [3], radius) in mm."""
    subnasale = scan_landmarks[4]
    eyes_inner = (scan_landmarks[1] + scan_landmarks[2]) / 2.0
    centre = subnasale + CROP_CENTRE_TOWARDS_EYES * (eyes_inner - subnasale)
    outer_eye_dist = np.linalg.norm(scan_landmarks[0] - scan_landmarks[3])
    nose_dist = np.linalg.norm(eyes_inner - subnasale)
    return centre, float(CROP_RADIUS_FACTOR * (outer_eye_dist + nose_dist) / 2.0)


class PairResult(NamedTuple):
    distances: np.ndarray  # [n_crop] mm, one per cropped scan vertex
    alignment: Similarity  # prediction (mm) -> scan
    refine_steps: int


def evaluate_pair(
    scan_vertices: np.ndarray,  # [n_verts, 3] mm
    scan_landmarks: np.ndarray,  # [7, 3] mm
    pred_vertices: np.ndarray,  # [n_verts_pred, 3] mm
    pred_faces: np.ndarray,  # [n_faces_pred, 3]
    pred_landmarks: np.ndarray,  # [7, 3] mm
    metrical: bool = False,
    refine: bool = True,
) -> PairResult:
    """NoW error of one prediction against one scan: crop, landmark fit, refinement, scan-to-mesh.

    ``metrical=True`` is the official metrical variant: no scale is fitted, so a prediction that
    is 10 % too big is penalised. ``refine=False`` stops after the landmark fit (for diagnosis).
    """
    for name, lm in (("scan_landmarks", scan_landmarks), ("pred_landmarks", pred_landmarks)):
        if np.shape(lm) != (N_LANDMARKS, 3):
            raise ValueError(f"{name} must be [{N_LANDMARKS}, 3], got {np.shape(lm)}")
    centre, radius = crop_ball(scan_landmarks)
    crop = np.asarray(scan_vertices, dtype=np.float64)[within_radius(scan_vertices, centre, radius)]
    if len(crop) == 0:
        raise InputError("no scan vertex lies within the NoW face crop; are scan and landmarks in the same units?")
    query = MeshQuery(pred_vertices, pred_faces)
    transform = umeyama(np.asarray(pred_landmarks, float), np.asarray(scan_landmarks, float), with_scale=not metrical)
    if np.linalg.det(transform.rotation) < 0:
        log.warning("NoW landmark fit is a reflection (kept, as the official code does); check the landmark order")
    steps = 0
    if refine:
        transform, steps = refine_alignment(crop, query, transform, with_scale=not metrical)
    d, _ = _residuals(crop, query, transform)
    return PairResult(d, transform, steps)


# --------------------------------------------------------------------------------------------
# files


def read_pp(path: Path) -> np.ndarray:
    """The 7 landmarks [7, 3] of a MeshLab picked-points (.pp) file, in file order."""
    try:
        root = ET.parse(path).getroot()
        pts = [[float(p.attrib[k]) for k in ("x", "y", "z")] for p in root.iter("point")]
    except (OSError, ET.ParseError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read landmark file {path}: {type(exc).__name__}: {exc}") from None
    if len(pts) < N_LANDMARKS:
        raise InputError(f"landmark file {path} has {len(pts)} points; NoW needs {N_LANDMARKS}")
    return np.array(pts[:N_LANDMARKS])  # the official reader takes the first 7 <point> lines


def read_pred_landmarks(path: Path) -> np.ndarray:
    """Predicted landmarks [7, 3] from .npy ([7, 3] or [1, 7, 3]) or whitespace text (7 rows)."""
    try:
        lm = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read landmark file {path}: {exc}") from None
    lm = np.asarray(lm, dtype=np.float64)
    if lm.size == N_LANDMARKS * 3:
        lm = lm.reshape(N_LANDMARKS, 3)  # the official reader accepts [1, 7, 3] too
    if np.shape(lm) != (N_LANDMARKS, 3) or not np.all(np.isfinite(lm)):
        raise InputError(f"landmark file {path} must hold {N_LANDMARKS} finite x y z rows, got {np.shape(lm)}")
    return lm


def find_prediction(predictions_dir: Path, subject: str, challenge: str, image: str) -> tuple[Path, Path] | None:
    """(mesh, landmarks) for one NoW image, or None. Official layout first, then fastsider's folder."""
    base = predictions_dir / subject / challenge
    stem = Path(image).stem
    meshes = [base / f"{stem}.obj", base / f"{stem}.ply", base / stem / "mesh.ply", base / stem / "mesh.obj"]
    lmks = [base / f"{stem}.npy", base / f"{stem}.txt", base / stem / "landmarks7.txt", base / stem / "landmarks7.npy"]
    mesh = next((p for p in meshes if p.is_file()), None)
    lmk = next((p for p in lmks if p.is_file()), None)
    return (mesh, lmk) if mesh is not None and lmk is not None else None


def _subject_file(folder: Path, subject: str, pattern: str) -> Path:
    d = folder / subject
    hits = sorted(d.glob(pattern)) or sorted(d.glob(f"**/{pattern}"))
    if not hits:
        raise InputError(f"no {pattern} for subject {subject} under {folder}")
    if len(hits) > 1:
        log.warning("subject %s has %d %s files; using %s", subject, len(hits), pattern, hits[0].name)
    return hits[0]


def _read_image_list(now_root: Path, split: str) -> list[tuple[str, str, str]]:
    if split not in SPLIT_LISTS:
        raise InputError(f"unknown NoW split {split!r}; use one of {sorted(SPLIT_LISTS)}")
    path = now_root / SPLIT_LISTS[split]
    if not path.is_file():
        raise InputError(f"NoW image list not found: {path}")
    out = []
    for line in path.read_text().splitlines():
        parts = line.strip().replace("\\", "/").split("/")
        if parts == [""]:
            continue
        if len(parts) < 3:
            raise InputError(f"malformed line in {path}: {line!r} (want subject/challenge/image)")
        out.append((parts[-3], parts[-2], parts[-1]))  # the official code uses the last 3 parts
    return out


def _load_subject(now_root: Path, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Scan vertices [n_verts, 3] and landmarks [7, 3] of one subject, mm."""
    scan = load_mesh(_subject_file(now_root / SCANS_DIR, subject, "*.obj"))
    landmarks = read_pp(_subject_file(now_root / SCAN_LANDMARKS_DIR, subject, "*.pp"))
    return np.asarray(scan.vertices, dtype=np.float64), landmarks


# --------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class ImageResult:
    image: str  # subject/challenge/image as in the image list
    stats: ErrorStats
    alignment: Similarity
    prediction: Path
    distances: np.ndarray = field(repr=False)  # [n_crop] float32 mm

    def to_json_dict(self) -> dict:
        return {"image": self.image, "prediction": str(self.prediction), **self.stats.to_json_dict(),
                "alignment": self.alignment.to_json_dict()}


@dataclass
class NowResult:
    """Per-image errors and the NoW table (median / mean / std over all pooled distances, mm)."""

    split: str
    metrical: bool
    images: list[ImageResult]
    missing: list[str]  # image-list entries without a prediction

    def challenges(self) -> list[str]:
        return sorted({r.image.split("/")[1] for r in self.images})

    def distances(self, challenge: str | None = None) -> np.ndarray:
        """All distances [n] (mm) pooled over the images (of one challenge), as the official table."""
        ds = [r.distances for r in self.images if challenge is None or r.image.split("/")[1] == challenge]
        return np.concatenate(ds) if ds else np.zeros(0)

    @property
    def overall(self) -> ErrorStats:
        return ErrorStats.from_errors(self.distances())

    def by_challenge(self) -> dict[str, ErrorStats]:
        return {k: ErrorStats.from_errors(self.distances(k)) for k in self.challenges()}

    def to_json_dict(self) -> dict:
        protocol = {"name": "NoW", "split": self.split, "metrical": self.metrical, "units": "mm",
                    "crop_radius_factor": CROP_RADIUS_FACTOR, "crop_centre_towards_eyes": CROP_CENTRE_TOWARDS_EYES}
        return {
            "protocol": protocol,
            "n_images": len(self.images) + len(self.missing),
            "n_evaluated": len(self.images),
            "n_missing": len(self.missing),
            "overall": self.overall.to_json_dict(),
            "by_challenge": {k: v.to_json_dict() for k, v in self.by_challenge().items()},
            "images": [r.to_json_dict() for r in self.images],
            "missing": self.missing,
        }

    def table_markdown(self) -> str:
        rows = [("all", self.overall, len(self.images))]
        rows += [(k, v, sum(r.image.split("/")[1] == k for r in self.images)) for k, v in self.by_challenge().items()]
        lines = [f"NoW {self.split}{' (metrical)' if self.metrical else ''}: scan-to-mesh error, mm", "",
                 "| set | images | median | mean | std |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {n} | {s.median:.3f} | {s.mean:.3f} | {s.std:.3f} |" for name, s, n in rows]
        lines += ["", f"missing predictions: {len(self.missing)} of {len(self.images) + len(self.missing)}"]
        return "\n".join(lines) + "\n"


def evaluate_now(
    predictions_dir: str | Path,
    now_root: str | Path,
    split: str = "val",
    out_dir: str | Path | None = None,
    metrical: bool = False,
    predicted_unit: Literal["mm", "cm", "m"] = "mm",
) -> NowResult:
    """Run the NoW protocol over every image of ``split``; write the report files if ``out_dir``.

    Predictions are looked up as ``<subject>/<challenge>/<image stem>.{obj,ply}`` with
    ``<image stem>.{npy,txt}`` (the official layout) or fastsider's per-image folder
    ``<subject>/<challenge>/<image stem>/{mesh.ply, landmarks7.txt}``. Images without a
    prediction are listed in ``missing``. Writes ``now_results.json``, ``now_table.md`` and
    ``now_cumulative_error.png`` into ``out_dir``.
    """
    predictions_dir, now_root = Path(predictions_dir), Path(now_root)
    if not now_root.is_dir():
        raise InputError(f"NoW root folder not found: {now_root}")
    if not predictions_dir.is_dir():
        raise InputError(f"predictions folder not found: {predictions_dir}")
    if predicted_unit not in UNIT_TO_MM:
        raise InputError(f"unknown unit {predicted_unit!r}; use one of {sorted(UNIT_TO_MM)}")
    entries = _read_image_list(now_root, split)
    subjects: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # scans are shared by a subject's images
    images, missing = [], []
    for i, (subject, challenge, image) in enumerate(entries):
        key = f"{subject}/{challenge}/{image}"
        found = find_prediction(predictions_dir, subject, challenge, image)
        if found is None:
            missing.append(key)
            continue
        if subject not in subjects:
            subjects[subject] = _load_subject(now_root, subject)
        scan_v, scan_lm = subjects[subject]
        mesh = load_mesh(found[0])
        unit = UNIT_TO_MM[predicted_unit]
        res = evaluate_pair(scan_v, scan_lm, np.asarray(mesh.vertices) * unit, np.asarray(mesh.faces),
                            read_pred_landmarks(found[1]) * unit, metrical=metrical)
        stats = ErrorStats.from_errors(res.distances)
        log.info("NoW %d/%d %s: median %.3f mm (%d refinement steps)",
                 i + 1, len(entries), key, stats.median, res.refine_steps)
        images.append(ImageResult(key, stats, res.alignment, found[0], res.distances.astype(np.float32)))
    if missing:
        log.warning("NoW: %d of %d images have no prediction", len(missing), len(entries))
    result = NowResult(split, metrical, images, missing)
    if out_dir is not None:
        write_now_report(result, Path(out_dir))
    return result


def write_now_report(result: NowResult, out_dir: Path) -> list[Path]:
    """now_results.json, now_table.md and now_cumulative_error.png, all-or-nothing."""
    with OutputStage(out_dir) as stage:
        save_json(stage.path("now_results.json"), result.to_json_dict())
        stage.path("now_table.md").write_text(result.table_markdown())
        _plot_cumulative(result, stage.path("now_cumulative_error.png"))
        return stage.commit()


def _plot_cumulative(result: NowResult, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: only reports need it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    for name in ["all", *result.challenges()]:
        thr, frac = cumulative_curve(result.distances(None if name == "all" else name), PLOT_MAX_MM, 401)
        ax.plot(thr, 100.0 * frac, label=name, linewidth=2.0 if name == "all" else 1.0)
    ax.set_xlim(0, PLOT_MAX_MM)
    ax.set_ylim(0, 100)
    ax.set_xlabel("Error [mm]")
    ax.set_ylabel("Percentage of scan vertices")
    ax.set_title(f"NoW {result.split}: cumulative scan-to-mesh error")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path)


def run_now_cli(predictions: Path, now_root: Path, split: str, out: Path) -> dict:
    """``fastsider eval now``: evaluate, write the report into ``out``, return a short summary."""
    result = evaluate_now(predictions, now_root, split=split, out_dir=out)
    overall = result.overall
    return {
        "split": split,
        "n_images": len(result.images) + len(result.missing),
        "n_evaluated": len(result.images),
        "n_missing": len(result.missing),
        "median_mm": overall.median,
        "mean_mm": overall.mean,
        "std_mm": overall.std,
        "outputs": [str(Path(out) / n) for n in ("now_results.json", "now_table.md", "now_cumulative_error.png")],
    }

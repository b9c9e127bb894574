"""Geometry error metrics, in mm and degrees: point-to-surface distance, Chamfer, normal angle.

All closest-point queries go through libigl's AABB tree (exact point-to-triangle distance); nothing
here searches triangles by hand. Every metric over ground-truth points takes an optional boolean
``mask`` over those points (e.g. from :func:`within_radius`) to restrict it to a region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import igl
import numpy as np
import trimesh
from scipy.ndimage import gaussian_filter


class ClosestPoints(NamedTuple):
    """Closest points on a triangle mesh to a set of query points."""

    distance: np.ndarray  # [n_pts] unsigned distance, in the mesh's units (mm)
    face: np.ndarray  # [n_pts] int64 index of the closest triangle
    point: np.ndarray  # [n_pts, 3] closest point on the surface


class MeshQuery:
    """An AABB tree over one triangle mesh, built once and queried many times.

    Args:
        vertices: [n_verts, 3] float, mm.
        faces: [n_faces, 3] int triangle indices.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        _check_points(vertices, "vertices")
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"faces must be [n_faces, 3] with n_faces > 0, got {faces.shape}")
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self._tree = igl.AABB()
        self._tree.init(self.vertices, self.faces)

    def closest(self, points: np.ndarray) -> ClosestPoints:
        """Closest surface points to ``points`` [n_pts, 3]."""
        _check_points(points, "points")
        p = np.ascontiguousarray(points, dtype=np.float64)
        if len(p) == 0:
            return ClosestPoints(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
        sq, face, point = self._tree.squared_distance(self.vertices, self.faces, p)
        return ClosestPoints(np.sqrt(np.maximum(sq, 0.0)), face, point)

    def face_normals(self) -> np.ndarray:
        """Unit face normals [n_faces, 3] (right-hand rule on the index order); NaN for zero-area faces."""
        v = self.vertices[self.faces]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        length = np.linalg.norm(n, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(length > 0, n / length, np.nan)


def point_to_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> ClosestPoints:
    """Distance from each point [n_pts, 3] to the surface (vertices [n_verts, 3], faces [n_faces, 3]).

    d_i = min over triangles T of |p_i - T|. Example: the point (0, 0, 2) above the unit triangle
    in z = 0 gives distance 2, closest point (0, 0, 0).
    """
    return MeshQuery(vertices, faces).closest(points)


def scan_to_mesh(
    gt_points: np.ndarray,  # [n_pts, 3]
    pred_vertices: np.ndarray,  # [n_verts, 3]
    pred_faces: np.ndarray,  # [n_faces, 3]
    mask: np.ndarray | None = None,  # [n_pts] bool
) -> np.ndarray:
    """Distance (mm) [n_kept] from every ground-truth point (kept by ``mask``) to the predicted surface.

    This is the NoW / scan-to-mesh error: scan vertices to the closest point of the prediction.
    """
    pts = _apply_mask(gt_points, mask)
    return point_to_mesh(pts, pred_vertices, pred_faces).distance


class ChamferResult(NamedTuple):
    """Symmetric surface-to-surface distances on area-uniform samples (mm)."""

    a_to_b: np.ndarray  # [n_a] distance of each sample of A to surface B
    b_to_a: np.ndarray  # [n_b] distance of each sample of B to surface A

    @property
    def mean_a_to_b(self) -> float:
        return float(np.mean(self.a_to_b)) if len(self.a_to_b) else math.nan

    @property
    def mean_b_to_a(self) -> float:
        return float(np.mean(self.b_to_a)) if len(self.b_to_a) else math.nan

    @property
    def mean(self) -> float:
        """(mean A->B + mean B->A) / 2, the usual symmetric Chamfer distance (not squared)."""
        return 0.5 * (self.mean_a_to_b + self.mean_b_to_a)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """``n_samples`` points [n_samples, 3] uniform over the surface area (trimesh.sample)."""
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
    pts, _ = trimesh.sample.sample_surface(mesh, int(n_samples), seed=seed)
    return np.asarray(pts, dtype=np.float64)


def chamfer(
    a_verts: np.ndarray,  # [n_verts_a, 3]
    a_faces: np.ndarray,  # [n_faces_a, 3]
    b_verts: np.ndarray,  # [n_verts_b, 3]
    b_faces: np.ndarray,  # [n_faces_b, 3]
    n_samples: int = 100_000,
    seed: int = 0,
    region: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ChamferResult:
    """Chamfer distance between two surfaces, point-to-surface in both directions (mm).

    ``n_samples`` area-uniform samples are drawn on each surface and measured to the *other surface*
    (not to its samples), so the result does not depend on the other mesh's sampling density.
    ``region`` maps points [n, 3] to a bool mask [n]; samples outside it are dropped on both sides,
    e.g. ``region=lambda p: within_radius(p, nose_tip, 50.0)``.
    """
    a_pts = sample_surface(a_verts, a_faces, n_samples, seed)
    b_pts = sample_surface(b_verts, b_faces, n_samples, seed + 1)  # independent draws
    if region is not None:
        a_pts = a_pts[np.asarray(region(a_pts), dtype=bool)]
        b_pts = b_pts[np.asarray(region(b_pts), dtype=bool)]
    return ChamferResult(
        a_to_b=point_to_mesh(a_pts, b_verts, b_faces).distance,
        b_to_a=point_to_mesh(b_pts, a_verts, a_faces).distance,
    )


def normal_angle_error(
    gt_points: np.ndarray,  # [n_pts, 3]
    gt_normals: np.ndarray,  # [n_pts, 3]
    pred_vertices: np.ndarray,  # [n_verts, 3]
    pred_faces: np.ndarray,  # [n_faces, 3]
    mask: np.ndarray | None = None,  # [n_pts] bool
    unsigned: bool = False,
) -> np.ndarray:
    """Angle (degrees) [n_kept] between each GT normal and the predicted face normal at its closest point.

    theta = acos(n_gt . n_pred), in [0, 180]. fastsider's meshes are consistently oriented towards
    the camera, so the oriented angle is the default; a flipped face then reads as ~180 degrees.
    ``unsigned=True`` ignores orientation: min(theta, 180 - theta), in [0, 90].
    Zero-area closest faces give NaN.
    """
    _check_points(gt_normals, "gt_normals")
    if len(gt_normals) != len(gt_points):
        raise ValueError(f"gt_normals {gt_normals.shape} and gt_points {gt_points.shape} differ in length")
    pts = _apply_mask(gt_points, mask)
    nrm = _apply_mask(gt_normals, mask).astype(np.float64)
    nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
    query = MeshQuery(pred_vertices, pred_faces)
    pred_n = query.face_normals()[query.closest(pts).face]
    cos = np.clip(np.sum(nrm * pred_n, axis=1), -1.0, 1.0)
    theta = np.degrees(np.arccos(cos))
    return np.minimum(theta, 180.0 - theta) if unsigned else theta


def normal_offsets(
    origins: np.ndarray,  # [n_pts, 3]
    normals: np.ndarray,  # [n_pts, 3] unit
    vertices: np.ndarray,  # [n_verts, 3]
    faces: np.ndarray,  # [n_faces, 3]
    reach_mm: float = 5.0,
) -> np.ndarray:
    """Signed offset t (mm) [n_pts] where the line origin + t * normal first meets the surface,
    searched from t = -reach_mm outwards; NaN where it does not within +- reach_mm.

    Along the normal rather than to the closest point: from the rim of a narrow groove the closest
    point of the grooved surface is on its wall, and the groove would read shallower than it is.
    Example: origins on z = 0 with normals +z and the plane z = 0.3 give 0.3 everywhere.
    """
    _check_points(normals, "normals")
    if len(normals) != len(origins):
        raise ValueError(f"normals {normals.shape} and origins {origins.shape} differ in length")
    n = np.asarray(normals, dtype=np.float64)
    start = np.asarray(origins, dtype=np.float64) - reach_mm * n
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
    hits, ray, _ = mesh.ray.intersects_location(start, n, multiple_hits=False)
    t = np.full(len(start), np.nan)
    t[ray] = np.einsum("ij,ij->i", hits - start[ray], n[ray]) - reach_mm
    return np.where(np.abs(t) <= reach_mm, t, np.nan)


def depth_recovered(true_offsets: np.ndarray, offsets: np.ndarray) -> float:
    """Least-squares gain g of ``offsets`` ~ g * ``true_offsets`` (both [n]): the share of a known
    displacement a surface reproduces (1: full depth, 0: missed, < 0: inverted); NaN without any.

    Scale-free where scan-to-mesh is not: a fold recovered at half depth reads 0.5 however deep it is.
    """
    t = np.asarray(true_offsets, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.float64)
    if t.shape != o.shape:
        raise ValueError(f"true_offsets {t.shape} and offsets {o.shape} differ in shape")
    ok = np.isfinite(t) & np.isfinite(o)
    energy = float(np.sum(t[ok] ** 2))
    return float(np.sum(t[ok] * o[ok]) / energy) if energy > 0 else math.nan


def highpass(depth: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A depth map [H, W] (mm) minus its own Gaussian low-pass of ``sigma_px`` within ``mask`` [H, W]
    (normalized convolution: the mask's border does not pull the low-pass towards 0); NaN outside.

    What is left is the detail at scales below the low-pass: a coarse surface that is off by a smooth
    error at wavelengths far above sigma keeps its wrinkles, and loses the error.
    """
    if depth.shape != mask.shape:
        raise ValueError(f"depth {depth.shape} and mask {mask.shape} differ in shape")
    m = mask.astype(np.float64)
    weight = gaussian_filter(m, sigma_px, mode="constant")
    low = gaussian_filter(np.where(mask, depth, 0.0), sigma_px, mode="constant") / np.maximum(weight, 1e-12)
    return np.where(mask, depth - low, np.nan)


class DetailAgreement(NamedTuple):
    correlation: float      # Pearson correlation of the found and the true detail
    depth_recovered: float  # least-squares share of the true detail the found one reproduces
    count: int


def detail_agreement(true_detail: np.ndarray, found_detail: np.ndarray) -> DetailAgreement:
    """How a found detail field matches the true one over the same samples ([n] each, NaN ignored).

    Example: found = 0.5 * true + noise uncorrelated with it -> depth_recovered ~ 0.5, and the
    correlation falls with the noise's share of the variance.
    """
    t, f = np.asarray(true_detail, dtype=np.float64), np.asarray(found_detail, dtype=np.float64)
    if t.shape != f.shape:
        raise ValueError(f"true {t.shape} and found {f.shape} differ in shape")
    ok = np.isfinite(t) & np.isfinite(f)
    t, f = t[ok], f[ok]
    if len(t) < 2 or t.std() == 0.0 or f.std() == 0.0:
        return DetailAgreement(math.nan, depth_recovered(t, f) if len(t) else math.nan, int(len(t)))
    return DetailAgreement(float(np.corrcoef(t, f)[0, 1]), depth_recovered(t, f), int(len(t)))


def within_radius(points: np.ndarray, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """Bool mask [n_pts]: points [n_pts, 3] with |p - centre| <= radius_mm (the NoW crop is one)."""
    _check_points(points, "points")
    return np.linalg.norm(np.asarray(points) - np.asarray(centre, dtype=np.float64).reshape(1, 3), axis=1) <= radius_mm


@dataclass(frozen=True)
class ErrorStats:
    """Summary of a set of errors (mm or degrees). NaN entries are ignored."""

    median: float
    mean: float
    std: float  # population std (numpy default), as the NoW tables report
    p90: float
    max: float
    count: int

    @classmethod
    def from_errors(cls, errors: np.ndarray) -> "ErrorStats":
        e = np.asarray(errors, dtype=np.float64).ravel()
        e = e[np.isfinite(e)]
        if len(e) == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        return cls(
            median=float(np.median(e)),
            mean=float(np.mean(e)),
            std=float(np.std(e)),
            p90=float(np.percentile(e, 90)),
            max=float(np.max(e)),
            count=int(len(e)),
        )

    def to_json_dict(self) -> dict[str, float | int | None]:
        """Plain dict; NaN becomes None (JSON has no NaN)."""
        return {k: finite_or_none(v) for k, v in self.__dict__.items()}


def finite_or_none(value: float | int) -> float | int | None:
    """A float NaN / inf as None (JSON has neither); anything else unchanged."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def cumulative_curve(errors: np.ndarray, max_value: float, n: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of errors <= each threshold: (thresholds [n], fraction [n] in [0, 1]).

    thresholds = linspace(0, max_value, n). Example: errors [0.5, 1.5], max 2, n 3 ->
    thresholds [0, 1, 2], fraction [0, 0.5, 1]. NaN errors are dropped.
    """
    if n < 2 or not max_value > 0:
        raise ValueError(f"need n >= 2 and max_value > 0, got n={n}, max_value={max_value}")
    e = np.sort(np.asarray(errors, dtype=np.float64).ravel())
    e = e[np.isfinite(e)]
    thresholds = np.linspace(0.0, float(max_value), n)
    if len(e) == 0:
        return thresholds, np.zeros(n)
    return thresholds, np.searchsorted(e, thresholds, side="right") / len(e)


def _check_points(a: np.ndarray, name: str) -> None:
    shape = np.shape(a)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"{name} must be [n, 3], got {shape}")


def _apply_mask(points: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    _check_points(points, "points")
    pts = np.asarray(points)
    if mask is None:
        return pts
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (len(pts),):
        raise ValueError(f"mask must be bool [{len(pts)}], got {m.dtype} {m.shape}")
    return pts[m]

"""The fine details of a synthetic case (step 3 of ``eval.synthetic``): where they go and how deep.

:func:`plan_details` places forehead lines, crow's feet, nasolabial folds (grooves) and moles
(bumps) on the smooth base from its landmarks, as :class:`Detail` curves on the surface;
:func:`displacement_field` turns them into the displacement along the base normals and the region
labels (``REGIONS`` codes) that are the benchmark's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from fastsider.eval.synthetic_base import head_frame
from fastsider.eval.synthetic_params import DetailSpec, SyntheticParams
from fastsider.face.regions import (
    BROW_UPPER,
    EYE_LOOP,
    EYE_OUTER,
    FOREHEAD,
    LIPS_OUTER,
    MOUTH_CORNER,
    NOSE_WING,
    TOP,
)

REGIONS = {"none": 0, "forehead": 1, "crows_feet": 2, "nasolabial": 3, "bump": 4}  # gt_labels.npy codes
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
CUTOFF_SIGMAS = 4.0          # detail profiles are exactly 0 beyond this many sigmas
LABEL_MIN_MM = 0.01          # a vertex belongs to a detail region where |d| reaches this
CURVE_STEP_MM = 0.25         # sampling of detail curves (distances are exact to the polyline)
TAPER = 0.35                 # share of a curve's length over which its depth ramps in at each end
DROP_HEIGHT_MM = 40.0        # detail curves are dropped onto the surface from this far along the normal
BUMP_CLEARANCE_MM = 8.0      # bumps keep this far from the mesh border, eyes and lips
JSON_POINT_STEP_MM = 1.0     # detail curves in case.json, one point per this much arc length
FOREHEAD_GAP_FWHM = 1.5      # forehead lines: crest-to-crest gap >= this many (mean) FWHMs ...
FOREHEAD_DRIFT_MM = 1.0      # ... plus this, for their independent bends and waves


@dataclass(frozen=True)
class Detail:
    region: str            # key of REGIONS
    side: str              # "right" | "left" | "centre"
    depth_mm: float        # signed peak displacement along the outward normal (grooves < 0)
    width_mm: float        # FWHM of the cross-section
    points: np.ndarray     # [n_pts, 3] curve on the base surface (one point for a bump)

    @property
    def sigma_mm(self) -> float:
        return self.width_mm / FWHM_PER_SIGMA

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def to_json_dict(self) -> dict:
        step = max(1, int(round(JSON_POINT_STEP_MM / CURVE_STEP_MM)))
        pts = self.points[::step] if len(self.points) < 2 else np.vstack([self.points[::step], self.points[-1:]])
        return {"region": self.region, "label": REGIONS[self.region], "side": self.side,
                "depth_mm": self.depth_mm, "width_mm": self.width_mm, "length_mm": self.length_mm,
                "points_mm": np.round(pts, 3)}


# --------------------------------------------------------------------------------------------
# details: placement


class _Frame(NamedTuple):
    origin: np.ndarray  # [3]
    e1: np.ndarray      # [3] tangent, the detail's "x"
    e2: np.ndarray      # [3] tangent, e1 x normal
    normal: np.ndarray  # [3] outward


def _frame_at(mesh: trimesh.Trimesh, point: np.ndarray, direction: np.ndarray) -> _Frame:
    """Tangent frame at the vertex nearest ``point``; e1 = ``direction`` projected on the tangent plane."""
    i = int(np.argmin(np.linalg.norm(mesh.vertices - point, axis=1)))
    n = mesh.vertex_normals[i]
    e1 = direction - (direction @ n) * n
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e1, n)
    return _Frame(np.asarray(mesh.vertices[i]), e1, e2 / np.linalg.norm(e2), n)


def _drop(mesh: trimesh.Trimesh, frame: _Frame, xy: np.ndarray) -> np.ndarray:
    """Curve [n_pts, 2] in a tangent frame -> [n_hit, 3] on the surface (longest run of hits)."""
    starts = frame.origin + xy[:, :1] * frame.e1 + xy[:, 1:] * frame.e2 + DROP_HEIGHT_MM * frame.normal
    dirs = np.repeat(-frame.normal[None], len(xy), axis=0)
    locs, ray_idx, _ = mesh.ray.intersects_location(starts, dirs, multiple_hits=False)
    hit = np.zeros(len(xy), dtype=bool)
    hit[ray_idx] = True
    pts = np.zeros((len(xy), 3))
    pts[ray_idx] = locs
    runs = np.split(np.arange(len(xy)), np.flatnonzero(np.diff(hit.astype(int))) + 1)
    best = max((r for r in runs if hit[r[0]]), key=len, default=np.zeros(0, dtype=int))
    return pts[best]


def _n_samples(length_mm: float) -> int:
    return max(2, int(np.ceil(length_mm / CURVE_STEP_MM)) + 1)


def _draw(rng: np.random.Generator, spec: DetailSpec) -> tuple[float, float]:
    return float(rng.uniform(*spec.depth_mm)), float(rng.uniform(*spec.width_mm))


def _forehead_rows(rng, spec: DetailSpec, band: tuple[float, float]) -> list[tuple[float, float, float]]:
    """(y, depth, width) of parallel lines in the band, at least FOREHEAD_GAP_FWHM FWHMs + drift apart.

    Lines that do not fit the band at their widths are dropped (the embedded face's forehead is short).
    """
    n = int(rng.integers(spec.count[0], spec.count[1] + 1))
    draws = [_draw(rng, spec) for _ in range(n)]
    span = band[1] - band[0]
    gaps = [FOREHEAD_GAP_FWHM * (a[1] + b[1]) / 2.0 + FOREHEAD_DRIFT_MM for a, b in zip(draws, draws[1:])]
    while len(draws) > 1 and sum(gaps) > span:
        draws, gaps = draws[:-1], gaps[:-1]
    slack = rng.dirichlet(np.ones(len(draws) + 1)) * (span - sum(gaps))
    ys = band[0] + np.cumsum(slack[:-1]) + np.concatenate([[0.0], np.cumsum(gaps)])
    return [(float(y), depth, width) for y, (depth, width) in zip(ys, draws)]


def _forehead(mesh, lmk, axes, rng, spec) -> list[Detail]:
    fr = _frame_at(mesh, lmk[FOREHEAD], axes[0])
    brows = [i for side in BROW_UPPER.values() for i in side]
    y_brow = float(np.mean((lmk[brows] - fr.origin) @ fr.e2))
    y_top = float((lmk[TOP] - fr.origin) @ fr.e2)
    half_width = 0.5 * float(np.ptp((lmk[brows] - fr.origin) @ fr.e1))
    h = y_brow - y_top
    arch = rng.uniform(-3e-3, 3e-3)  # 1/mm, shared: the lines stay roughly parallel
    out = []
    for y, depth, width in _forehead_rows(rng, spec, (y_top + 0.2 * h, y_brow - 0.2 * h)):
        half = rng.uniform(0.45, 0.85) * half_width
        x0 = rng.uniform(-0.1, 0.1) * half_width
        x = np.linspace(x0 - half, x0 + half, _n_samples(2 * half))
        bend, amp = arch + rng.uniform(-1e-4, 1e-4), rng.uniform(0.0, 0.3)
        wave, phase = rng.uniform(30.0, 60.0), rng.uniform(0, 2 * np.pi)
        yc = y + bend * x**2 + amp * np.sin(2 * np.pi * x / wave + phase)
        out.append(Detail("forehead", "centre", -depth, width, _drop(mesh, fr, np.stack([x, yc], 1))))
    return out


def _crows_feet(mesh, lmk, axes, rng, spec) -> list[Detail]:
    out = []
    for side, lateral in (("right", -axes[0]), ("left", axes[0])):
        fr = _frame_at(mesh, lmk[EYE_OUTER[side]], lateral)
        n = int(rng.integers(spec.count[0], spec.count[1] + 1))
        angles = np.radians(np.linspace(-45.0, 45.0, n) + rng.uniform(-5.0, 5.0, n))
        for a in angles:
            depth, width = _draw(rng, spec)
            r0, length, bend = rng.uniform(4.0, 7.0), rng.uniform(8.0, 15.0), rng.uniform(-1.5, 1.5)
            t = np.linspace(0.0, 1.0, _n_samples(length))
            r = r0 + t * length
            xy = np.stack([r * np.cos(a) - bend * t**2 * np.sin(a), r * np.sin(a) + bend * t**2 * np.cos(a)], 1)
            out.append(Detail("crows_feet", side, -depth, width, _drop(mesh, fr, xy)))
    return out


def _nasolabial(mesh, lmk, axes, rng, spec) -> list[Detail]:
    out = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        wing, corner = lmk[NOSE_WING[side]], lmk[MOUTH_CORNER[side]]
        fr = _frame_at(mesh, (wing + corner) / 2.0, sign * axes[0])  # e1 lateral, e2 ~ up or down
        down = -1.0 if (axes[1] @ fr.e2) < 0 else 1.0
        p0 = np.array([(wing - fr.origin) @ fr.e1 + 2.0, (wing - fr.origin) @ fr.e2 + down * 1.0])
        p2 = np.array([(corner - fr.origin) @ fr.e1 + rng.uniform(4.0, 8.0),
                       (corner - fr.origin) @ fr.e2 + down * rng.uniform(2.0, 6.0)])
        p1 = (p0 + p2) / 2.0 + np.array([rng.uniform(2.0, 5.0), 0.0])
        for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
            depth, width = _draw(rng, spec)
            t = np.linspace(0.0, 1.0, _n_samples(1.3 * np.linalg.norm(p2 - p0)))[:, None]
            xy = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
            out.append(Detail("nasolabial", side, -depth, width, _drop(mesh, fr, xy)))
    return out


def _bumps(mesh, lmk, rng, spec, others: list[Detail]) -> list[Detail]:
    """Moles at random skin vertices, clear of the border, eyes, lips and every other detail."""
    keep_out = [mesh.vertices[np.unique(mesh.edges[trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)])],
                lmk[list(EYE_LOOP["right"] + EYE_LOOP["left"] + LIPS_OUTER)]]
    avoid = cKDTree(np.vstack(keep_out))
    taken = [(d.points, CUTOFF_SIGMAS * d.sigma_mm) for d in others]
    out = []
    for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
        depth, width = _draw(rng, spec)
        reach = CUTOFF_SIGMAS * width / FWHM_PER_SIGMA
        for _attempt in range(200):
            p = np.asarray(mesh.vertices[rng.integers(len(mesh.vertices))])
            if avoid.query(p)[0] < BUMP_CLEARANCE_MM:
                continue
            if all(np.min(np.linalg.norm(pts - p, axis=1)) > reach + r for pts, r in taken):
                break
        else:
            continue
        out.append(Detail("bump", "centre", depth, width, p[None].copy()))
        taken.append((p[None], reach))
    return out


def plan_details(mesh: trimesh.Trimesh, landmarks: np.ndarray, params: SyntheticParams,
                 rng: np.random.Generator) -> list[Detail]:
    """All details of a case, placed from the landmarks [468, 3] on the (fine, smooth) base mesh."""
    axes = head_frame(landmarks)
    details = _forehead(mesh, landmarks, axes, rng, params.forehead)
    details += _crows_feet(mesh, landmarks, axes, rng, params.crows_feet)
    details += _nasolabial(mesh, landmarks, axes, rng, params.nasolabial)
    details += _bumps(mesh, landmarks, rng, params.bumps, details)
    return [d for d in details if len(d.points) >= (1 if d.region == "bump" else 2)]


# --------------------------------------------------------------------------------------------
# details: the displacement field


def _polyline_distance(v: np.ndarray, pts: np.ndarray, nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance [n] from points v [n, 3] to a polyline pts [k, 3] and the arc length [n] of the closest point.

    Exact near the curve: the two segments beside the nearest sample ``nearest`` [n] are tested.
    """
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    best_r, best_s = np.full(len(v), np.inf), np.zeros(len(v))
    for k in (np.clip(nearest - 1, 0, len(pts) - 2), np.clip(nearest, 0, len(pts) - 2)):
        a, ab = pts[k], pts[k + 1] - pts[k]
        t = np.clip(np.einsum("ij,ij->i", v - a, ab) / np.maximum(seg[k] ** 2, 1e-12), 0.0, 1.0)
        r = np.linalg.norm(v - a - t[:, None] * ab, axis=1)
        closer = r < best_r
        best_r[closer], best_s[closer] = r[closer], cum[k][closer] + t[closer] * seg[k][closer]
    return best_r, best_s


def _taper(s: np.ndarray, length: float) -> np.ndarray:
    """Tukey window along a curve: raised-cosine ramps over TAPER * length at both ends, 1 between."""
    ramp = max(TAPER * length, 1e-6)
    end = np.minimum(s, length - s).clip(0.0, None)
    return np.where(end < ramp, 0.5 * (1.0 - np.cos(np.pi * end / ramp)), 1.0)


def _profile(r: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian cross-section, 1 at r = 0, shifted to reach exactly 0 at CUTOFF_SIGMAS * sigma."""
    floor = np.exp(-0.5 * CUTOFF_SIGMAS**2)
    return np.clip((np.exp(-0.5 * (r / sigma) ** 2) - floor) / (1.0 - floor), 0.0, None)


def _within(vertices: np.ndarray, detail: Detail, margin: float) -> np.ndarray:
    """Indices of the vertices in the detail's bounding box grown by its reach + margin."""
    reach = CUTOFF_SIGMAS * detail.sigma_mm + margin
    lo, hi = detail.points.min(axis=0) - reach, detail.points.max(axis=0) + reach
    return np.flatnonzero(np.all((vertices >= lo) & (vertices <= hi), axis=1))


def detail_displacement(vertices: np.ndarray, detail: Detail) -> tuple[np.ndarray, np.ndarray]:
    """One detail's displacement: vertex indices [m] and values [m] (mm, nonzero only)."""
    idx = _within(vertices, detail, 0.0)
    v = vertices[idx]
    if len(detail.points) == 1:
        value = _profile(np.linalg.norm(v - detail.points[0], axis=1), detail.sigma_mm)
    else:
        _, nearest = cKDTree(detail.points).query(v)
        r, s = _polyline_distance(v, detail.points, nearest)
        value = _profile(r, detail.sigma_mm) * _taper(s, detail.length_mm)
    keep = value > 0.0
    return idx[keep], detail.depth_mm * value[keep]


def displacement_field(vertices: np.ndarray, details: list[Detail]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of all details at vertices [n_verts, 3] -> displacement [n_verts] mm, labels [n_verts] uint8.

    A vertex's label is the region of the detail that displaces it most, 0 where neither that detail
    nor the sum reaches LABEL_MIN_MM (so |d| < LABEL_MIN_MM wherever the label is 0).
    """
    disp = np.zeros(len(vertices))
    strongest = np.zeros(len(vertices))
    labels = np.zeros(len(vertices), dtype=np.uint8)
    for d in details:
        idx, value = detail_displacement(vertices, d)
        disp[idx] += value
        stronger = np.abs(value) > strongest[idx]
        strongest[idx[stronger]] = np.abs(value[stronger])
        labels[idx[stronger]] = REGIONS[d.region]
    labels[np.maximum(strongest, np.abs(disp)) < LABEL_MIN_MM] = 0
    return disp, labels


def near_details(vertices: np.ndarray, details: list[Detail], margin: float) -> np.ndarray:
    """[n_verts] bool: within reach (CUTOFF_SIGMAS * sigma) + margin of some detail."""
    near = np.zeros(len(vertices), dtype=bool)
    for d in details:
        idx = _within(vertices, d, margin)
        dist, _ = cKDTree(d.points).query(vertices[idx], distance_upper_bound=CUTOFF_SIGMAS * d.sigma_mm + margin)
        near[idx[np.isfinite(dist)]] = True
    return near

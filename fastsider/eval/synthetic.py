"""Synthetic faces whose fine geometry is known: the ground truth of ``fastsider bench``.

A case is built in five steps, all seeded (``make_case(seed)`` is byte-reproducible):

1. **Base**: a smooth face surface in the camera frame (mm). By default the embedded coarse
   model (``face.default_model``) on the example photo's landmarks (cached in
   ``eval/data/example_landmarks.npy``, so no detector runs), scaled by a few % per head axis
   and turned by a few degrees per seed.
2. **Fine base**: Loop-subdivided ``loop_levels`` times, then red-green refined (edge midpoints)
   near the details until every edge there is shorter than ``max_edge_mm``.
3. **Details**: displacement along the base vertex normals,
   ``d(x) = sum_i depth_i * envelope_i(s) * g(r / sigma_i)``, with r the distance to detail i's
   curve on the surface, s the arc length along it, ``sigma = FWHM / 2.3548`` and g a Gaussian cut
   to zero at ``CUTOFF_SIGMAS``. Grooves (negative depth): forehead lines, crow's feet,
   nasolabial folds; bumps (positive): moles. Labels 1..4 mark where ``|d| >= LABEL_MIN_MM``.
4. **Coarse mesh**: the base at ``coarse_loop_levels`` (within ~0.02 mm of the fine base), plus an
   optional smooth fitting error of ``coarse_error_mm``.
5. **Photo**: the GT mesh ray-cast (Embree) with ``supersample^2`` jittered rays per pixel,
   interpolated vertex normals, Lambertian skin (tone, blotches, freckles, lips, brows, eyes) under
   a directional light in a frontal cone + ambient + weak Blinn-Phong, over a smooth gradient, plus
   Gaussian noise.

The case is consistent with the user-mesh path: ``fastsider fit case/image.png --coarse
case/coarse.ply --camera case/camera.json`` (identity ``world_to_camera``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import points_in_poly

from fastsider.camera import Camera, pixel_grid
from fastsider.config import DefaultModelConfig
from fastsider.face.default_model import build_default_coarse, orient_towards_camera
from fastsider.face.landmarks import N_MESH_LANDMARKS, NOW_LANDMARK_IDS
from fastsider.face.regions import (
    BROW_LOWER, BROW_UPPER, CHIN, EYE_LOOP, EYE_OUTER, FOREHEAD, LIPS_INNER, LIPS_OUTER, MOUTH_CORNER, NOSE_WING, TOP,
)
from fastsider.io import OutputStage, save_image, save_json, save_mesh, square_crop_around

log = logging.getLogger(__name__)

EXAMPLE_LANDMARKS = Path(__file__).resolve().parent / "data" / "example_landmarks.npy"
REGIONS = {"none": 0, "forehead": 1, "crows_feet": 2, "nasolabial": 3, "bump": 4}  # gt_labels.npy codes
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
CUTOFF_SIGMAS = 4.0          # detail profiles are exactly 0 beyond this many sigmas
LABEL_MIN_MM = 0.01          # a vertex belongs to a detail region where |d| reaches this
CURVE_STEP_MM = 0.25         # sampling of detail curves (distances are exact to the polyline)
TAPER = 0.35                 # share of a curve's length over which its depth ramps in at each end
DROP_HEIGHT_MM = 40.0        # detail curves are dropped onto the surface from this far along the normal
MAX_REFINE_ROUNDS = 4
BUMP_CLEARANCE_MM = 8.0      # bumps keep this far from the mesh border, eyes and lips
JSON_POINT_STEP_MM = 1.0     # detail curves in case.json, one point per this much arc length
FOREHEAD_GAP_FWHM = 1.5      # forehead lines: crest-to-crest gap >= this many (mean) FWHMs ...
FOREHEAD_DRIFT_MM = 1.0      # ... plus this, for their independent bends and waves

IRIS_RADIUS_MM, PUPIL_RADIUS_MM = 5.5, 2.0


@dataclass(frozen=True)
class DetailSpec:
    count: tuple[int, int]          # details per region (per side for crow's feet, nasolabial), inclusive;
                                    # forehead lines that do not fit the forehead at their widths are dropped
    depth_mm: tuple[float, float]   # peak |displacement|, uniform in the range
    width_mm: tuple[float, float]   # full width at half maximum of the cross-section


@dataclass(frozen=True)
class SyntheticParams:
    image_size: int = 512            # square photo, pixels
    focal_factor: float = 4.0        # focal length = focal_factor * image_size (px), as the working camera
    frame_margin: float = 0.2        # landmark box grown by this share per side: face box ~ size / 1.4
    scale_jitter: float = 0.04       # per-seed scale of the head's width, height, depth: 1 +- this
    rotation_deg: float = 5.0        # per-seed yaw, pitch, roll: +- this
    loop_levels: int = 3             # Loop subdivisions of the base before detailing (~0.5 mm edges)
    max_edge_mm: float = 0.4         # near details, edges are split until shorter than this
    coarse_loop_levels: int = 2      # the coarse mesh is the base at this level (~1 mm edges)
    coarse_error_mm: float = 0.0     # peak smooth fitting error added to the coarse mesh
    coarse_error_wavelength_mm: tuple[float, float] = (40.0, 120.0)
    forehead: DetailSpec = DetailSpec((2, 4), (0.2, 0.6), (1.5, 3.5))
    crows_feet: DetailSpec = DetailSpec((3, 5), (0.1, 0.4), (1.0, 2.5))
    nasolabial: DetailSpec = DetailSpec((1, 1), (0.5, 1.0), (3.0, 6.0))
    bumps: DetailSpec = DetailSpec((3, 6), (0.2, 0.8), (1.5, 4.0))
    supersample: int = 2             # jittered rays per pixel: supersample^2
    light_polar_deg: tuple[float, float] = (25.0, 50.0)  # light angle from the camera axis
    light_azimuth_deg: float = 45.0  # light azimuth within +- this of straight above (lights the
                                     # horizontal forehead lines; ~5 grey levels at least for 0.3 mm)
    ambient: float = 0.3             # share of light that is ambient
    specular: float = 0.05           # Blinn-Phong strength (white)
    shininess: float = 30.0
    blotch_amplitude: float = 0.06   # relative albedo variation of smooth blotches
    blotch_wavelength_mm: tuple[float, float] = (15.0, 50.0)
    freckles: tuple[int, int] = (20, 60)
    freckle_radius_mm: tuple[float, float] = (0.4, 1.2)
    noise_std: float = 0.004         # Gaussian pixel noise, in [0, 1] units


class FaceBase(NamedTuple):
    """A smooth face in the camera frame (mm), normals towards the camera."""

    vertices: np.ndarray   # [n_verts, 3]
    faces: np.ndarray      # [n_faces, 3]
    landmarks: np.ndarray  # [468, 3] MediaPipe face-mesh landmarks on the surface (detail placement)


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


@dataclass(frozen=True)
class SyntheticCase:
    seed: int
    params: SyntheticParams
    image: np.ndarray           # [H, W, 3] uint8
    camera: Camera
    gt_vertices: np.ndarray     # [n_verts, 3] mm, float32-exact (as written to gt.ply)
    gt_faces: np.ndarray        # [n_faces, 3]
    base_vertices: np.ndarray   # [n_verts, 3] the GT before details (same faces)
    labels: np.ndarray          # [n_verts] uint8, REGIONS codes
    displacement: np.ndarray    # [n_verts] mm along the base normal: gt = base + d * n
    albedo: np.ndarray          # [n_verts, 3] in [0, 1], what the photo was rendered with
    coarse_vertices: np.ndarray  # [n_coarse, 3] mm, float32-exact
    coarse_faces: np.ndarray     # [n_coarse_faces, 3]
    landmarks7: np.ndarray      # [7, 3] NoW landmarks on the GT (ids NOW_LANDMARK_IDS)
    details: tuple[Detail, ...]
    light_dir: np.ndarray       # [3] unit, towards the light, camera frame
    background: np.ndarray      # [2, 3] top and bottom colours of the backdrop gradient
    info: dict = field(default_factory=dict)  # counts and timings, for logs


# --------------------------------------------------------------------------------------------
# base surface


def detect_example_landmarks() -> np.ndarray:
    """MediaPipe on the embedded example photo -> [478, 3] (what EXAMPLE_LANDMARKS caches)."""
    from fastsider.face.landmarks import detect_landmarks
    from fastsider.io import EXAMPLE_NAME, load_example

    return detect_landmarks(load_example(), source=EXAMPLE_NAME)


@functools.lru_cache(maxsize=1)
def example_landmarks() -> np.ndarray:
    """The cached example landmarks [478, 3] (pixels of the 512x512 example photo)."""
    return np.load(EXAMPLE_LANDMARKS, allow_pickle=False)


def synthetic_camera(params: SyntheticParams) -> Camera:
    f = params.focal_factor * params.image_size
    c = (params.image_size - 1) / 2.0
    return Camera(params.image_size, params.image_size, f, f, c, c)


def head_frame(landmarks: np.ndarray) -> np.ndarray:
    """Rows: the head's right (image +x), down and forward axes [3, 3], from 468 landmarks [468, 3]."""
    x = landmarks[EYE_OUTER["left"]] - landmarks[EYE_OUTER["right"]]
    x /= np.linalg.norm(x)
    y = landmarks[CHIN] - landmarks[TOP]
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def example_base(seed: int, params: SyntheticParams = SyntheticParams()) -> FaceBase:
    """The embedded default model on the example's landmarks, framed for ``synthetic_camera``, varied per seed."""
    lmk = example_landmarks()
    crop = square_crop_around(lmk[:, :2], params.frame_margin, params.image_size)
    lmk_crop = np.concatenate([crop.to_crop(lmk[:, :2]), lmk[:, 2:] * crop.scale], axis=1)
    coarse = build_default_coarse(lmk_crop, synthetic_camera(params), DefaultModelConfig())
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    axes = head_frame(coarse.landmarks_3d)
    scale = 1.0 + rng.uniform(-params.scale_jitter, params.scale_jitter, 3)
    yaw, pitch, roll = np.radians(rng.uniform(-params.rotation_deg, params.rotation_deg, 3))
    rot = trimesh.transformations.euler_matrix(pitch, yaw, roll, "sxyz")[:3, :3]
    m = rot @ axes.T @ np.diag(scale) @ axes  # scale along the head's axes, then turn
    centre = coarse.vertices.mean(axis=0)
    vertices = (coarse.vertices - centre) @ m.T + centre
    return FaceBase(vertices, np.asarray(coarse.faces), vertices[:N_MESH_LANDMARKS].copy())


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


# --------------------------------------------------------------------------------------------
# meshes: Loop levels, local red-green refinement


def loop_subdivide(vertices: np.ndarray, faces: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    if levels == 0:
        return np.asarray(vertices, dtype=float), np.asarray(faces)
    return trimesh.remesh.subdivide_loop(vertices, faces, iterations=levels)


def _red_green(faces: np.ndarray, f2e: np.ndarray, split: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Children of every face: 4 where all edges split, 2 where one, the face itself where none."""
    cnt = split[f2e].sum(axis=1)
    red, green = cnt == 3, cnt == 1
    a, b, c = faces[red].T
    mab, mbc, mca = mid[f2e[red]].T  # edge j joins corners j and j + 1
    reds = np.concatenate([np.stack(t, 1) for t in ((a, mab, mca), (mab, b, mbc), (mca, mbc, c), (mab, mbc, mca))])
    j = np.argmax(split[f2e[green]], axis=1)
    rows = np.arange(green.sum())
    g = faces[green]
    fa, fb, fc = g[rows, j], g[rows, (j + 1) % 3], g[rows, (j + 2) % 3]
    m = mid[f2e[green][rows, j]]
    greens = np.concatenate([np.stack([fa, m, fc], 1), np.stack([m, fb, fc], 1)])
    return np.concatenate([faces[cnt == 0], reds, greens])


def refine_near(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, near: np.ndarray,
                max_edge_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split edge midpoints until faces touching ``near`` vertices have edges under max_edge_mm.

    Red-green refinement (faces with two split edges are split fully; with one, bisected), so the
    mesh stays conforming. New vertices: edge midpoints (positions linear, normals averaged), appended
    after the old ones. vertices, normals [n_verts, 3], faces [n_faces, 3], near [n_verts] bool.
    """
    v, f, n, flag = np.asarray(vertices, float), np.asarray(faces, np.int64), np.asarray(normals, float), near
    for _ in range(MAX_REFINE_ROUNDS):
        e = np.sort(f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
        keys, f2e = np.unique(e[:, 0] * len(v) + e[:, 1], return_inverse=True)
        f2e = f2e.reshape(-1, 3)
        ends = np.stack([keys // len(v), keys % len(v)], axis=1)
        length = np.linalg.norm(v[ends[:, 0]] - v[ends[:, 1]], axis=1)
        marked = flag[f].any(axis=1) & (length[f2e].max(axis=1) > max_edge_mm)
        if not marked.any():
            break
        split = np.zeros(len(keys), dtype=bool)
        split[f2e[marked]] = True
        while (two := split[f2e].sum(axis=1) == 2).any():
            split[f2e[two]] = True
        mid = np.full(len(keys), -1)
        mid[split] = len(v) + np.arange(split.sum())
        ea, eb = ends[split].T
        nn = n[ea] + n[eb]
        f = _red_green(f, f2e, split, mid)
        v = np.concatenate([v, (v[ea] + v[eb]) / 2.0])
        n = np.concatenate([n, nn / np.linalg.norm(nn, axis=1, keepdims=True)])
        flag = np.concatenate([flag, flag[ea] | flag[eb]])
    return v, f, n


# --------------------------------------------------------------------------------------------
# appearance


LIGHT_SKIN, DARK_SKIN = np.array([0.87, 0.68, 0.58]), np.array([0.42, 0.28, 0.21])
BROW_COLOUR, BROW_OPACITY = np.array([0.16, 0.11, 0.08]), 0.7
LIP_TINT = np.array([0.9, 0.6, 0.62])              # multiplies the skin
MOUTH_COLOUR, SCLERA_COLOUR = np.array([0.25, 0.09, 0.09]), np.array([0.82, 0.80, 0.76])
IRIS_COLOURS = np.array([[0.28, 0.17, 0.10], [0.20, 0.28, 0.38], [0.25, 0.30, 0.18]])
PUPIL_COLOUR = np.array([0.04, 0.03, 0.03])
FRECKLE_TINT = np.array([0.8, 1.0, 1.2])           # darkening per channel: brownish spots
N_BLOTCH_WAVES = 16


def _waves(points: np.ndarray, rng: np.random.Generator, wavelength_mm: tuple[float, float], n: int) -> np.ndarray:
    """Smooth random field [n_pts] of ~unit spread: n plane waves in random 3-D directions."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.cos(points @ (dirs * k[:, None]).T + phase).sum(axis=1) / np.sqrt(n / 2.0)


def _freckles(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, params: SyntheticParams) -> np.ndarray:
    """Multiplicative albedo [n_verts, 3] of small dark spots at area-uniform random places."""
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    n = int(rng.integers(params.freckles[0], params.freckles[1] + 1))
    which = rng.choice(len(faces), size=n, p=area / area.sum())
    w = rng.dirichlet(np.ones(3), size=n)
    centres = np.einsum("ij,ijk->ik", w, tri[which])
    radius = rng.uniform(*params.freckle_radius_mm, n)
    strength = rng.uniform(0.1, 0.25, n)
    out = np.ones((len(vertices), 3))
    tree = cKDTree(vertices)
    for c, r, s in zip(centres, radius, strength):
        idx = np.asarray(tree.query_ball_point(c, 3.0 * r), dtype=int)
        g = np.exp(-0.5 * (np.linalg.norm(vertices[idx] - c, axis=1) / r) ** 2)
        out[idx] *= 1.0 - s * g[:, None] * FRECKLE_TINT
    return out


def _paint_features(albedo: np.ndarray, vertices: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> None:
    """Brows, lips, mouth and eyes, as polygons in the head's frontal plane (in place)."""
    axes = head_frame(landmarks)
    q = (vertices - landmarks.mean(axis=0)) @ axes[:2].T
    lq = (landmarks - landmarks.mean(axis=0)) @ axes[:2].T

    def inside(ids) -> np.ndarray:
        return points_in_poly(q, lq[list(ids)])

    for side in ("right", "left"):
        brow = inside(BROW_UPPER[side] + BROW_LOWER[side][::-1])
        albedo[brow] = (1 - BROW_OPACITY) * albedo[brow] + BROW_OPACITY * BROW_COLOUR
    lips = inside(LIPS_OUTER)
    albedo[lips] *= LIP_TINT
    albedo[inside(LIPS_INNER)] = MOUTH_COLOUR
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    for side in ("right", "left"):
        eye = inside(EYE_LOOP[side])
        r = np.linalg.norm(q - lq[list(EYE_LOOP[side])].mean(axis=0), axis=1)
        albedo[eye] = SCLERA_COLOUR
        albedo[eye & (r < IRIS_RADIUS_MM)] = iris
        albedo[eye & (r < PUPIL_RADIUS_MM)] = PUPIL_COLOUR


def skin_albedo(vertices: np.ndarray, faces: np.ndarray, landmarks: np.ndarray, params: SyntheticParams,
                rng: np.random.Generator) -> np.ndarray:
    """Per-vertex albedo [n_verts, 3] in [0, 1]: tone, blotches, freckles, brows, lips, eyes.

    Drawn independently of the details (no correlation with the wrinkles).
    """
    tone = LIGHT_SKIN + rng.uniform() * (DARK_SKIN - LIGHT_SKIN)
    bright = _waves(vertices, rng, params.blotch_wavelength_mm, N_BLOTCH_WAVES)
    red = _waves(vertices, rng, params.blotch_wavelength_mm, N_BLOTCH_WAVES)
    albedo = tone * (1.0 + params.blotch_amplitude * bright)[:, None]
    albedo[:, 0] *= 1.0 + 0.5 * params.blotch_amplitude * red
    albedo *= _freckles(vertices, faces, rng, params)
    _paint_features(albedo, vertices, landmarks, rng)
    return np.clip(albedo, 0.0, 1.0)


def light_direction(rng: np.random.Generator, params: SyntheticParams) -> np.ndarray:
    """Unit vector towards the light [3], camera frame: polar angle from the camera axis, azimuth from 'up'."""
    polar = np.radians(rng.uniform(*params.light_polar_deg))
    azimuth = np.radians(rng.uniform(-params.light_azimuth_deg, params.light_azimuth_deg))
    return np.array([np.sin(polar) * np.sin(azimuth), -np.sin(polar) * np.cos(azimuth), -np.cos(polar)])


def background_colours(rng: np.random.Generator) -> np.ndarray:
    """Top and bottom colours [2, 3] of a muted backdrop: a grey level each, slightly tinted."""
    grey = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6)])
    return grey[:, None] + rng.uniform(-0.08, 0.08, (2, 3))


def render_photo(vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray, cam: Camera, light: np.ndarray,
                 background: np.ndarray, params: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
    """Supersampled photo [H, W, 3] uint8 of a camera-frame mesh with per-vertex albedo [n_verts, 3].

    Misses see a vertical gradient between the ``background`` colours [2, 3] (top, bottom) across
    the field of view of ``synthetic_camera(params)`` (by ray slope, so a window camera made with
    ``Camera.transformed`` sees the same backdrop). ``rng`` draws only the ray jitter and the noise.

    I = albedo * (ambient + (1 - ambient) * max(n.l, 0)) + specular * max(n.h, 0)^shininess, with n
    the barycentric interpolation of the vertex normals at each ray's first hit (Embree).
    """
    s = params.supersample
    jitter = (np.stack(np.meshgrid(np.arange(s), np.arange(s), indexing="xy"), -1).reshape(-1, 2)
              + rng.uniform(size=(cam.height * cam.width, s * s, 2))) / s - 0.5
    sub = (pixel_grid(cam)[:, None, :] + jitter).reshape(-1, 2)  # [H * W * s^2, 2]
    dirs = np.stack([(sub[:, 0] - cam.cx) / cam.fx, (sub[:, 1] - cam.cy) / cam.fy, np.ones(len(sub))], 1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    locs, ray, tri = mesh.ray.intersects_location(np.zeros_like(dirs), dirs, multiple_hits=False)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], locs)
    corners = mesh.faces[tri]
    normal = np.einsum("ij,ijk->ik", bary, mesh.vertex_normals[corners])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    colour = np.einsum("ij,ijk->ik", bary, albedo[corners])
    diffuse = np.clip(normal @ light, 0.0, None)
    half = light - dirs[ray]
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = params.specular * np.clip(np.einsum("ij,ij->i", normal, half), 0.0, None) ** params.shininess
    # backdrop at infinity: top to bottom colour over the full image's field of view, by ray slope
    t = np.clip(0.5 + params.focal_factor * dirs[:, 1] / dirs[:, 2], 0.0, 1.0)[:, None]
    out = (1.0 - t) * background[0] + t * background[1]
    out[ray] = colour * (params.ambient + (1.0 - params.ambient) * diffuse)[:, None] + (spec * (diffuse > 0))[:, None]
    image = out.reshape(cam.height, cam.width, s * s, 3).mean(axis=2)
    image += rng.normal(0.0, params.noise_std, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# cases


def _coarse_error(vertices: np.ndarray, faces: np.ndarray, params: SyntheticParams,
                  rng: np.random.Generator) -> np.ndarray:
    """The coarse mesh's vertices plus a smooth error along the normals peaking at coarse_error_mm."""
    if params.coarse_error_mm <= 0.0:
        return vertices
    e = _waves(vertices, rng, params.coarse_error_wavelength_mm, 4)
    e *= params.coarse_error_mm / max(np.abs(e).max(), 1e-12)
    return vertices + e[:, None] * trimesh.Trimesh(vertices, faces, process=False).vertex_normals


def _landmark_vertices(base: FaceBase, vertices: np.ndarray) -> np.ndarray:
    """Vertex ids [468] of the landmarks on a subdivision of the base (Loop keeps the first ids)."""
    if np.allclose(base.vertices[:N_MESH_LANDMARKS], base.landmarks):
        return np.arange(N_MESH_LANDMARKS)
    return cKDTree(vertices).query(base.landmarks)[1]


def _f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 (what PLY stores), kept as float64, so memory and files agree."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def make_case(seed: int, params: SyntheticParams = SyntheticParams(), base: FaceBase | None = None) -> SyntheticCase:
    """One synthetic case. Same seed and params -> identical arrays and a byte-identical image.

    Args:
        seed: drives the base variation (``example_base``), details, appearance, light and noise.
        base: a smooth face in ``synthetic_camera(params)``'s frame; default ``example_base(seed, params)``.
    """
    if params.loop_levels < params.coarse_loop_levels:
        raise ValueError(f"loop_levels ({params.loop_levels}) must be >= "
                         f"coarse_loop_levels ({params.coarse_loop_levels})")
    t0 = time.perf_counter()
    r_details, r_albedo, r_scene, r_render, r_coarse = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0]).spawn(5))
    base = example_base(seed, params) if base is None else base
    cam = synthetic_camera(params)
    faces = orient_towards_camera(base.vertices, base.faces)  # outward normals: grooves go into the skin
    coarse_v, coarse_f = loop_subdivide(base.vertices, faces, params.coarse_loop_levels)
    fine_v, fine_f = loop_subdivide(coarse_v, coarse_f, params.loop_levels - params.coarse_loop_levels)
    fine = trimesh.Trimesh(fine_v, fine_f, process=False)
    lmk_ids = _landmark_vertices(base, fine_v)
    details = plan_details(fine, fine_v[lmk_ids], params, r_details)
    near = near_details(fine_v, details, margin=params.max_edge_mm)
    v, f, n = refine_near(fine_v, fine_f, fine.vertex_normals, near, params.max_edge_mm)
    disp, labels = displacement_field(v, details)
    gt = _f32(v + disp[:, None] * n)
    albedo = skin_albedo(v, f, v[lmk_ids], params, r_albedo)
    light, background = light_direction(r_scene, params), background_colours(r_scene)
    image = render_photo(gt, f, albedo, cam, light, background, params, r_render)
    coarse_v = _f32(_coarse_error(coarse_v, coarse_f, params, r_coarse))
    info = {"gt_vertices": len(gt), "gt_faces": len(f), "coarse_vertices": len(coarse_v),
            "seconds": round(time.perf_counter() - t0, 2)}
    log.info("synthetic case %d: %d details, %d GT vertices, %.1f s", seed, len(details), len(gt), info["seconds"])
    return SyntheticCase(seed, params, image, cam, gt, f, v, labels, disp, albedo, coarse_v, np.asarray(coarse_f),
                         gt[lmk_ids[list(NOW_LANDMARK_IDS)]], tuple(details), light, background, info)


CASE_FILES = ("image.png", "gt.ply", "coarse.ply", "camera.json", "gt_labels.npy", "gt_displacement.npy",
              "landmarks7.txt", "case.json")


def write_case(case: SyntheticCase, folder: str | Path) -> list[Path]:
    """Write CASE_FILES into ``folder`` (all or nothing). Returns their paths.

    gt_labels.npy: [n_gt] uint8 REGIONS codes; gt_displacement.npy: [n_gt] float32 mm along the
    base normal (gt = base + d * n); landmarks7.txt: 7 rows x y z (mm, camera frame, NoW order).
    """
    with OutputStage(folder) as stage:
        save_image(stage.path("image.png"), case.image)
        save_mesh(stage.path("gt.ply"), case.gt_vertices, case.gt_faces)
        save_mesh(stage.path("coarse.ply"), case.coarse_vertices, case.coarse_faces)
        save_json(stage.path("camera.json"), case.camera.to_json_dict())
        np.save(stage.path("gt_labels.npy"), case.labels)
        np.save(stage.path("gt_displacement.npy"), case.displacement.astype(np.float32))
        np.savetxt(stage.path("landmarks7.txt"), case.landmarks7, fmt="%.4f")
        save_json(stage.path("case.json"), {
            "seed": case.seed, "units": "mm", "frame": "camera (OpenCV: x right, y down, z forward)",
            "params": dataclasses.asdict(case.params), "labels": REGIONS,
            "landmarks7_ids": list(NOW_LANDMARK_IDS), "light_dir": case.light_dir, "background": case.background,
            "n_gt_vertices": len(case.gt_vertices), "n_coarse_vertices": len(case.coarse_vertices),
            "details": [d.to_json_dict() for d in case.details],
        })
        return stage.commit()


def generate_cases(out_dir: str | Path, n: int, seed: int = 0,
                   params: SyntheticParams = SyntheticParams()) -> list[Path]:
    """Cases ``out_dir/case_000 ...`` with seeds seed, seed + 1, ...; returns the case folders."""
    folders = []
    for i in range(n):
        folder = Path(out_dir) / f"case_{i:03d}"
        write_case(make_case(seed + i, params), folder)
        folders.append(folder)
    return folders

"""Fitting FLAME to MediaPipe landmarks, and deriving a landmark embedding when none is given.

Camera frame vertices of a fit: v_cam = R(rotation) FLAME_TO_CAMERA v_flame + translation, with
``v_flame`` FLAME's forward pass (global/neck/eye joints at rest, jaw free); ``rotation`` is an
axis-angle in the camera frame, so zero means the face looks straight into the camera.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import igl
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from fastsider.camera import Camera, project, unproject
from fastsider.config import FlameFitConfig
from fastsider.face.flame import FLAME_TO_CAMERA, FlameError, FlameModel, LandmarkEmbedding
from fastsider.face.flame_forward import (
    FlameTensors,
    axis_angle_to_matrix,
    embed_points,
    flame_subset,
    flame_tensors,
    flame_vertices,
)
from fastsider.face.types import CoarseFace

log = logging.getLogger(__name__)

JAW_JOINT = 2                 # FLAME joints: global, neck, jaw, eye L, eye R
ICP_ITERATIONS = 30
MIN_EMBED_POINTS = 4          # a similarity needs a few points off one line
ICP_TOL_MM = 1e-4             # stop when no point moves more than this
ICP_TRIM = 3.0                # pairs farther than this many median distances are left out
RIGID_FRACTION = 0.3          # share of the iterations that move only rotation and translation
LR_FINAL_FRACTION = 0.02      # cosine decay of the learning rate down to lr * this
TRANSLATION_UNIT_MM = 10.0    # translation is optimized in these units (Adam steps ~lr units)
LBFGS_ITERATIONS = 100        # quasi-Newton polish after Adam


class FlameFit(NamedTuple):
    """Result of :func:`fit_flame`.

    ``params``: ``shape`` [n_s], ``expression`` [n_e], ``rotation`` [3] (axis-angle, camera
    frame), ``jaw`` [3] (axis-angle), ``translation`` [3] mm. ``reprojection_px``: mean distance
    between the projected embedded landmarks and the detected ones, pixels.
    """

    coarse: CoarseFace
    params: dict[str, np.ndarray]
    reprojection_px: float


# --------------------------------------------------------------------------------------------
# embedding by rigid alignment of the template


def _initial_placement(verts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Targets moved onto the template: scale from RMS radii, translation from centroids.

    The template is a whole head and the targets a face, so only template vertices within the
    targets' depth range of the frontmost template point (z forward) are compared.

    Args:
        verts: [n_verts, 3] template in camera axes; target: [n_lmk, 3].
    Returns:
        [n_lmk, 3] targets after the inverse of that similarity.
    """
    slab = verts[verts[:, 2] <= verts[:, 2].min() + np.ptp(target[:, 2])]  # [n_slab, 3]
    rms = lambda p: np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())  # noqa: E731
    return (target - target.mean(0)) * (rms(slab) / rms(target)) + slab.mean(0)


def _closest_on_mesh(points: np.ndarray, verts: np.ndarray, faces: np.ndarray):
    """Closest surface points: distances [n], triangle indices [n], points [n, 3]."""
    sq, face_idx, closest = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, dtype=np.float64), np.ascontiguousarray(verts, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64))
    return np.sqrt(sq), face_idx, closest


def _similarity_step(points: np.ndarray, closest: np.ndarray,
                     normals: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """One Gauss-Newton point-to-plane step of a similarity p' = s R p + t.

    Linearized about the centroid m, q = p - m: p' = p + w x q + dt + sigma q; minimizes
    sum_i (n_i . (p'_i - c_i))^2 (least-norm solution where the surface lets points slide).

    Args:
        points: [n_pts, 3]; closest: [n_pts, 3] their closest surface points; normals: [n_pts, 3].
    Returns:
        scale s, rotation R [3, 3], translation t [3].
    """
    m = points.mean(0)
    q = points - m  # [n_pts, 3]
    A = np.concatenate([np.cross(q, normals), normals, (normals * q).sum(1, keepdims=True)], 1)  # [n_pts, 7]
    b = -(normals * (points - closest)).sum(1)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    R = Rotation.from_rotvec(x[:3]).as_matrix()
    return 1 + x[6], R, m + x[3:6] - (1 + x[6]) * R @ m


def _barycentric(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points [n, 3] in triangles [n, 3, 3], clipped into the triangle."""
    bary = igl.barycentric_coordinates(points, tri[:, 0].copy(), tri[:, 1].copy(), tri[:, 2].copy())
    bary = np.clip(np.nan_to_num(bary, nan=1.0 / 3.0), 0.0, None)
    return bary / bary.sum(1, keepdims=True)


def derive_landmark_embedding(model: FlameModel, target_points: np.ndarray,
                              landmark_ids: np.ndarray) -> LandmarkEmbedding:
    """Embed landmarks by a similarity alignment of FLAME's template to 3-D landmark positions.

    Template -> camera axes (180 deg about x); the targets are moved onto it by a similarity, first
    from centroids and RMS radii, then by trimmed point-to-plane ICP (Gauss-Newton steps: plain
    point-to-point ICP with Umeyama crawls along smooth surfaces and stops in wrong places); each
    target's closest template point gives triangle + barycentric coordinates.

    A rigid template cannot follow a differently shaped face: landmarks then slide by a few mm.

    Args:
        model: the FLAME model.
        target_points: [n_lmk, 3] landmark positions, mm, camera frame.
        landmark_ids: [n_lmk] MediaPipe indices of those landmarks.
    Returns:
        The embedding.
    """
    target_points = np.asarray(target_points, dtype=np.float64)
    landmark_ids = np.asarray(landmark_ids, dtype=np.int64).ravel()
    if (target_points.ndim != 2 or target_points.shape[1] != 3 or len(landmark_ids) != len(target_points)
            or len(target_points) < MIN_EMBED_POINTS):
        raise FlameError(f"derive_landmark_embedding: target_points {target_points.shape} and landmark_ids "
                         f"{landmark_ids.shape} must be [n_lmk, 3] and [n_lmk], n_lmk >= {MIN_EMBED_POINTS}")
    verts = model.v_template @ FLAME_TO_CAMERA.T  # [n_verts, 3]
    tri = verts[model.faces]  # [n_faces, 3, 3]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    points = _initial_placement(verts, target_points)  # [n_lmk, 3]
    for _ in range(ICP_ITERATIONS):
        dist, face_idx, closest = _closest_on_mesh(points, verts, model.faces)
        keep = dist <= ICP_TRIM * max(np.median(dist), ICP_TOL_MM)
        scale, R, t = _similarity_step(points[keep], closest[keep], normals[face_idx[keep]])
        moved = scale * points @ R.T + t
        step, points = np.abs(moved - points).max(), moved
        if step < ICP_TOL_MM:
            break
    dist, face_idx, closest = _closest_on_mesh(points, verts, model.faces)
    spread = lambda p: ((p - p.mean(0)) ** 2).sum()  # noqa: E731
    log.info("derived FLAME landmark embedding: template scale %.3f, mean distance %.2f mm",
             np.sqrt(spread(target_points) / spread(points)), dist.mean())
    bary = _barycentric(closest, tri[face_idx])
    return LandmarkEmbedding(face_idx=face_idx.astype(np.int64), bary=bary, landmark_ids=landmark_ids)


# --------------------------------------------------------------------------------------------
# fitting


def _check_inputs(model: FlameModel, landmarks_px: np.ndarray, emb: LandmarkEmbedding) -> None:
    if landmarks_px.ndim != 2 or landmarks_px.shape[1] not in (2, 3):
        raise FlameError(f"fit_flame: landmarks_px must be [n_lmk, 2|3], got {landmarks_px.shape}")
    if len(emb.face_idx) == 0 or emb.landmark_ids.max() >= len(landmarks_px) or emb.landmark_ids.min() < 0:
        raise FlameError(f"fit_flame: embedding landmark ids outside 0..{len(landmarks_px) - 1}")
    if not np.all(np.isfinite(landmarks_px[emb.landmark_ids, :2])):
        raise FlameError("fit_flame: non-finite pixel coordinates among the embedded landmarks")
    if emb.face_idx.max() >= len(model.faces) or emb.face_idx.min() < 0:
        raise FlameError(f"fit_flame: embedding triangles outside 0..{len(model.faces) - 1}; "
                         "does the embedding belong to this FLAME model?")


def _initial_translation(lmk_model: np.ndarray, target_px: np.ndarray, camera: Camera) -> np.ndarray:
    """Translation putting the model's landmarks [n_lmk, 3] (camera axes) on the detected ones.

    depth = fx * size_mm / size_px (RMS radii in x-y), centred on the ray of the landmark centroid.
    """
    size_mm = np.sqrt(((lmk_model[:, :2] - lmk_model[:, :2].mean(0)) ** 2).sum(1).mean())
    size_px = np.sqrt(((target_px - target_px.mean(0)) ** 2).sum(1).mean())
    depth = camera.fx * size_mm / max(size_px, 1e-6)
    centre = unproject(camera, target_px.mean(0)[None], np.array([depth]))[0]
    return centre - lmk_model.mean(0)


class _Problem(NamedTuple):
    """What the optimizer needs: the landmark vertices of the model and the detections."""

    sub: FlameTensors      # the model restricted to the vertices of the landmark triangles
    tri: torch.Tensor      # [n_lmk, 3] landmark triangles, indices into ``sub``
    bary: torch.Tensor     # [n_lmk, 3]
    target: torch.Tensor   # [n_lmk, 2] detected landmarks, px
    t0: torch.Tensor       # [3] initial translation, mm
    camera: Camera
    cfg: FlameFitConfig


def _camera_vertices(ft: FlameTensors, p: dict[str, torch.Tensor], t0: torch.Tensor) -> torch.Tensor:
    """Fitted vertices in the camera frame, [n_verts, 3] mm."""
    pose = torch.zeros(len(ft.parents) * 3, dtype=t0.dtype, device=t0.device)
    pose = pose.index_put((torch.arange(3, device=t0.device) + 3 * JAW_JOINT,), p["jaw"])
    v = flame_vertices(ft, p["shape"], p["expression"], pose)
    flip = torch.as_tensor(FLAME_TO_CAMERA, dtype=t0.dtype, device=t0.device)
    R = axis_angle_to_matrix(p["rotation"]) @ flip
    return v @ R.T + t0 + TRANSLATION_UNIT_MM * p["translation"]


def _project(pts: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Pinhole projection [n_pts, 3] -> [n_pts, 2], see :func:`fastsider.camera.project`."""
    return torch.stack([camera.fx * pts[:, 0] / pts[:, 2] + camera.cx,
                        camera.fy * pts[:, 1] / pts[:, 2] + camera.cy], dim=1)


def _loss(p: dict[str, torch.Tensor], prob: _Problem) -> torch.Tensor:
    """mean |proj - target|^2 (px^2) + priors on shape, expression and jaw pose."""
    v = _camera_vertices(prob.sub, p, prob.t0)
    lmk = (v[prob.tri] * prob.bary[:, :, None]).sum(1)  # [n_lmk, 3]
    data = ((_project(lmk, prob.camera) - prob.target) ** 2).sum(1).mean()
    cfg = prob.cfg
    return (data + cfg.shape_prior * (p["shape"] ** 2).sum()
            + cfg.expression_prior * (p["expression"] ** 2).sum() + cfg.pose_prior * (p["jaw"] ** 2).sum())


def _cosine(i: int, n: int) -> float:
    """Learning-rate factor: cosine from 1 at i = 0 to LR_FINAL_FRACTION at i = n."""
    return LR_FINAL_FRACTION + (1 - LR_FINAL_FRACTION) * 0.5 * (1 + math.cos(math.pi * i / n))


def _adam(p: dict[str, torch.Tensor], prob: _Problem) -> None:
    """Adam on ``p`` in place: a rigid phase, then all parameters; cosine learning-rate decay."""
    n_rigid = int(RIGID_FRACTION * prob.cfg.iterations)
    phases = [(n_rigid, ["rotation", "translation"]), (prob.cfg.iterations - n_rigid, list(p))]
    for n_iter, names in phases:
        if n_iter <= 0:
            continue
        opt = torch.optim.Adam([p[k] for k in names], lr=prob.cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i, n=n_iter: _cosine(i, n))
        for _ in range(n_iter):
            opt.zero_grad()
            _loss(p, prob).backward()
            opt.step()
            sched.step()


def _polish(p: dict[str, torch.Tensor], prob: _Problem) -> None:
    """L-BFGS on all parameters after Adam, kept only if it lowers the loss.

    Depth is observed only through perspective; quasi-Newton steps go down that long, flat valley
    that Adam crawls along.
    """
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(p, prob)
        loss.backward()
        return loss

    opt = torch.optim.LBFGS(list(p.values()), lr=1.0, max_iter=LBFGS_ITERATIONS, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")
    before = {k: v.detach().clone() for k, v in p.items()}
    loss_before = float(closure().detach())
    opt.step(closure)
    loss_after = float(closure().detach())
    if not loss_after <= loss_before:  # also catches NaN
        with torch.no_grad():
            for k, v in p.items():
                v.copy_(before[k])
    log.debug("FLAME fit L-BFGS polish: loss %.4g -> %.4g", loss_before, loss_after)


def _problem(model: FlameModel, ft: FlameTensors, emb: LandmarkEmbedding, target_px: np.ndarray,
             camera: Camera, cfg: FlameFitConfig) -> _Problem:
    """Landmark-vertex subset, local triangles and the initial translation."""
    tri_full = model.faces[emb.face_idx]  # [n_lmk, 3]
    used = np.unique(tri_full)  # [n_sub]
    template = model.v_template @ FLAME_TO_CAMERA.T  # [n_verts, 3] camera axes
    t0 = _initial_translation(embed_points(template, model.faces, emb.face_idx, emb.bary), target_px, camera)
    as_t = lambda a: torch.as_tensor(a, dtype=ft.v_template.dtype, device=ft.v_template.device)  # noqa: E731
    return _Problem(
        sub=flame_subset(ft, torch.as_tensor(used, device=ft.faces.device)),
        tri=torch.as_tensor(np.searchsorted(used, tri_full), device=ft.faces.device),
        bary=as_t(emb.bary), target=as_t(target_px), t0=as_t(t0), camera=camera, cfg=cfg,
    )


def _orient_faces(verts: np.ndarray, faces: np.ndarray, face_idx: np.ndarray) -> np.ndarray:
    """Flip the winding if the landmark triangles' normals point away from the camera (origin)."""
    tri = verts[faces[face_idx]]  # [n_lmk, 3, 3]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    towards_camera = -(normals * tri.mean(1)).sum(1)
    return faces if towards_camera.sum() >= 0 else faces[:, ::-1].copy()


def fit_flame(model: FlameModel, landmarks_px: np.ndarray, camera: Camera, cfg: FlameFitConfig,
              embedding: LandmarkEmbedding | None = None, init_points: np.ndarray | None = None,
              seed: int = 0, device: str | torch.device = "cpu") -> FlameFit:
    """Fit FLAME shape, expression, jaw, rotation and translation to detected landmarks.

    Minimizes mean |project(embedded landmark) - detection|^2 [px^2] + shape_prior |beta|^2 +
    expression_prior |psi|^2 + pose_prior |jaw|^2: Adam (``cfg.iterations``, the first
    RIGID_FRACTION on rotation and translation only) then an L-BFGS polish, from zero coefficients
    and a translation that puts the template at the depth matching the landmark spread. Only the
    vertices of the landmark triangles are posed while optimizing (joints come from all of them).

    Args:
        landmarks_px: [478, 2|3] detected landmarks in pixels of the working crop (z ignored).
        camera: camera of the working crop (fixed).
        embedding: FLAME surface point of each used landmark; derived when None.
        init_points: [478, 3] mm, camera frame: the default coarse model's 3-D landmarks,
            required when ``embedding`` is None; rows with NaN are left out of the embedding.
        seed: torch seed (the fit itself starts from fixed values and is deterministic).
    Returns:
        :class:`FlameFit` (coarse face with source "flame", parameters, mean error in px).
    """
    landmarks_px = np.asarray(landmarks_px, dtype=np.float64)
    if embedding is None:
        if init_points is None:
            raise FlameError("fit_flame: without a landmark embedding, init_points are required")
        init_points = np.asarray(init_points, dtype=np.float64)
        ids = np.flatnonzero(np.isfinite(init_points).all(axis=1)) if init_points.ndim == 2 else np.arange(0)
        embedding = derive_landmark_embedding(model, init_points[ids], ids)
    _check_inputs(model, landmarks_px, embedding)
    torch.manual_seed(seed)
    dtype = torch.float64  # a few hundred landmarks: cheap, and L-BFGS line searches need it
    ft = flame_tensors(model, device, dtype)
    target_px = landmarks_px[embedding.landmark_ids, :2]  # [n_lmk, 2]
    prob = _problem(model, ft, embedding, target_px, camera, cfg)
    sizes = {"shape": min(cfg.n_shape, model.n_shape), "expression": min(cfg.n_expression, model.n_expr),
             "rotation": 3, "jaw": 3, "translation": 3}
    p = {k: torch.zeros(n, dtype=dtype, device=device, requires_grad=True) for k, n in sizes.items()}
    _adam(p, prob)
    _polish(p, prob)
    with torch.no_grad():
        verts = _camera_vertices(ft, p, prob.t0).cpu().numpy()  # [n_verts, 3]
    lmk = embed_points(verts, model.faces, embedding.face_idx, embedding.bary)  # [n_lmk, 3]
    err = float(np.linalg.norm(project(camera, lmk) - target_px, axis=1).mean())
    params = {k: v.detach().cpu().numpy() for k, v in p.items()}
    params["translation"] = prob.t0.cpu().numpy() + TRANSLATION_UNIT_MM * params["translation"]
    log.info("FLAME fit: %d landmarks, mean reprojection error %.2f px", len(target_px), err)
    coarse = CoarseFace(
        vertices=verts, faces=_orient_faces(verts, model.faces, embedding.face_idx), camera=camera,
        landmarks_3d=lmk, landmark_ids=embedding.landmark_ids.copy(),
        source="flame",
    )
    return FlameFit(coarse=coarse, params=params, reprojection_px=err)

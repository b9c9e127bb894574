"""The embedded default coarse model: a smooth face surface built from MediaPipe landmarks.

No download and no licence: the triangulation is MediaPipe's face-mesh tessellation (its edge
graph ships in the wheel; triangles are its 3-cycles), eye and mouth holes are closed with fans,
then the mesh is loop-subdivided and Taubin-smoothed.

Metric scale: MediaPipe gives x, y in pixels and a relative z in the same units. Put the face at
the depth where one pixel spans ``s`` mm, with ``s = IPD_mm / IPD_px`` (mean adult
inter-pupillary distance, Dodgson 2004), i.e. ``Z0 = f * s``; each landmark is back-projected
through its pixel at depth ``Z0 + z_px * s``. The landmark vertices therefore reproject onto the
detected landmarks exactly before smoothing.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict

import numpy as np
import trimesh

from fastsider.camera import Camera, project, unproject
from fastsider.config import DefaultModelConfig
from fastsider.errors import InputError
from fastsider.face.landmarks import LEFT_IRIS_CENTRE, N_MESH_LANDMARKS, RIGHT_IRIS_CENTRE
from fastsider.face.types import CoarseFace

log = logging.getLogger(__name__)

MIN_IPD_PX = 4.0  # below this the scale estimate is meaningless


@functools.lru_cache(maxsize=1)
def face_mesh_triangles() -> np.ndarray:
    """Triangles ``[n_faces, 3]`` of MediaPipe's 468-vertex face mesh, eye/mouth holes closed."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    tris = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    tris = _drop_nonmanifold(np.array(sorted(tris)))
    return _fill_inner_holes(tris)


def _edge_face_counts(tris: np.ndarray) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for t in tris:
        for i in range(3):
            counts[tuple(sorted((t[i], t[(i + 1) % 3])))] += 1
    return counts


def _drop_nonmanifold(tris: np.ndarray) -> np.ndarray:
    """Drop 3-cycles that are not faces: their edges are each shared by three triangles."""
    counts = _edge_face_counts(tris)
    n_crowded = np.array([sum(counts[tuple(sorted((t[i], t[(i + 1) % 3])))] >= 3 for i in range(3)) for t in tris])
    return tris[n_crowded < 2]


def _fill_inner_holes(tris: np.ndarray) -> np.ndarray:
    """Close every boundary loop but the longest (the face outline) with a fan to one loop vertex."""
    counts = _edge_face_counts(tris)
    boundary = [e for e, c in counts.items() if c == 1]
    nxt: dict[int, list[int]] = defaultdict(list)
    for a, b in boundary:
        nxt[a].append(b)
        nxt[b].append(a)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            step = [v for v in nxt[cur] if v != prev and (v not in seen or v == start)]
            if not step or step[0] == start:
                break
            prev, cur = cur, step[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    loops.sort(key=len)
    fans = [(loop[0], loop[i], loop[i + 1]) for loop in loops[:-1] for i in range(1, len(loop) - 1)]
    return np.concatenate([tris, np.array(fans, dtype=tris.dtype).reshape(-1, 3)])


def metric_scale(landmarks_px: np.ndarray, ipd_mm: float) -> float:
    """mm per pixel at the face, from the distance between the two iris centres."""
    ipd_px = float(np.linalg.norm(landmarks_px[RIGHT_IRIS_CENTRE] - landmarks_px[LEFT_IRIS_CENTRE]))
    if ipd_px < MIN_IPD_PX:
        raise InputError(f"eyes too close together in the image ({ipd_px:.1f} px) to set the face scale")
    return ipd_mm / ipd_px


def orient_towards_camera(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Consistent winding with normals pointing at the camera (origin)."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    trimesh.repair.fix_winding(mesh)
    facing = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center)
    faces = np.asarray(mesh.faces)
    return faces[:, ::-1].copy() if np.sum(mesh.area_faces * facing) > 0 else faces


def build_default_coarse(landmarks_px: np.ndarray, camera: Camera, cfg: DefaultModelConfig) -> CoarseFace:
    """Coarse face mesh from landmarks in the working crop.

    Args:
        landmarks_px: [478, 3] landmarks in working-crop pixels (see ``face.landmarks``).
        camera: the working-crop camera (world = camera frame).
    """
    if landmarks_px.shape != (478, 3):
        raise ValueError(f"expected [478, 3] landmarks, got {landmarks_px.shape}")
    s = metric_scale(landmarks_px, cfg.ipd_mm)
    z0 = camera.fx * s
    depth = z0 + landmarks_px[:, 2] * s
    points = unproject(camera, landmarks_px[:, :2], depth)  # [478, 3]
    faces = orient_towards_camera(points[:N_MESH_LANDMARKS], face_mesh_triangles())
    mesh = trimesh.Trimesh(points[:N_MESH_LANDMARKS], faces, process=False)
    if cfg.subdivisions > 0:
        v, f = trimesh.remesh.subdivide_loop(mesh.vertices, mesh.faces, iterations=cfg.subdivisions)
        mesh = trimesh.Trimesh(v, f, process=False)
    if cfg.smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, iterations=cfg.smooth_iterations)
    vertices = np.asarray(mesh.vertices)
    # loop subdivision keeps the original vertices first, so ids 0..467 are still the landmarks
    ids = np.arange(N_MESH_LANDMARKS)
    err = np.linalg.norm(project(camera, vertices[ids]) - landmarks_px[ids, :2], axis=1)
    log.info("default coarse model: %d vertices, %.1f mm/px at %.0f mm, landmark reprojection %.2f px",
             len(vertices), s, z0, err.mean())
    return CoarseFace(vertices=vertices, faces=np.asarray(mesh.faces), camera=camera,
                      landmarks_3d=vertices[ids].copy(), landmark_ids=ids, source="default")

"""Midpoint subdivision that keeps the coarse mesh's vertices first and says where every new one came from.

One level splits each triangle (a, b, c) into four at its edge midpoints:
(a, m_ab, m_ca), (m_ab, b, m_bc), (m_ca, m_bc, c), (m_ab, m_bc, m_ca). The vertices of the level
before keep their indices and positions; the new ones follow, one per edge, in the order of the
sorted unique edges (``parents``). trimesh.remesh.subdivide makes the same mesh but does not return
the parents, which a user needs to carry the details onto a rig's own vertices.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Subdivision(NamedTuple):
    vertices: np.ndarray  # [n_verts, 3]: the input's vertices first, then the midpoints of each level
    faces: np.ndarray     # [n_faces, 3] int64, 4^levels faces per input face, in input-face blocks
    parents: np.ndarray   # [n_verts - n_input, 2] int64: vertex n_input + i is the midpoint of these two
    levels: int


def subdivide_faces(faces: np.ndarray, n_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """One midpoint level of a triangle list: (new faces [4 n_faces, 3], parents [n_edges, 2]);
    midpoint i gets the index n_verts + i. Works on any index space (positions or UV vertices)."""
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [n_faces, 3], got {faces.shape}")
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    parents, inverse = np.unique(edges, axis=0, return_inverse=True)
    mid = inverse.reshape(-1, 3) + n_verts  # midpoints of (a, b), (b, c), (c, a)
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    m_ab, m_bc, m_ca = mid[:, 0], mid[:, 1], mid[:, 2]
    new = np.stack([a, m_ab, m_ca, m_ab, b, m_bc, m_ca, m_bc, c, m_ab, m_bc, m_ca], axis=1).reshape(-1, 3)
    return new.astype(np.int64), parents.astype(np.int64)


def midpoint_subdivide(vertices: np.ndarray, faces: np.ndarray, levels: int) -> Subdivision:
    """``levels`` midpoint subdivisions of a mesh (vertices [n_verts, 3], faces [n_faces, 3]).

    Example: one triangle, one level -> 6 vertices (3 corners + 3 midpoints), 4 faces.
    """
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    all_parents = [np.zeros((0, 2), dtype=np.int64)]
    for _ in range(levels):
        f, parents = subdivide_faces(f, len(v))
        v = np.concatenate([v, v[parents].mean(axis=1)])
        all_parents.append(parents)
    return Subdivision(v, f, np.concatenate(all_parents), levels)


def median_edge_mm(vertices: np.ndarray, faces: np.ndarray) -> float:
    """The median length of the faces' edges (each interior edge counted twice, as the median hardly cares)."""
    if len(faces) == 0:
        return 0.0
    return float(np.median(np.linalg.norm(vertices[faces] - vertices[np.roll(faces, 1, axis=1)], axis=2)))


def levels_for_edge(median_edge_mm: float, target_edge_mm: float, n_faces: int, max_faces: int,
                    max_levels: int = 4) -> int:
    """Levels whose edges come nearest ``target_edge_mm`` (each halves them) with at most ``max_faces``
    faces (each quadruples them): round(log2(median / target)), clipped."""
    if median_edge_mm <= 0 or target_edge_mm <= 0:
        return 0
    levels = int(np.clip(np.round(np.log2(median_edge_mm / target_edge_mm)), 0, max_levels))
    while levels > 0 and n_faces * 4**levels > max_faces:
        levels -= 1
    return levels


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [n_verts, 3]: n_v = normalize(sum over v's faces of
    (b - a) x (c - a)). The rule the displacement map is defined with (README): a user rebuilding the
    mesh computes the same normals. A vertex in no face gets (0, 0, 0)."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(n, faces[:, k], cross)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)

"""A UV atlas for the coarse mesh, carried through its subdivision.

UVs follow OBJ's convention: (0, 0) is the image's bottom-left corner, v up (glTF's flip is the
exporter's business). A texel (row, col) of an S x S map has its centre at
u = (col + 0.5) / S, v = 1 - (row + 0.5) / S.

- ``disk``: a face mesh with one boundary and no handles (the default model: eyes and mouth are
  closed) is one chart: libigl's harmonic map with the outline on a circle (where cotangent weights
  fold a triangle, uniform Tutte weights, which cannot), turned so the face is upright as in the
  photo; 0.3 s for 29k vertices. A harmonic map shrinks a protrusion (the nose gets 1/7 of the mean
  texel density on the example); passes of SLIM even that out (one: ~1/2, ~2 s).
- ``xatlas``: any other mesh (several boundaries or pieces, a FLAME head); charts and packing by xatlas.
  Slow: minutes for a 58k-face mesh on a 2-core CPU, seconds for FLAME's 10k faces.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components

from fastsider.export.subdivision import Subdivision, subdivide_faces

log = logging.getLogger(__name__)


class UVAtlas(NamedTuple):
    uv: np.ndarray            # [n_uv, 2] in [0, 1], OBJ convention
    faces_uv: np.ndarray      # [n_faces, 3] int64 into uv, face by face as the mesh's faces
    vertex_of_uv: np.ndarray  # [n_uv] int64: the mesh vertex each UV vertex belongs to (seams split vertices)


def is_disk(faces: np.ndarray, n_verts: int) -> bool:
    """One connected piece, every vertex used, one boundary loop and Euler characteristic 1 (a disk)."""
    if len(np.unique(faces)) != n_verts:
        return False
    all_edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    edges, uses = np.unique(all_edges, axis=0, return_counts=True)
    if n_verts - len(edges) + len(faces) != 1 or (uses > 2).any():
        return False
    rim = edges[uses == 1]
    pieces = _components(edges, n_verts)
    rim_vertices = np.unique(rim)
    loops = _components(np.searchsorted(rim_vertices, rim), len(rim_vertices)) if len(rim) else 0
    return pieces == 1 and loops == 1


def _components(edges: np.ndarray, n: int) -> int:
    graph = sp.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def disk_atlas(vertices: np.ndarray, faces: np.ndarray, pixels_uv: np.ndarray, padding: float,
               slim_iterations: int = 0) -> UVAtlas:
    """One chart for a disk-like mesh: a harmonic map to the unit circle, its area evened out by
    ``slim_iterations`` of SLIM, turned (and mirrored if need be) to match the vertices' image positions
    ``pixels_uv`` [n_verts, 2] (x right, y down), scaled into [padding, 1 - padding]^2."""
    import igl

    vertices, faces = np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int64)
    boundary = igl.boundary_loop(faces)
    circle = igl.map_vertices_to_circle(vertices, boundary)
    uv = igl.harmonic(vertices, faces, boundary, circle, 1)
    if folded(uv, faces).any():
        log.info("UV atlas: the cotangent harmonic map folds %d triangles; using uniform weights",
                 int(folded(uv, faces).sum()))
        uv = _tutte(faces, len(vertices), boundary, circle)
    if slim_iterations > 0:
        uv = _even_out(vertices, faces, uv, slim_iterations)
    target = pixels_uv * np.array([1.0, -1.0])  # image y down -> v up
    uv = _align(uv, target)
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    scale = (1.0 - 2.0 * padding) / float((hi - lo).max())
    uv = (uv - (lo + hi) / 2.0) * scale + 0.5
    return UVAtlas(uv, np.asarray(faces, dtype=np.int64), np.arange(len(vertices), dtype=np.int64))


def xatlas_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding_px: int) -> UVAtlas:
    """xatlas's charts packed into one size x size atlas (v flipped to OBJ's convention)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = size, padding_px, True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uv = atlas[0]
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the mesh into {atlas.atlas_count} atlases, expected one")
    uv = np.asarray(uv, dtype=np.float64)
    return UVAtlas(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1), np.asarray(indices, dtype=np.int64),
                   np.asarray(vmapping, dtype=np.int64))


def _even_out(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, iterations: int) -> np.ndarray:
    """SLIM (libigl; symmetric Dirichlet energy, free boundary) from a fold-free map: it stays fold-free
    and stretches what the harmonic map shrank. Kept only if it did not fold."""
    import igl

    data = igl.slim_precompute(np.asfortranarray(vertices), np.asfortranarray(faces, dtype=np.int32),
                               np.asfortranarray(uv), igl.SYMMETRIC_DIRICHLET, np.zeros(0, dtype=np.int32),
                               np.zeros((0, 2), order="F"), 0.0)
    even = np.asarray(igl.slim_solve(data, iterations), dtype=np.float64)
    flips = folded(even, faces)
    if flips.any() and not flips.all():  # a mirror image is fine (fixed below), a fold is not
        log.info("UV atlas: SLIM folded %d triangles; keeping the harmonic map", int(flips.sum()))
        return uv
    return even if not flips.all() else even * np.array([1.0, -1.0])


def folded(uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[n_faces] bool: UV triangles of zero or negative area (clockwise in (u, v))."""
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]) <= 0.0


def _tutte(faces: np.ndarray, n: int, boundary: np.ndarray, circle: np.ndarray) -> np.ndarray:
    """Tutte's embedding: every inner vertex at the mean of its neighbours, the boundary on the circle."""
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    adj = sp.csr_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n))
    adj.data[:] = 1.0
    lap = (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()
    inner = np.setdiff1d(np.arange(n), boundary)
    uv = np.zeros((n, 2))
    uv[boundary] = circle
    rhs = -lap[inner][:, boundary] @ circle
    solve = spla.factorized(lap[inner][:, inner].tocsc())
    uv[inner] = np.stack([solve(rhs[:, 0]), solve(rhs[:, 1])], axis=1)
    return uv


def _align(uv: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``uv`` turned (and mirrored where that fits better) onto ``target`` by the least-squares rotation
    (Kabsch in 2-D, centred); the chart's own orientation (counter-clockwise faces) is kept in u, v."""
    a, b = uv - uv.mean(axis=0), target - target.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    r = u @ vt
    out = a @ r
    if np.linalg.det(r) < 0:  # a reflection fits best: mirror the photo-aligned chart back
        out[:, 0] = -out[:, 0]
    return out


def subdivide_with_atlas(vertices: np.ndarray, faces: np.ndarray, atlas: UVAtlas,
                         levels: int) -> tuple[Subdivision, UVAtlas]:
    """:func:`midpoint_subdivide` of the mesh and of its atlas together: each UV face split as its mesh
    face (same face order), new UVs at UV-edge midpoints, each mapped to the mesh midpoint of the
    same edge (a seam edge has two UV midpoints, one mesh midpoint)."""
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    uv, faces_uv, vertex_of_uv = atlas
    all_parents = [np.zeros((0, 2), dtype=np.int64)]
    for _ in range(levels):
        f, parents = subdivide_faces(f, len(v))
        faces_uv, uv_parents = subdivide_faces(faces_uv, len(uv))
        midpoint_of = _edge_lookup(parents, len(v))
        vertex_of_uv = np.concatenate([vertex_of_uv, midpoint_of(np.sort(vertex_of_uv[uv_parents], axis=1))])
        v = np.concatenate([v, v[parents].mean(axis=1)])
        uv = np.concatenate([uv, uv[uv_parents].mean(axis=1)])
        all_parents.append(parents)
    return Subdivision(v, f, np.concatenate(all_parents), levels), UVAtlas(uv, faces_uv, vertex_of_uv)


def _edge_lookup(parents: np.ndarray, first_index: int):
    """Mesh edges (sorted pairs [m, 2]) -> the index of their midpoint vertex, given one level's
    ``parents`` [n_edges, 2] (sorted and unique, as np.unique gives them) numbered from ``first_index``."""
    n = int(parents.max()) + 1 if len(parents) else 1
    keys = parents[:, 0] * n + parents[:, 1]  # ascending: np.unique sorts the rows

    def lookup(pairs: np.ndarray) -> np.ndarray:
        k = pairs[:, 0] * n + pairs[:, 1]
        pos = np.clip(np.searchsorted(keys, k), 0, max(len(keys) - 1, 0))
        if len(k) and not np.array_equal(keys[pos], k):
            raise ValueError("a UV edge has no mesh edge: the atlas does not belong to this mesh")
        return pos + first_index
    return lookup

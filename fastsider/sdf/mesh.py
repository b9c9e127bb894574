"""Marching cubes of the neural SDF, restricted to the band around the coarse face, front sheet only."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import trimesh
from scipy.ndimage import binary_dilation
from skimage.measure import marching_cubes

from fastsider.camera import Camera, Normalization, project
from fastsider.sdf.occupancy import OccupancyGrid
from fastsider.sdf.trace import SdfFn

OUTSIDE = 1.0  # SDF value given to samples outside the occupied band (unit-box units)


class Coarse(NamedTuple):
    """A cheap SDF that agrees in sign with the full one wherever |sdf| > margin (unit-box units)."""

    sdf: SdfFn
    margin: float


SLAB_POINTS = 1 << 20  # lattice points a slab holds (its x-planes at once): a few MB of coordinates


@torch.no_grad()
def sample_sdf_volume(sdf_fn: SdfFn, resolution: int, grid: OccupancyGrid | None, device: torch.device,
                      chunk: int, coarse: Coarse | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SDF on a resolution^3 lattice over [-1, 1]^3 (index order x, y, z), evaluated in the band
    only, OUTSIDE elsewhere; and which samples were evaluated ([R, R, R] bool).

    ``coarse`` (a cheap SDF, margin): band samples where |coarse| > margin take the coarse value,
    only the others the full ``sdf_fn``: the sign is all marching cubes needs away from the surface.
    Slab by slab along x: the whole lattice's coordinates and the band lookup's integer cell
    indices would take R^3 x 36 bytes at once (3.6 GB at R = 448); a slab takes a few MB.
    """
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    plane = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (y, z) of one x
    values = np.full((resolution,) * 3, OUTSIDE, dtype=np.float32)
    evaluated = np.zeros((resolution,) * 3, dtype=bool)
    step = max(1, SLAB_POINTS // plane.shape[0])
    for x0 in range(0, resolution, step):
        xs = axis[x0 : x0 + step]
        pts = torch.cat([xs.repeat_interleave(plane.shape[0])[:, None], plane.repeat(len(xs), 1)], dim=1)
        keep = torch.ones(pts.shape[0], dtype=torch.bool, device=device) if grid is None else grid.contains(pts)
        slab = torch.full((pts.shape[0],), OUTSIDE, device=device)
        idx = keep.nonzero().squeeze(1)
        for i in range(0, idx.numel(), chunk):
            sel = idx[i : i + chunk]
            if coarse is not None:
                coarse_values = coarse.sdf(pts[sel])
                far = coarse_values.abs() > coarse.margin
                slab[sel[far]] = coarse_values[far].float()
                sel = sel[~far]
            if sel.numel():
                slab[sel] = sdf_fn(pts[sel]).float()
        shape = (len(xs), resolution, resolution)
        values[x0 : x0 + len(xs)] = slab.reshape(shape).cpu().numpy()
        evaluated[x0 : x0 + len(xs)] = keep.reshape(shape).cpu().numpy()
    return values, evaluated


def evaluated_bounds(evaluated: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box of lattice indices holding every evaluated sample (at least 2 per axis; the
    whole lattice when none is)."""
    if not evaluated.any():
        return tuple(slice(0, n) for n in evaluated.shape)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(evaluated.any(axis=tuple(a for a in range(3) if a != axis)))
        lo = min(hit[0], evaluated.shape[axis] - 2)
        box.append(slice(lo, max(hit[-1] + 1, lo + 2)))
    return tuple(box)


def cubes_inside(evaluated: np.ndarray) -> np.ndarray:
    """[R-1]^3 bool: marching-cubes cells whose 8 corners were all evaluated. A zero crossing
    against the OUTSIDE fill is the band's edge, not a surface: behind the face the SDF is still
    negative there, and the band's blocky sides become walls along the view."""
    inside = np.ones(tuple(n - 1 for n in evaluated.shape), dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                inside &= evaluated[dx : dx + inside.shape[0], dy : dy + inside.shape[1], dz : dz + inside.shape[2]]
    return inside


def front_sheet(vertices_mm: np.ndarray, faces: np.ndarray, camera: Camera, face_mask: np.ndarray,
                mask_dilation_px: int = 2) -> np.ndarray:
    """Faces [n_faces, 3] of the camera-facing sheet whose centroids project into the face mask."""
    mesh = trimesh.Trimesh(vertices_mm, faces, process=False)
    centres = mesh.triangles_center
    facing = np.einsum("ij,ij->i", mesh.face_normals, centres) < 0.0  # outward normal towards the camera
    uv = np.round(project(camera, centres)).astype(int)
    mask = binary_dilation(face_mask, iterations=mask_dilation_px)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    in_mask = np.zeros(len(faces), dtype=bool)
    in_mask[inside] = mask[uv[inside, 1], uv[inside, 0]]
    return faces[facing & in_mask]


def extract_face_mesh(sdf_fn: SdfFn, norm: Normalization, grid: OccupancyGrid | None, resolution: int,
                      camera: Camera, face_mask: np.ndarray, device: torch.device, chunk: int,
                      coarse: Coarse | None = None):
    """Detailed face surface in mm, camera frame: (vertices [n_verts, 3], faces [n_faces, 3]).
    ``coarse``: see :func:`sample_sdf_volume`."""
    vol, evaluated = sample_sdf_volume(sdf_fn, resolution, grid, device, chunk, coarse)
    box = evaluated_bounds(evaluated)  # only it holds kept cubes: for a face, a fifth of the lattice
    vol, evaluated = vol[box], evaluated[box]
    if not (vol.min() < 0.0 < vol.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    spacing = 2.0 / (resolution - 1)
    # skimage's 'descent' (object = low values, like an SDF's inside) winds faces with outward
    # normals; 'ascent' would wind them inward and front_sheet would keep the back of the shell
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(spacing,) * 3, gradient_direction="descent")
    # each triangle lies in one cell: the one holding its centroid (lattice index units)
    cell = np.clip(np.floor(verts[faces].mean(axis=1) / spacing).astype(int), 0, np.array(vol.shape) - 2)
    faces = faces[cubes_inside(evaluated)[cell[:, 0], cell[:, 1], cell[:, 2]]]
    verts = verts + spacing * np.array([b.start for b in box])
    verts_mm = norm.to_mm(verts - 1.0)
    faces = front_sheet(verts_mm, faces, camera, face_mask)
    mesh = trimesh.Trimesh(verts_mm, faces, process=False)
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def drop_small_pieces(vertices: np.ndarray, faces: np.ndarray, min_fraction: float):
    """The mesh without its pieces (faces connected through shared edges, as trimesh.split counts them)
    of fewer faces than ``min_fraction`` of the largest one's: marching cubes leaves floating islands
    where the SDF barely crosses zero (the rim of the band, the mouth slit), some touching the sheet at
    a vertex. Returns (vertices [n', 3], faces [m', 3], pieces before, pieces dropped); ``min_fraction``
    0 keeps everything."""
    if len(faces) == 0:
        return vertices, faces, 0, 0
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    label = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    piece_faces = np.bincount(label)
    keep_piece = piece_faces >= min_fraction * piece_faces.max()
    mesh.update_faces(keep_piece[label])
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), len(piece_faces), int((~keep_piece).sum())

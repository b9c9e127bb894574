"""Checks of a user's coarse face mesh (``--coarse``) before any work is done with it.

A face is 40-600 mm across in fastsider's units (a tight face mask to a whole FLAME head with its
neck). DECA, MICA and FLAME export metres: such a mesh is refused with a hint at
``--coarse-units m`` instead of being fitted as a 0.2 mm face. The surface must be a clean sheet:
no triangle repeated (a flipped duplicate included), none with a repeated corner, no edge shared by
more than two triangles (a fin): each of those shows as shards in the detailed mesh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from fastsider.errors import InputError

COARSE_UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}  # --coarse-units: mm per unit of the mesh file
UNIT_NAMES = {"mm": "millimetres", "cm": "centimetres", "m": "metres (as DECA, MICA and FLAME export)"}
FACE_EXTENT_MM = (40.0, 600.0)  # the longest side of a face mesh's bounding box, mm


def check_face_extent(vertices_mm: np.ndarray, path: Path, units: str) -> None:
    """Refuse a mesh whose size (vertices [n_verts, 3], mm) is no face's, naming the units it looks like."""
    extent = float(np.ptp(vertices_mm, axis=0).max())
    lo, hi = FACE_EXTENT_MM
    if lo <= extent <= hi:
        return
    raw = extent / COARSE_UNITS[units]  # in the file's own units
    fits = [u for u, mm in COARSE_UNITS.items() if u != units and lo <= raw * mm <= hi]
    hint = f"; it looks like {UNIT_NAMES[fits[0]]}: pass --coarse-units {fits[0]}" if fits else (
        "; a stray vertex far away?" if extent > hi else "")
    size = f"{raw:.4g} mm" if units == "mm" else f"{raw:.4g} {units} ({extent:.4g} mm)"
    raise InputError(f"mesh {path} is {size} across; a face is {lo:g}-{hi:g} mm{hint}")


def check_surface(mesh: trimesh.Trimesh, path: Path) -> None:
    """Refuse repeated or degenerate triangles and edges of more than two triangles."""
    faces = np.asarray(mesh.faces)
    problems = []
    repeated = len(faces) - len(np.unique(np.sort(faces, axis=1), axis=0))
    if repeated:
        problems.append(f"{repeated} repeated triangle(s)")
    degenerate = int(((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])).sum())
    if degenerate:
        problems.append(f"{degenerate} triangle(s) with a repeated corner")
    _, uses = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    if (uses > 2).any():
        problems.append(f"{int((uses > 2).sum())} edge(s) shared by more than two triangles (fins, doubled faces)")
    if problems:
        raise InputError(f"mesh {path} is not a clean surface: {', '.join(problems)}; repair it first "
                         "(e.g. MeshLab's removal of duplicate faces and non-manifold edges)")

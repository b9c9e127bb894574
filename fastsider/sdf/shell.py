"""The coarse-shape target: a thin shell around the open coarse face mesh, and the normalized box.

SDF_GT(x) = distance(x, mesh) - eps / 2          (SIDER: the open mesh becomes a shell of width eps)

Distances come from libigl's AABB tree (exact point-to-triangle distance).
"""

from __future__ import annotations

import igl
import numpy as np
import torch
from torch import Tensor

from fastsider.camera import Normalization


class ShellSDF:
    """SDF_GT of the coarse mesh, queried in the unit box, answered in unit-box units.

    ``target="shell"`` (the paper): dist(x, mesh) - eps/2, a closed sheet of width eps whose outer
    side lies eps/2 in front of the mesh. ``target="signed"``: the signed distance with libigl's
    angle-weighted pseudonormals (positive on the side the faces point to, i.e. towards the camera);
    its zero set is the mesh itself, and near the face it is a smooth half-space-like field that a
    small MLP fits without the thin negative sheet a shell needs (no holes when stage 2 moves it).
    Beyond the open border the sign continues the surface tangentially; rays and meshing stay
    inside the face, so that skirt is never seen.
    """

    def __init__(self, vertices_mm: np.ndarray, faces: np.ndarray, thickness_mm: float, norm: Normalization,
                 target: str = "shell"):
        if target not in ("shell", "signed"):
            raise ValueError(f"unknown SDF target {target!r}")
        self.vertices = np.ascontiguousarray(norm.to_unit(vertices_mm), dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self.target = target
        self.half_thickness = thickness_mm / 2.0 / norm.half_size if target == "shell" else 0.0
        self.surface_offset_mm = self.half_thickness * norm.half_size  # zero set's offset from the mesh

    def sdf(self, x_unit: np.ndarray) -> np.ndarray:
        """SDF_GT [n_pts] at points [n_pts, 3]."""
        if self.target == "shell":
            return self.distance(x_unit) - self.half_thickness
        s, _, _, _ = igl.signed_distance(np.ascontiguousarray(x_unit, dtype=np.float64), self.vertices, self.faces,
                                         sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)
        return s

    def distance(self, x_unit: np.ndarray) -> np.ndarray:
        """Unsigned distance [n_pts] from points [n_pts, 3] to the mesh."""
        sq, _, _ = igl.point_mesh_squared_distance(np.ascontiguousarray(x_unit, dtype=np.float64), self.vertices, self.faces)
        return np.sqrt(sq)

    def __call__(self, x_unit: Tensor) -> Tensor:
        """SDF_GT [n_pts] at points [n_pts, 3] (tensor in, tensor out, no gradient)."""
        return torch.as_tensor(self.sdf(x_unit.detach().cpu().numpy()), dtype=x_unit.dtype, device=x_unit.device)


def to_mid_surface(points_mm: np.ndarray, outward_normals: np.ndarray, half_thickness_mm: float) -> np.ndarray:
    """Move points [n_pts, 3] of the shell's outer sheet back onto the surface it was built around.

    x_mid = x - eps/2 * n. The zero set of SDF_GT is the coarse surface offset by eps/2 along its
    normal; the detail stage perturbs that offset sheet, so undoing the offset puts the result in the
    coarse mesh's place (exact for a smooth surface whose curvature radius exceeds eps/2).
    """
    n = outward_normals / np.linalg.norm(outward_normals, axis=1, keepdims=True).clip(1e-12)
    return points_mm - half_thickness_mm * n

"""FLAME's differentiable forward pass in torch: blend shapes, pose correctives, linear blend skinning.

:func:`flame_tensors` copies a :class:`fastsider.face.flame.FlameModel` (as loaded from the user's
file) to torch tensors, :func:`flame_subset` restricts it to some vertices, :func:`flame_vertices`
poses it, :func:`axis_angle_to_matrix` is the Rodrigues formula it uses, and :func:`embed_points`
puts landmarks on the surface from triangle indices and barycentric coordinates. Everything is in
mm and FLAME's canonical frame; :mod:`fastsider.face.flame_fit` fits it to landmarks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from fastsider.face.flame import FlameModel

SMALL_ANGLE_SQ = 1e-4               # below this squared angle, Rodrigues uses its Taylor series


class FlameTensors(NamedTuple):
    """:class:`FlameModel` as torch tensors on one device, for :func:`flame_vertices`.

    The joint regressor is applied ahead (J = J_reg T + (J_reg S) beta + (J_reg E) psi), so a
    subset of the vertices (:func:`flame_subset`) still poses exactly like the whole mesh.
    """

    v_template: torch.Tensor   # [n_verts, 3]
    shapedirs: torch.Tensor    # [n_verts, 3, n_shape]
    exprdirs: torch.Tensor     # [n_verts, 3, n_expr]
    posedirs: torch.Tensor     # [n_pose_feats, n_verts * 3]
    weights: torch.Tensor      # [n_verts, n_joints]
    joints_template: torch.Tensor   # [n_joints, 3]
    joints_shapedirs: torch.Tensor  # [n_joints, 3, n_shape]
    joints_exprdirs: torch.Tensor   # [n_joints, 3, n_expr]
    parents: tuple[int, ...]   # [n_joints]
    faces: torch.Tensor        # [n_faces, 3] int64 ([0, 3] for a subset)


# --------------------------------------------------------------------------------------------
# differentiable forward (linear blend skinning)


def flame_tensors(model: FlameModel, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> FlameTensors:
    """Copy a :class:`FlameModel` to torch tensors on ``device``."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)
    J = model.J_regressor
    return FlameTensors(
        v_template=t(model.v_template), shapedirs=t(model.shapedirs), exprdirs=t(model.exprdirs),
        posedirs=t(model.posedirs), weights=t(model.weights), joints_template=t(J @ model.v_template),
        joints_shapedirs=t(np.einsum("jv,vck->jck", J, model.shapedirs)),
        joints_exprdirs=t(np.einsum("jv,vck->jck", J, model.exprdirs)),
        parents=tuple(int(p) for p in model.parents),
        faces=torch.as_tensor(model.faces, dtype=torch.int64, device=device),
    )


def flame_subset(ft: FlameTensors, vertex_ids: torch.Tensor) -> FlameTensors:
    """The same model restricted to some vertices (joints unchanged); faces are dropped.

    Args:
        vertex_ids: [n_sub] int64 indices into the full vertex list.
    """
    n_feats = ft.posedirs.shape[0]
    posedirs = ft.posedirs.reshape(n_feats, -1, 3)[:, vertex_ids].reshape(n_feats, -1)
    return ft._replace(v_template=ft.v_template[vertex_ids], shapedirs=ft.shapedirs[vertex_ids],
                       exprdirs=ft.exprdirs[vertex_ids], posedirs=posedirs, weights=ft.weights[vertex_ids],
                       faces=ft.faces[:0])


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues: R = I + sin(t)/t K + (1 - cos t)/t^2 K^2, K = [r]_x, t = |r|.

    Args:
        rotvec: [..., 3] axis * angle (radians).
    Returns:
        [..., 3, 3] rotation matrices. Example: [0, 0, pi/2] maps x to y.
    Differentiable w.r.t.: rotvec, also at zero (Taylor series below ``SMALL_ANGLE_SQ``).
    """
    theta2 = (rotvec * rotvec).sum(-1)[..., None, None]  # [..., 1, 1]
    small = theta2 < SMALL_ANGLE_SQ
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * K + b * (K @ K)


def _skinning_transforms(rots: torch.Tensor, joints: torch.Tensor,
                         parents: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-joint transforms taking rest-pose points to posed points.

    Args:
        rots: [n_joints, 3, 3] local joint rotations.
        joints: [n_joints, 3] rest-pose joint locations.
    Returns:
        rotation [n_joints, 3, 3] and translation [n_joints, 3] of x -> G_j (x - J_j).
    """
    world_R, world_t = [rots[0]], [joints[0]]
    for j in range(1, len(parents)):
        p = parents[j]
        world_R.append(world_R[p] @ rots[j])
        world_t.append(world_R[p] @ (joints[j] - joints[p]) + world_t[p])
    R, t = torch.stack(world_R), torch.stack(world_t)  # [n_joints, 3, 3], [n_joints, 3]
    return R, t - (R @ joints[:, :, None])[:, :, 0]


def flame_vertices(ft: FlameTensors, shape: torch.Tensor, expression: torch.Tensor,
                   pose: torch.Tensor) -> torch.Tensor:
    """FLAME forward: blend shapes, pose correctives, then linear blend skinning.

    v_shaped = T + S beta + E psi;  J = J_reg v_shaped;  v_posed = v_shaped + P (R_j>0 - I);
    v = sum_j w_j G_j (v_posed - J_j).

    Args:
        ft: the model as tensors (:func:`flame_tensors`).
        shape: [n_s] shape coefficients, n_s <= n_shape (the leading directions are used).
        expression: [n_e] expression coefficients, n_e <= n_expr.
        pose: [n_joints * 3] axis-angle per joint (FLAME: global, neck, jaw, eye L, eye R).
    Returns:
        [n_verts, 3] vertices in FLAME's frame (mm).
    Differentiable w.r.t.: shape, expression, pose.
    """
    n_joints = len(ft.parents)
    if shape.shape[0] > ft.shapedirs.shape[2] or expression.shape[0] > ft.exprdirs.shape[2]:
        raise ValueError(f"flame_vertices: {shape.shape[0]} shape / {expression.shape[0]} expression "
                         f"coefficients for a model with {ft.shapedirs.shape[2]} / {ft.exprdirs.shape[2]}")
    if pose.shape != (n_joints * 3,):
        raise ValueError(f"flame_vertices: pose must be [{n_joints * 3}], got {list(pose.shape)}")
    n_s, n_e = shape.shape[0], expression.shape[0]
    v_shaped = ft.v_template + ft.shapedirs[:, :, :n_s] @ shape + ft.exprdirs[:, :, :n_e] @ expression
    joints = (ft.joints_template + ft.joints_shapedirs[:, :, :n_s] @ shape
              + ft.joints_exprdirs[:, :, :n_e] @ expression)  # [n_joints, 3] = J_reg v_shaped
    rots = axis_angle_to_matrix(pose.reshape(n_joints, 3))  # [n_joints, 3, 3]
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rots[1:] - eye).reshape(-1)  # [n_pose_feats]
    v_posed = v_shaped + (pose_feature @ ft.posedirs).reshape(-1, 3)  # [n_verts, 3]
    R, t = _skinning_transforms(rots, joints, ft.parents)
    vert_R = torch.einsum("vj,jab->vab", ft.weights, R)  # [n_verts, 3, 3]
    return (vert_R @ v_posed[:, :, None])[:, :, 0] + ft.weights @ t


def embed_points(vertices: Any, faces: Any, face_idx: Any, bary: Any) -> Any:
    """Surface points from triangle indices and barycentric coordinates (numpy or torch).

    p_i = sum_k bary[i, k] * vertices[faces[face_idx[i], k]].

    Args:
        vertices: [n_verts, 3]; faces: [n_faces, 3]; face_idx: [n_lmk]; bary: [n_lmk, 3].
    Returns:
        [n_lmk, 3] points.
    Differentiable w.r.t.: vertices, bary (torch inputs).
    """
    return (vertices[faces[face_idx]] * bary[:, :, None]).sum(1)

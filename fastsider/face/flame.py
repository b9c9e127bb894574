"""FLAME (Li et al. 2017): loading the user's model file and a differentiable forward pass.

FLAME needs registration, so fastsider never ships it; ``--flame PATH`` points at the user's copy.
Three file formats load, none of which needs chumpy installed:

- the 2020 ``generic_model.pkl``: a Python-2 pickle whose arrays are partly chumpy objects,
- the 2023 ``flame2023.pkl``: the same keys as plain numpy arrays,
- an ``.npz`` with the same keys.

FLAME files are in metres; :class:`FlameModel` is in mm (fastsider's unit). FLAME's canonical frame
is y up, z towards the viewer; :data:`FLAME_TO_CAMERA` (180 deg about x) turns it into the camera
frame of :mod:`fastsider.camera` (y down, z forward). Fitting lives in :mod:`fastsider.face.flame_fit`.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse
import torch

from fastsider.errors import FastsiderError

log = logging.getLogger(__name__)

M_TO_MM = 1000.0
DEFAULT_N_SHAPE = 300               # FLAME stores 300 shape then 100 expression columns
POSE_FEATS_PER_JOINT = 9            # (R - I) flattened, for every joint but the root
SMALL_ANGLE_SQ = 1e-4               # below this squared angle, Rodrigues uses its Taylor series
NPZ_MAGIC = b"PK\x03\x04"
FLAME_TO_CAMERA = np.diag([1.0, -1.0, -1.0])  # [3, 3] rotation by 180 deg about x


class FlameError(FastsiderError, ValueError):
    """A FLAME model or landmark-embedding file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class FlameModel:
    """A FLAME model in mm, FLAME's canonical frame (y up, z towards the viewer)."""

    v_template: np.ndarray   # [n_verts, 3] mm
    faces: np.ndarray        # [n_faces, 3] int64
    shapedirs: np.ndarray    # [n_verts, 3, n_shape] mm per unit coefficient
    exprdirs: np.ndarray     # [n_verts, 3, n_expr] mm per unit coefficient (n_expr may be 0)
    posedirs: np.ndarray     # [n_pose_feats, n_verts * 3] mm; pose_feature @ posedirs = offsets
    J_regressor: np.ndarray  # [n_joints, n_verts] dense
    weights: np.ndarray      # [n_verts, n_joints] skinning weights
    parents: np.ndarray      # [n_joints] int64, root parent -1, parents[j] < j

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def n_expr(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])


class LandmarkEmbedding(NamedTuple):
    """Which point of the FLAME surface each MediaPipe landmark is."""

    face_idx: np.ndarray      # [n_lmk] int64, triangle of the FLAME mesh
    bary: np.ndarray          # [n_lmk, 3] barycentric coordinates in that triangle
    landmark_ids: np.ndarray  # [n_lmk] int64, MediaPipe indices 0..477


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
# reading pickles without chumpy


class _ChumpyStub:
    """Stand-in for every chumpy class: keeps the reduce args and the pickled state."""

    chumpy_name = "chumpy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


# the globals that pickled arrays, sparse matrices and plain containers need (raw module names,
# Python 2 and 3); anything else in a "model file" is refused rather than imported and called
_SAFE_GLOBALS = {
    *(("numpy.core.multiarray", n) for n in ("_reconstruct", "scalar")),
    *(("numpy._core.multiarray", n) for n in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("_codecs", "encode"), ("collections", "OrderedDict"),
    *((m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "object", "list", "dict",
                                                           "tuple", "slice", "complex", "bytearray")),
}


class _FlameUnpickler(pickle.Unpickler):
    """Maps ``chumpy.*`` to stubs and any ``scipy.sparse.*`` matrix class to today's; refuses
    every global outside ``_SAFE_GLOBALS`` (a model file holds nothing else)."""

    _stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            key = f"{module}.{name}"
            if key not in self._stubs:
                self._stubs[key] = type(name, (_ChumpyStub,), {"chumpy_name": key})
            return self._stubs[key]
        cls = getattr(scipy.sparse, name, None) if module.startswith("scipy.sparse") else None
        if isinstance(cls, type) and issubclass(cls, (scipy.sparse.spmatrix, scipy.sparse.sparray)):
            return cls  # also the old module paths, e.g. scipy.sparse.csc.csc_matrix
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if module.startswith("numpy._core") and not hasattr(np, "_core"):
            module = "numpy.core" + module[len("numpy._core"):]  # numpy-2 pickle under numpy 1
        return super().find_class(module, name)


def _chumpy_to_array(obj: _ChumpyStub) -> np.ndarray:
    """Value of a chumpy ``Ch`` (state ``'x'``) or of the few reorderings FLAME files use."""
    state = obj.__dict__.get("_state")
    args = obj.__dict__.get("_args", ())
    if not isinstance(state, dict):
        if args:  # pickled as a call Ch(x)
            return _to_array(args[0])
        raise ValueError(f"{obj.chumpy_name} object without state")
    kind = type(obj).__name__
    if "x" in state:
        return _to_array(state["x"])
    if kind == "Reshape":
        return _to_array(state["a"]).reshape(state["newshape"])
    if kind == "transpose":
        return np.transpose(_to_array(state["a"]), state.get("axes"))
    if kind == "Select":
        picked = _to_array(state["a"]).ravel()[np.asarray(state["idxs"])]
        return picked.reshape(state["preferred_shape"]) if "preferred_shape" in state else picked
    raise ValueError(f"unsupported chumpy class {obj.chumpy_name}")


def _sparse_to_dense(obj: Any) -> np.ndarray:
    """Dense copy of a scipy sparse matrix, rebuilt from its fields if the pickle is too old."""
    try:
        return np.asarray(obj.toarray())
    except Exception:  # an ancient pickle may lack fields today's scipy expects
        d = obj.__dict__
        shape = tuple(d.get("_shape", d.get("shape")))
        cls = scipy.sparse.csr_matrix if "csr" in type(obj).__name__ else scipy.sparse.csc_matrix
        return cls((d["data"], d["indices"], d["indptr"]), shape=shape).toarray()


def _to_array(value: Any) -> np.ndarray:
    """ndarray from an ndarray, a chumpy stub, a sparse matrix or a nested sequence."""
    if isinstance(value, _ChumpyStub):
        return _chumpy_to_array(value)
    if scipy.sparse.issparse(value):
        return _sparse_to_dense(value)
    return np.asarray(value)


def _why(exc: BaseException) -> str:
    """One-line description of an exception."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _read_raw(path: Path) -> dict[str, Any]:
    """The key -> value mapping stored in a FLAME pickle or npz."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FlameError(f"FLAME file {path}: not found") from None
    except OSError as exc:
        raise FlameError(f"FLAME file {path}: cannot read ({exc.strerror})") from None
    try:
        if data.startswith(NPZ_MAGIC):
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        raw = _FlameUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # garbage or truncated input raises many types; all mean "unreadable"
        raise FlameError(f"FLAME file {path}: not a readable pickle/npz ({_why(exc)})") from None
    if not isinstance(raw, dict):
        raise FlameError(f"FLAME file {path}: expected a dict of arrays, got {type(raw).__name__}")
    return raw


# --------------------------------------------------------------------------------------------
# building and validating the model


def _get_array(raw: dict[str, Any], key: str, path: Path, dtype: type) -> np.ndarray:
    if key not in raw:
        raise FlameError(f"FLAME file {path}: missing key {key!r}")
    try:
        arr = _to_array(raw[key]).astype(dtype)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise FlameError(f"FLAME file {path}: key {key!r} is not an array ({exc})") from None
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise FlameError(f"FLAME file {path}: key {key!r} holds non-finite values")
    return arr


def _expect_shape(arr: np.ndarray, shape: tuple[int | None, ...], key: str, path: Path) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise FlameError(f"FLAME file {path}: {key!r} has shape {list(arr.shape)}, expected {want}")


def _parents_from_kintree(kintree: np.ndarray, path: Path) -> np.ndarray:
    _expect_shape(kintree, (2, None), "kintree_table", path)
    if kintree.shape[1] == 0:
        raise FlameError(f"FLAME file {path}: kintree_table has no joints")
    parents = kintree[0].astype(np.int64).copy()  # [n_joints]
    parents[0] = -1  # FLAME stores the root's parent as 2**32 - 1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, len(parents))):
        raise FlameError(f"FLAME file {path}: kintree_table is not a tree ordered parents-first")
    return parents


def _split_shapedirs(dirs: np.ndarray, raw: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    total = dirs.shape[2]
    try:
        n_shape = int(np.asarray(raw["n_shape"])) if "n_shape" in raw else DEFAULT_N_SHAPE
    except (ValueError, TypeError):
        n_shape = 0
    if n_shape <= 0:
        raise FlameError(f"FLAME file {path}: n_shape must be a positive integer, got {raw['n_shape']!r}")
    n_shape = min(n_shape, total)
    return dirs[:, :, :n_shape], dirs[:, :, n_shape:]


def load_flame(path: str | Path) -> FlameModel:
    """Read a FLAME 2020 pickle (chumpy inside), FLAME 2023 pickle or npz; metres -> mm.

    Raises:
        FlameError: unreadable file, missing key or inconsistent shapes (one line, names the file).
    """
    path = Path(path)
    raw = _read_raw(path)
    v_template = _get_array(raw, "v_template", path, np.float64) * M_TO_MM  # [n_verts, 3]
    _expect_shape(v_template, (None, 3), "v_template", path)
    n_verts = v_template.shape[0]
    faces = _get_array(raw, "f", path, np.int64)  # [n_faces, 3]
    _expect_shape(faces, (None, 3), "f", path)
    if faces.size and (faces.min() < 0 or faces.max() >= n_verts):
        raise FlameError(f"FLAME file {path}: 'f' indexes vertices outside 0..{n_verts - 1}")
    parents = _parents_from_kintree(_get_array(raw, "kintree_table", path, np.int64), path)
    n_joints = len(parents)
    dirs = _get_array(raw, "shapedirs", path, np.float64) * M_TO_MM  # [n_verts, 3, n_total]
    _expect_shape(dirs, (n_verts, 3, None), "shapedirs", path)
    shapedirs, exprdirs = _split_shapedirs(dirs, raw, path)
    n_feats = (n_joints - 1) * POSE_FEATS_PER_JOINT
    posedirs = _get_array(raw, "posedirs", path, np.float64) * M_TO_MM  # [n_verts, 3, n_feats]
    _expect_shape(posedirs, (n_verts, 3, n_feats), "posedirs", path)
    J_regressor = _get_array(raw, "J_regressor", path, np.float64)  # [n_joints, n_verts]
    _expect_shape(J_regressor, (n_joints, n_verts), "J_regressor", path)
    weights = _get_array(raw, "weights", path, np.float64)  # [n_verts, n_joints]
    _expect_shape(weights, (n_verts, n_joints), "weights", path)
    model = FlameModel(
        v_template=v_template, faces=faces, shapedirs=np.ascontiguousarray(shapedirs),
        exprdirs=np.ascontiguousarray(exprdirs),
        posedirs=np.ascontiguousarray(posedirs.reshape(n_verts * 3, n_feats).T),
        J_regressor=J_regressor, weights=weights, parents=parents,
    )
    log.info("FLAME %s: %d verts, %d faces, %d shape, %d expression, %d joints", path.name,
             n_verts, len(faces), model.n_shape, model.n_expr, n_joints)
    return model


def load_landmark_embedding(path: str | Path) -> LandmarkEmbedding:
    """Read an npz with ``lmk_face_idx``, ``lmk_b_coords``, ``landmark_indices`` (MICA's format).

    Raises:
        FlameError: unreadable file, missing key or inconsistent shapes.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FlameError(f"landmark embedding {path}: not found") from None
    except Exception as exc:  # zip/npy parsing raises many types; all mean "unreadable"
        raise FlameError(f"landmark embedding {path}: not a readable npz ({_why(exc)})") from None
    for key in ("lmk_face_idx", "lmk_b_coords", "landmark_indices"):
        if key not in raw:
            raise FlameError(f"landmark embedding {path}: missing key {key!r}")
    emb = LandmarkEmbedding(
        face_idx=raw["lmk_face_idx"].astype(np.int64).ravel(),
        bary=raw["lmk_b_coords"].astype(np.float64),
        landmark_ids=raw["landmark_indices"].astype(np.int64).ravel(),
    )
    n = len(emb.face_idx)
    if emb.bary.shape != (n, 3) or emb.landmark_ids.shape != (n,):
        raise FlameError(f"landmark embedding {path}: inconsistent shapes {emb.face_idx.shape}, "
                         f"{emb.bary.shape}, {emb.landmark_ids.shape}")
    return emb


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

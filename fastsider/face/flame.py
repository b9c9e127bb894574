"""FLAME (Li et al. 2017): loading the user's model file (and its landmark embedding).

FLAME needs registration, so fastsider never ships it; ``--flame PATH`` points at the user's copy.
Three file formats load, none of which needs chumpy installed:

- the 2020 ``generic_model.pkl``: a Python-2 pickle whose arrays are partly chumpy objects,
- the 2023 ``flame2023.pkl``: the same keys as plain numpy arrays,
- an ``.npz`` with the same keys.

FLAME files are in metres; :class:`FlameModel` is in mm (fastsider's unit). FLAME's canonical frame
is y up, z towards the viewer; :data:`FLAME_TO_CAMERA` (180 deg about x) turns it into the camera
frame of :mod:`fastsider.camera` (y down, z forward). The differentiable forward pass lives in
:mod:`fastsider.face.flame_forward`, fitting in :mod:`fastsider.face.flame_fit`.
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

from fastsider.errors import FastsiderError

log = logging.getLogger(__name__)

M_TO_MM = 1000.0
DEFAULT_N_SHAPE = 300               # FLAME stores 300 shape then 100 expression columns
POSE_FEATS_PER_JOINT = 9            # (R - I) flattened, for every joint but the root
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

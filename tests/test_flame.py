"""FLAME loading (2020 chumpy pickle without chumpy, 2023 pickle, npz), forward, embedding, fit.

Everything runs on a small synthetic model in FLAME's file format (metres, [V, 3, K] blend shapes,
sparse J_regressor, kintree_table), built here: a half-ellipsoid 'face' of 480 vertices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from fastsider.camera import Camera, project
from fastsider.config import FlameFitConfig
from fastsider.face.flame import FLAME_TO_CAMERA, FlameError, LandmarkEmbedding, load_flame, load_landmark_embedding
from fastsider.face.flame_forward import axis_angle_to_matrix, embed_points, flame_tensors, flame_vertices
from fastsider.face.flame_fit import derive_landmark_embedding, fit_flame

NX, NY = 20, 24              # grid of the synthetic face, 480 vertices
N_SHAPE, N_EXPR = 20, 10
HALF_W, HALF_H, DEPTH = 0.045, 0.06, 0.05   # metres: 90 mm wide, 120 mm high, 50 mm deep
NOSE_H, NOSE_R = 0.02, 0.012                 # metres: a Gaussian nose, so the shape has a feature
PARENTS = [-1, 0, 1, 1, 1]   # global, neck, jaw, eye L, eye R
UINT32_MAX = 2**32 - 1       # FLAME's kintree_table parent of the root


def _grid_uv() -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.linspace(-0.7, 0.7, NX), np.linspace(-0.7, 0.7, NY))
    return u.ravel(), v.ravel()


def _grid_faces() -> np.ndarray:
    a = (np.arange(NY - 1)[:, None] * NX + np.arange(NX - 1)[None]).ravel()
    b, c = a + 1, a + NX
    # counter-clockwise seen from +z (FLAME's viewer side): outward normals
    return np.concatenate([np.stack([a, b, c + 1], 1), np.stack([a, c + 1, c], 1)]).astype(np.uint32)


def _smooth_dirs(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, k: int, rms_m: float) -> np.ndarray:
    """k random cubic-polynomial displacement fields [V, 3, k], each with RMS ``rms_m``."""
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v, u**3, u * u * v, u * v * v, v**3], 1)
    dirs = np.einsum("vb,bck->vck", basis, rng.normal(size=(basis.shape[1], 3, k)))
    return dirs * rms_m / np.sqrt((dirs**2).sum(1).mean(0))


def _regressor_row(verts: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    near = np.hypot(verts[:, 0] - centre[0], verts[:, 1] - centre[1]) < radius
    return near / near.sum()


def _synthetic_raw(seed: int = 0) -> dict:
    """A FLAME-format dict in metres, as the model files store it."""
    rng = np.random.default_rng(seed)
    u, v = _grid_uv()
    x, y = HALF_W / 0.7 * u, HALF_H / 0.7 * v
    z = DEPTH * np.sqrt(1 - u * u - v * v) + NOSE_H * np.exp(-(x * x + y * y) / (2 * NOSE_R**2))
    verts = np.stack([x, y, z], 1)
    dirs = np.concatenate([_smooth_dirs(rng, u, v, N_SHAPE, 0.002),  # 2 mm RMS per unit coefficient
                           _smooth_dirs(rng, u, v, N_EXPR, 0.0015)], 2)
    jreg = np.stack([np.full(len(verts), 1 / len(verts)),
                     _regressor_row(verts, (0.0, -0.06), 0.02), _regressor_row(verts, (0.0, -0.02), 0.015),
                     _regressor_row(verts, (-0.03, 0.02), 0.01), _regressor_row(verts, (0.03, 0.02), 0.01)])
    jaw = 0.9 * np.clip((-0.01 - verts[:, 1]) / 0.02, 0, 1)  # lower part follows the jaw
    weights = np.stack([np.full(len(verts), 0.1), 0.9 - jaw, jaw, 0 * jaw, 0 * jaw], 1)
    return {
        "v_template": verts, "f": _grid_faces(), "shapedirs": dirs,
        "posedirs": rng.normal(scale=2e-4, size=(len(verts), 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(jreg), "weights": weights,
        "kintree_table": np.array([[UINT32_MAX, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32),
        "n_shape": N_SHAPE, "bs_style": "lbs", "bs_type": "lrotmin", "J": jreg @ verts,
    }


@contextlib.contextmanager
def _fake_chumpy():
    """Registers modules ``chumpy``, ``chumpy.ch``, ``chumpy.reordering`` that pickle like chumpy."""
    mods = {name: types.ModuleType(name) for name in ("chumpy", "chumpy.ch", "chumpy.reordering")}

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)

        def __getstate__(self):  # chumpy: __dict__ minus weak dictionaries
            return {"x": self.x, "_dirty_vars": {"x"}, "_itr": None, "_depends_on_deps": {},
                    "_make_dense": False, "_make_sparse": False}

    class Reshape:
        def __init__(self, a, newshape):
            self.a, self.newshape = a, newshape

        def __getstate__(self):
            return {"a": self.a, "newshape": self.newshape, "_dirty_vars": set(), "_itr": None}

    for cls, mod in ((Ch, "chumpy.ch"), (Reshape, "chumpy.reordering")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    sys.modules.update(mods)
    try:
        yield Ch, Reshape
    finally:
        for name in mods:
            sys.modules.pop(name)


def _write_2020(raw: dict, path) -> None:
    with _fake_chumpy() as (Ch, Reshape):
        obj = dict(raw, shapedirs=Ch(raw["shapedirs"]),
                   v_template=Reshape(Ch(raw["v_template"].ravel()), raw["v_template"].shape))
        data = pickle.dumps(obj, protocol=2)
    # old scipy pickled sparse matrices under scipy.sparse.csc (deprecated today)
    data = data.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    assert b"chumpy.ch\nCh\n" in data and b"scipy.sparse.csc\ncsc_matrix\n" in data
    path.write_bytes(data)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: thread start-up dominates, and on a busy 2-core box OpenMP spinning made a
    fit 20x slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def raw() -> dict:
    return _synthetic_raw()


@pytest.fixture(scope="module")
def model(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("flame") / "flame2023.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=2))
    return load_flame(path)


# --------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize("fmt", ["2020", "2023", "npz"])
def test_load_formats_in_mm(raw, fmt, tmp_path):
    path = tmp_path / ("model.npz" if fmt == "npz" else "model.pkl")
    if fmt == "2020":
        _write_2020(raw, path)
        assert not any(m == "chumpy" or m.startswith("chumpy.") for m in sys.modules)
    elif fmt == "2023":
        path.write_bytes(pickle.dumps(raw, protocol=2))
    else:
        np.savez(path, **{k: v for k, v in raw.items() if k not in ("bs_style", "bs_type", "J_regressor")},
                 J_regressor=raw["J_regressor"].toarray())
    m = load_flame(path)
    n_verts = len(raw["v_template"])
    np.testing.assert_allclose(m.v_template, raw["v_template"] * 1000)
    np.testing.assert_allclose(m.shapedirs, raw["shapedirs"][:, :, :N_SHAPE] * 1000)
    np.testing.assert_allclose(m.exprdirs, raw["shapedirs"][:, :, N_SHAPE:] * 1000)
    # posedirs [V, 3, 36] -> [36, V * 3]: feature k, vertex i, coordinate c at column 3 i + c
    assert m.posedirs.shape == (36, n_verts * 3)
    np.testing.assert_allclose(m.posedirs[7, 3 * 11 + 2], raw["posedirs"][11, 2, 7] * 1000)
    np.testing.assert_allclose(m.J_regressor, raw["J_regressor"].toarray())
    np.testing.assert_array_equal(m.faces, raw["f"].astype(np.int64))
    np.testing.assert_array_equal(m.parents, PARENTS)
    assert m.weights.shape == (n_verts, 5) and (m.n_shape, m.n_expr, m.n_joints) == (N_SHAPE, N_EXPR, 5)


def test_without_n_shape_everything_is_shape(raw, tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({k: v for k, v in raw.items() if k != "n_shape"}))
    m = load_flame(path)  # 30 columns <= 300: all shape, as FLAME files would split at 300
    assert m.n_shape == N_SHAPE + N_EXPR and m.n_expr == 0


def _broken_files(raw, tmp_path):
    good = pickle.dumps(raw, protocol=2)
    bad_shape = dict(raw, posedirs=raw["posedirs"][:, :, :30])
    return {
        "truncated.pkl": good[: len(good) // 2],
        "no_shapedirs.pkl": pickle.dumps({k: v for k, v in raw.items() if k != "shapedirs"}),
        "random.pkl": np.random.default_rng(1).bytes(4096),
        "bad_posedirs.pkl": pickle.dumps(bad_shape),
        "list.pkl": pickle.dumps([1, 2, 3]),
        "evil.pkl": pickle.dumps(dict(raw, f=pathlib.PurePosixPath("x"))),  # a class no model holds
    }


@pytest.mark.parametrize("name", ["truncated.pkl", "no_shapedirs.pkl", "random.pkl", "bad_posedirs.pkl",
                                  "list.pkl", "evil.pkl", "missing.pkl"])
def test_broken_files_raise_one_line(raw, tmp_path, name):
    files = _broken_files(raw, tmp_path)
    if name in files:
        (tmp_path / name).write_bytes(files[name])
    with pytest.raises(FlameError) as info:
        load_flame(tmp_path / name)
    msg = str(info.value)
    assert name in msg and "\n" not in msg
    if name == "no_shapedirs.pkl":
        assert "missing key 'shapedirs'" in msg


def test_landmark_embedding_file(tmp_path):
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(path, lmk_face_idx=np.array([3, 5]), lmk_b_coords=np.full((2, 3), 1 / 3),
             landmark_indices=np.array([1, 33]))
    emb = load_landmark_embedding(path)
    np.testing.assert_array_equal(emb.face_idx, [3, 5])
    np.testing.assert_array_equal(emb.landmark_ids, [1, 33])
    np.savez(path, lmk_face_idx=np.array([3, 5]), lmk_b_coords=np.ones((3, 3)), landmark_indices=[1, 2])
    for content in (None, b"not a zip"):
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(FlameError, match="mediapipe_landmark_embedding"):
            load_landmark_embedding(path)


# --------------------------------------------------------------------------------------------
# forward


def test_rodrigues_matches_scipy_and_gradcheck():
    rv = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.9], [1e-4, 0.0, -2e-4], [0.0, 0.0, np.pi / 2]],
                      dtype=torch.float64)
    np.testing.assert_allclose(axis_angle_to_matrix(rv).numpy(), Rotation.from_rotvec(rv.numpy()).as_matrix(),
                               atol=1e-12)
    for r in (rv[:1], rv[1:2], rv[2:3]):  # at zero, generic, inside the Taylor branch
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (r.clone().requires_grad_(),))


def test_forward_zero_is_template_and_jaw_moves_only_jaw(model):
    ft = flame_tensors(model, dtype=torch.float64)
    zeros = [torch.zeros(n, dtype=torch.float64) for n in (N_SHAPE, N_EXPR, 15)]
    v0 = flame_vertices(ft, *zeros).numpy()
    np.testing.assert_allclose(v0, model.v_template, atol=1e-9)

    pose = torch.zeros(15, dtype=torch.float64)
    pose[6:9] = torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)  # jaw opens about x
    v = flame_vertices(ft, zeros[0], zeros[1], pose).numpy()
    jaw_w = model.weights[:, 2]
    # pose correctives: (R_jaw - I) feeds features 9..17 (joint 2 is the 2nd non-root joint)
    feat = np.zeros(36)
    feat[9:18] = (Rotation.from_rotvec([0.3, 0, 0]).as_matrix() - np.eye(3)).ravel()
    corrective = (feat @ model.posedirs).reshape(-1, 3)
    still = jaw_w == 0
    np.testing.assert_allclose(v[still], model.v_template[still] + corrective[still], atol=1e-9)
    # a vertex on the jaw: v = w0 x + w1 x + w2 (R (x - J_jaw) + J_jaw), x the corrected rest point
    i = int(np.argmax(jaw_w))
    x = model.v_template[i] + corrective[i]
    J = model.J_regressor[2] @ model.v_template
    R = Rotation.from_rotvec([0.3, 0, 0]).as_matrix()
    expect = (1 - jaw_w[i]) * x + jaw_w[i] * (R @ (x - J) + J)
    np.testing.assert_allclose(v[i], expect, atol=1e-9)
    assert np.linalg.norm(v[i] - x) > 1.0  # the jaw really moved (mm)


def _reference_lbs(raw: dict, shape: np.ndarray, expr: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Textbook SMPL/FLAME skinning with 4x4 matrices, straight from the file's arrays (mm)."""
    dirs = raw["shapedirs"] * 1000
    v = raw["v_template"] * 1000 + dirs @ np.concatenate([shape, expr])  # [V, 3]
    J = raw["J_regressor"].toarray() @ v
    rots = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix()
    feat = np.concatenate([(R - np.eye(3)).ravel() for R in rots[1:]])
    v_posed = v + (raw["posedirs"] * 1000) @ feat
    G = []
    for j, p in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3], local[:3, 3] = rots[j], J[j] - (J[p] if p >= 0 else 0)
        G.append(local if p < 0 else G[p] @ local)
    unpose = [np.block([[np.eye(3), -J[j][:, None]], [np.zeros((1, 3)), 1]]) for j in range(len(G))]
    A = np.stack([g @ u for g, u in zip(G, unpose)])  # [n_joints, 4, 4]
    T = np.einsum("vj,jab->vab", raw["weights"], A)
    return np.einsum("vab,vb->va", T, np.concatenate([v_posed, np.ones((len(v), 1))], 1))[:, :3]


def test_forward_matches_reference_lbs(raw, model):
    rng = np.random.default_rng(5)
    shape, expr, pose = rng.normal(size=N_SHAPE), rng.normal(size=N_EXPR), 0.3 * rng.normal(size=15)
    ft = flame_tensors(model, dtype=torch.float64)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    got = flame_vertices(ft, t(shape), t(expr), t(pose)).numpy()
    np.testing.assert_allclose(got, _reference_lbs(raw, shape, expr, pose), atol=1e-9)
    # fewer coefficients than the model has use the leading directions
    got = flame_vertices(ft, t(shape[:5]), t(expr[:0]), t(pose)).numpy()
    padded = np.concatenate([shape[:5], np.zeros(N_SHAPE - 5)])
    np.testing.assert_allclose(got, _reference_lbs(raw, padded, 0 * expr, pose), atol=1e-9)


# --------------------------------------------------------------------------------------------
# embedding and fit

CAMERA = Camera(256, 256, fx=1024.0, fy=1024.0, cx=128.0, cy=128.0)


def _to_camera(v_flame: np.ndarray, rotvec, translation) -> np.ndarray:
    R = Rotation.from_rotvec(rotvec).as_matrix() @ FLAME_TO_CAMERA
    return v_flame @ R.T + np.asarray(translation)


def _posed(model, shape, expr, jaw) -> np.ndarray:
    ft = flame_tensors(model, dtype=torch.float64)
    pose = np.zeros(15)
    pose[6:9] = jaw
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return flame_vertices(ft, t(shape), t(expr), t(pose)).numpy()


@pytest.mark.parametrize("jaw, region, tol_mean, tol_max", [
    (0.0, 1.0, 1e-6, 1e-6),   # an exact similarity of the template: ICP must find it exactly
    # jaw opened 0.03 rad: the chin moves ~1 mm against the rest, which a rigid template cannot
    # follow; on this smooth face sliding the targets then fits *better* than the true placement
    # (RMS distance 0.21 vs 0.35 mm), so errors are of the deformation's size: over seeds 0-9
    # measured 0.08-1.34 mm mean, 2.6 mm max
    (0.03, 0.6, 2.0, 3.5),
])
def test_derive_embedding_lands_on_targets(model, jaw, region, tol_mean, tol_max):
    rng = np.random.default_rng(3)
    posed = _posed(model, np.zeros(N_SHAPE), np.zeros(N_EXPR), [jaw, 0, 0])
    v = 1.05 * _to_camera(posed, [0.05, 0.15, 0.0], [8.0, -12.0, 700.0])  # scaled, turned, at 700 mm
    u, w = _grid_uv()
    idx = rng.choice(np.flatnonzero(u * u + w * w < region), 80, replace=False)
    emb = derive_landmark_embedding(model, v[idx], np.arange(80))
    got = embed_points(v, model.faces, emb.face_idx, emb.bary)
    err = np.linalg.norm(got - v[idx], axis=1)
    assert err.mean() < tol_mean and err.max() < tol_max, (err.mean(), err.max())


@pytest.fixture(scope="module")
def fit_problem(model):
    rng = np.random.default_rng(7)
    truth = {"shape": 0.6 * rng.normal(size=N_SHAPE), "expression": 0.6 * rng.normal(size=N_EXPR),
             "jaw": np.array([0.12, 0.0, 0.0]), "rotation": np.array([0.1, -0.15, 0.05]),
             "translation": np.array([10.0, -5.0, 750.0])}
    v_true = _to_camera(_posed(model, truth["shape"], truth["expression"], truth["jaw"]),
                        truth["rotation"], truth["translation"])
    n_lmk = 80
    emb = LandmarkEmbedding(face_idx=rng.choice(len(model.faces), n_lmk, replace=False),
                            bary=rng.dirichlet(np.ones(3), n_lmk),
                            landmark_ids=rng.choice(478, n_lmk, replace=False))
    landmarks_px = np.full((478, 3), np.nan)  # landmarks outside the embedding must be ignored
    lmk_true = embed_points(v_true, model.faces, emb.face_idx, emb.bary)
    landmarks_px[emb.landmark_ids, :2] = project(CAMERA, lmk_true)
    landmarks_px[emb.landmark_ids, 2] = 0.0
    return truth, v_true, emb, landmarks_px


def _scaled_error(v: np.ndarray, v_true: np.ndarray) -> float:
    """Mean vertex distance after the best scaling about the camera centre, which no image sees."""
    s = (v * v_true).sum() / (v * v).sum()
    return float(np.linalg.norm(s * v - v_true, axis=1).mean())


def test_fit_recovers_synthetic_face(model, fit_problem):
    truth, v_true, emb, landmarks_px = fit_problem
    cfg = FlameFitConfig(iterations=400)
    fit = fit_flame(model, landmarks_px, CAMERA, cfg, embedding=emb, seed=0)
    assert fit.coarse.source == "flame" and fit.coarse.vertices.shape == v_true.shape
    assert fit.params["shape"].shape == (N_SHAPE,) and fit.params["expression"].shape == (N_EXPR,)
    # exact data: the landmarks must be matched to well under a pixel (measured 0.03 px) ...
    assert fit.reprojection_px < 0.5, fit.reprojection_px
    # ... and so must the whole surface between them, in the image (start: ~12 px)
    v_init = _to_camera(model.v_template, [0, 0, 0], truth["translation"])
    mesh_px = np.linalg.norm(project(CAMERA, fit.coarse.vertices) - project(CAMERA, v_true), axis=1).mean()
    assert mesh_px < 0.5, mesh_px
    # In 3-D, scaling about the camera centre changes no pixel, and shape can trade for depth
    # (measured: depth off by ~5 mm of 750, i.e. a 0.7 % scale): allow 3 % in depth, then
    # compare the shape after that scale: 1.5 mm mean (measured 1.2 mm; start 10.7 mm), the
    # rest being the z-parts of the blend shapes that landmarks only see through perspective.
    assert abs(fit.params["translation"][2] - truth["translation"][2]) < 0.03 * truth["translation"][2]
    err, err0 = _scaled_error(fit.coarse.vertices, v_true), _scaled_error(v_init, v_true)
    assert err < 1.5 and err < err0 / 5, (err, err0)
    np.testing.assert_allclose(fit.params["rotation"], truth["rotation"], atol=0.05)
    lmk_px = project(CAMERA, fit.coarse.landmarks_3d)
    np.testing.assert_allclose(lmk_px, landmarks_px[emb.landmark_ids, :2], atol=2.0)
    # outward normals of the fitted face point at the camera
    tri = fit.coarse.vertices[fit.coarse.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (-(normals * tri.mean(1)).sum(1) > 0).mean() > 0.9
    again = fit_flame(model, landmarks_px, CAMERA, cfg, embedding=emb, seed=0)
    np.testing.assert_array_equal(again.coarse.vertices, fit.coarse.vertices)  # deterministic


def test_fit_with_derived_embedding(model, fit_problem):
    truth, v_true, _, _ = fit_problem
    # init points: 478 surface points of a roughly placed template, as the default coarse model's
    # landmarks would be; the detections are the true mesh at the same surface points
    rng = np.random.default_rng(11)
    face_idx, bary = rng.choice(len(model.faces), 478), rng.dirichlet(np.ones(3), 478)
    placed = _to_camera(model.v_template, [0, 0, 0], [0, 0, 700.0])
    init_points = embed_points(placed, model.faces, face_idx, bary)
    init_points[[5, 77]] = np.nan  # landmarks the default model lacks are left out
    landmarks_px = project(CAMERA, embed_points(v_true, model.faces, face_idx, bary))
    # a model with the opposite winding: the output must still face the camera
    flipped = dataclasses.replace(model, faces=model.faces[:, ::-1].copy())
    fit = fit_flame(flipped, landmarks_px, CAMERA, FlameFitConfig(iterations=150), init_points=init_points)
    np.testing.assert_array_equal(fit.coarse.landmark_ids, np.setdiff1d(np.arange(478), [5, 77]))
    assert fit.reprojection_px < 0.5, fit.reprojection_px
    tri = fit.coarse.vertices[fit.coarse.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (-(normals * tri.mean(1)).sum(1) > 0).mean() > 0.9


def test_fit_without_embedding_needs_init_points(model, fit_problem):
    _, v_true, emb, landmarks_px = fit_problem
    with pytest.raises(FlameError, match="init_points"):
        fit_flame(model, landmarks_px, CAMERA, FlameFitConfig(iterations=5))
    with pytest.raises(FlameError, match="n_lmk >= "):
        fit_flame(model, landmarks_px, CAMERA, FlameFitConfig(iterations=5),
                  init_points=np.full((478, 3), np.nan))
    bad = dataclasses.replace(model, faces=model.faces[:10])
    with pytest.raises(FlameError, match="embedding"):
        fit_flame(bad, landmarks_px, CAMERA, FlameFitConfig(iterations=5), embedding=emb)

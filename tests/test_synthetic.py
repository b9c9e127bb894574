"""Synthetic ground-truth faces (fastsider.eval.synthetic): reproducible, known details, product-readable files."""

from __future__ import annotations

import dataclasses
import json

import igl
import numpy as np
import pytest
from scipy.spatial import cKDTree

from fastsider.camera import Camera, project
from fastsider.config import FitConfig
from fastsider.eval import synthetic as S
from fastsider.eval import synthetic_base
from fastsider.eval.synthetic_details import LABEL_MIN_MM, REGIONS
from fastsider.eval.synthetic_params import SyntheticParams
from fastsider.eval.synthetic_photo import render_photo
from fastsider.face.landmarks import face_box_size
from fastsider.io import load_image, load_mesh
from fastsider.stages.prepare import CoarseInputs, prepare

# a cheap configuration for the tests that only need *a* case (about 1 s instead of 5)
SMALL = SyntheticParams(image_size=96, supersample=1, loop_levels=2, coarse_loop_levels=1, max_edge_mm=1.0)
F32_MM = 1e-3  # float32 rounding of coordinates near 1 m is ~6e-5 mm; generous margin


@pytest.fixture(scope="module")
def case() -> S.SyntheticCase:
    return S.make_case(0)  # the default configuration, as the benchmark uses it


@pytest.fixture(scope="module")
def case_dir(case, tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic") / "case"
    S.write_case(case, d)
    return d


def test_cached_landmarks_match_mediapipe(example_landmarks):
    # the cache is MediaPipe on the example photo; a different MediaPipe build may move points a bit
    np.testing.assert_allclose(synthetic_base.example_landmarks(), example_landmarks, atol=2.0)


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path):
    a = S.generate_cases(tmp_path / "a", 2, seed=7, params=SMALL)
    b = S.generate_cases(tmp_path / "b", 1, seed=7, params=SMALL)
    assert [p.name for p in a] == ["case_000", "case_001"]
    for name in S.CASE_FILES:
        assert (a[0] / name).read_bytes() == (b[0] / name).read_bytes(), name
    assert (a[0] / "image.png").read_bytes() != (a[1] / "image.png").read_bytes()
    assert json.loads((a[1] / "case.json").read_text())["seed"] == 8
    assert (a[0] / "gt_displacement.npy").read_bytes() != (a[1] / "gt_displacement.npy").read_bytes()


def test_gt_is_base_plus_displacement_with_requested_depths(case):
    p = case.params
    n = np.linalg.norm(case.gt_vertices - case.base_vertices, axis=1)
    np.testing.assert_allclose(n, np.abs(case.displacement), atol=F32_MM)
    assert np.abs(case.displacement[case.labels == 0]).max() < LABEL_MIN_MM
    grooves = np.isin(case.labels, (1, 2, 3)) & (np.abs(case.displacement) > 0.1)
    assert (case.gt_vertices[grooves, 2] > case.base_vertices[grooves, 2]).mean() > 0.95  # away from the camera
    specs = {1: p.forehead, 2: p.crows_feet, 3: p.nasolabial, 4: p.bumps}
    for label, spec in specs.items():
        d = case.displacement[case.labels == label]
        assert len(d) > 100, f"region {label} has almost no vertices"
        peak = np.abs(d).max()
        # peak within the requested range: vertices lie within ~0.2 mm of the crest (-15%), and the
        # tails of neighbouring lines of the same region may add a little (+10%)
        assert 0.85 * spec.depth_mm[0] <= peak <= 1.1 * spec.depth_mm[1], (label, peak, spec.depth_mm)
        assert (d < 0).mean() > 0.99 if label != 4 else (d > 0).all()  # grooves in, moles out
    for det in case.details:
        spec = specs[REGIONS[det.region]]
        assert spec.depth_mm[0] <= abs(det.depth_mm) <= spec.depth_mm[1]
        assert spec.width_mm[0] <= det.width_mm <= spec.width_mm[1]
        mid = det.points[len(det.points) // 3: max(2 * len(det.points) // 3, 1)]
        dist, _ = cKDTree(mid).query(case.base_vertices, distance_upper_bound=0.5 * det.sigma_mm)
        peak = np.abs(case.displacement[np.isfinite(dist)]).max()
        assert 0.85 * abs(det.depth_mm) <= peak <= 1.1 * abs(det.depth_mm) + 0.02, (det.region, peak, det.depth_mm)


def test_detail_regions_are_finely_meshed(case):
    e = np.concatenate([case.gt_faces[:, [0, 1]], case.gt_faces[:, [1, 2]], case.gt_faces[:, [2, 0]]])
    in_detail = case.labels[e].max(axis=1) > 0
    length = np.linalg.norm(case.base_vertices[e[:, 0]] - case.base_vertices[e[:, 1]], axis=1)
    assert length[in_detail].max() <= case.params.max_edge_mm + 1e-9
    assert len(case.gt_vertices) < 400_000


def test_written_case_loads_through_the_product(case, case_dir):
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(S.CASE_FILES)
    gt, coarse = load_mesh(case_dir / "gt.ply"), load_mesh(case_dir / "coarse.ply")
    np.testing.assert_array_equal(np.asarray(gt.vertices), case.gt_vertices)  # float32-exact in memory
    np.testing.assert_array_equal(np.asarray(gt.faces), case.gt_faces)
    np.testing.assert_array_equal(np.asarray(coarse.vertices), case.coarse_vertices)
    cam = Camera.load(case_dir / "camera.json")
    assert cam.to_json_dict() == case.camera.to_json_dict()
    assert (cam.width, cam.height) == (case.params.image_size,) * 2
    np.testing.assert_array_equal(load_image(case_dir / "image.png"), case.image)
    assert np.load(case_dir / "gt_labels.npy").shape == (len(case.gt_vertices),)
    np.testing.assert_allclose(np.loadtxt(case_dir / "landmarks7.txt"), case.landmarks7, atol=1e-3)
    meta = json.loads((case_dir / "case.json").read_text())
    assert meta["seed"] == 0 and len(meta["details"]) == len(case.details)
    assert meta["params"]["image_size"] == case.params.image_size

    v = np.asarray(coarse.vertices)
    assert 500.0 < v[:, 2].min() and v[:, 2].max() < 1200.0
    px = project(cam, v)
    assert px.min() >= 0 and px.max() <= cam.width - 1
    assert 0.45 * cam.width < face_box_size(px) < 0.9 * cam.width
    # the user-mesh path of `fastsider fit` accepts the files as they are
    prep = prepare(case_dir / "image.png", FitConfig(), CoarseInputs(mesh=case_dir / "coarse.ply",
                                                                      camera=case_dir / "camera.json"))
    assert prep.coarse.vertices.shape == v.shape and prep.image.shape[:2] == (FitConfig().image.resolution,) * 2


def test_coarse_and_gt_differ_by_the_known_displacement(case):
    sq, _, _ = igl.point_mesh_squared_distance(case.gt_vertices[::4], case.coarse_vertices,
                                               case.coarse_faces.astype(np.int64))
    err = np.sqrt(sq) - np.abs(case.displacement[::4])
    # the coarse mesh is the base one Loop level up: within ~0.02 mm of it
    assert np.abs(err).max() < 0.05
    assert np.abs(err).mean() < 0.01


def test_coarse_error_has_the_requested_amplitude():
    exact = S.make_case(3, SMALL)
    off = S.make_case(3, dataclasses.replace(SMALL, coarse_error_mm=0.5))
    shift = np.linalg.norm(off.coarse_vertices - exact.coarse_vertices, axis=1)
    assert shift.max() == pytest.approx(0.5, abs=F32_MM)
    assert np.array_equal(off.gt_vertices, exact.gt_vertices) and np.array_equal(off.image, exact.image)
    with pytest.raises(ValueError, match="loop_levels"):
        S.make_case(0, SyntheticParams(loop_levels=1, coarse_loop_levels=2))


def test_photo_shows_the_forehead_wrinkle_shading(case):
    """Around the deepest forehead line, the photo departs from a render of the detail-free base
    (same albedo, light, jitter and noise) the way a render of the GT does."""
    line = min((d for d in case.details if d.region == "forehead"), key=lambda d: d.depth_mm)
    u, v = np.round(project(case.camera, line.points[len(line.points) // 2][None])[0]).astype(int)
    half = 24
    window = case.camera.transformed(1.0, -(u - half), -(v - half), 2 * half, 2 * half)

    def render(vertices):
        img = render_photo(vertices, case.gt_faces, case.albedo, window, case.light_dir, case.background, case.params,
                             np.random.default_rng(0))
        return img.astype(float).mean(axis=2)

    gt, flat = render(case.gt_vertices), render(case.base_vertices)
    photo = case.image[v - half: v + half, u - half: u + half].astype(float).mean(axis=2)
    assert np.abs(gt - flat).max() > 8.0  # grey levels: the groove is plainly visible
    # across the groove (a column through its middle) intensity varies more with the wrinkle than without
    k = int(np.ceil(line.width_mm / (line.points[0, 2] / case.camera.fx)))
    assert np.ptp(gt[half - k: half + k + 1, half]) > np.ptp(flat[half - k: half + k + 1, half]) + 4.0
    # the photo's own departure from the flat render is the wrinkle's (not noise or albedo)
    assert np.corrcoef((photo - flat).ravel(), (gt - flat).ravel())[0, 1] > 0.8

"""Analytic checks of the evaluation metrics (distances in mm, angles in degrees)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from fastsider.eval.metrics import (
    ErrorStats,
    chamfer,
    cumulative_curve,
    depth_recovered,
    normal_angle_error,
    normal_offsets,
    point_to_mesh,
    scan_to_mesh,
    within_radius,
)


def plane(size: float = 100.0, n: int = 11, tilt_deg: float = 0.0):
    """Grid of the square [-size/2, size/2]^2 in z = 0, rotated by tilt_deg about the x axis; normal +z."""
    xs = np.linspace(-size / 2, size / 2, n)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # counter-clockwise seen from +z
    t = math.radians(tilt_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    return v @ rot.T, f


def test_point_to_plane_distances_and_closest_points():
    v, f = plane()
    rng = np.random.default_rng(0)
    heights = rng.uniform(-20, 20, size=50)
    xy = rng.uniform(-40, 40, size=(50, 2))  # inside the square, so the foot point is on the plane
    pts = np.concatenate([xy, heights[:, None]], axis=1)
    cp = point_to_mesh(pts, v, f)
    np.testing.assert_allclose(cp.distance, np.abs(heights), atol=1e-9)
    np.testing.assert_allclose(cp.point, np.concatenate([xy, np.zeros((50, 1))], axis=1), atol=1e-9)
    # the reported face really holds the closest point (inside its x range)
    tri = v[f[cp.face]]
    assert np.all(cp.point[:, 0] >= tri[:, :, 0].min(1) - 1e-9) and np.all(cp.point[:, 0] <= tri[:, :, 0].max(1) + 1e-9)
    # beyond the edge the closest point is on the boundary: (60, 0, 0) is 10 mm from x = 50
    np.testing.assert_allclose(point_to_mesh(np.array([[60.0, 0, 0]]), v, f).distance, [10.0], atol=1e-9)


def test_scan_to_mesh_mask_restricts_points():
    v, f = plane()
    pts = np.array([[0, 0, 1.0], [10, 0, 2.0], [0, 10, 3.0], [20, 20, 4.0]])
    mask = within_radius(pts, np.zeros(3), 12.0)
    assert mask.tolist() == [True, True, True, False]
    np.testing.assert_allclose(scan_to_mesh(pts, v, f, mask=mask), [1.0, 2.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(scan_to_mesh(pts, v, f), [1.0, 2.0, 3.0, 4.0], atol=1e-9)
    with pytest.raises(ValueError, match="mask"):
        scan_to_mesh(pts, v, f, mask=np.array([1, 0, 1, 0]))


@pytest.mark.parametrize("r1, r2", [(50.0, 52.0), (50.0, 45.0)])
def test_chamfer_of_concentric_spheres_is_radius_gap(r1, r2):
    s1 = trimesh.creation.icosphere(subdivisions=5, radius=r1)
    s2 = trimesh.creation.icosphere(subdivisions=5, radius=r2)
    res = chamfer(s1.vertices, s1.faces, s2.vertices, s2.faces, n_samples=4000, seed=0)
    # a subdivision-5 icosphere's chords sag at most r (1 - cos(edge/2r)) ~ 0.006 mm for r = 50
    tol = 0.02
    assert len(res.a_to_b) == len(res.b_to_a) == 4000
    assert abs(res.mean_a_to_b - abs(r1 - r2)) < tol
    assert abs(res.mean_b_to_a - abs(r1 - r2)) < tol
    assert abs(res.mean - abs(r1 - r2)) < tol
    assert np.max(np.abs(res.a_to_b - abs(r1 - r2))) < 2 * tol


def test_chamfer_region_and_asymmetry():
    v, f = plane(size=100.0)
    small_v, small_f = plane(size=40.0)
    small_v = small_v + np.array([0, 0, 3.0])
    res = chamfer(small_v, small_f, v, f, n_samples=3000, seed=1)
    # every point of the small plane is 3 mm above the big one; the big one's rim is farther away
    np.testing.assert_allclose(res.a_to_b, 3.0, atol=1e-9)
    assert res.mean_b_to_a > 3.0 + 1.0
    inner = chamfer(small_v, small_f, v, f, n_samples=3000, seed=1, region=lambda p: np.abs(p[:, :2]).max(1) < 20.0)
    np.testing.assert_allclose(inner.b_to_a, 3.0, atol=1e-9)
    assert len(inner.b_to_a) < 3000


@pytest.mark.parametrize("tilt", [0.0, 7.5, 30.0])
def test_normal_error_of_tilted_plane_is_the_tilt(tilt):
    v, f = plane(tilt_deg=tilt)
    rng = np.random.default_rng(2)
    pts = np.concatenate([rng.uniform(-30, 30, (40, 2)), np.zeros((40, 1))], axis=1)
    normals = np.tile([0.0, 0.0, 2.0], (40, 1))  # not unit on purpose: normalised inside
    err = normal_angle_error(pts, normals, v, f)
    np.testing.assert_allclose(err, tilt, atol=1e-6)
    flipped = normal_angle_error(pts, -normals, v, f)
    np.testing.assert_allclose(flipped, 180.0 - tilt, atol=1e-6)
    np.testing.assert_allclose(normal_angle_error(pts, -normals, v, f, unsigned=True), tilt, atol=1e-6)
    mask = pts[:, 0] > 0
    assert len(normal_angle_error(pts, normals, v, f, mask=mask)) == mask.sum()


def test_normal_error_follows_closest_face():
    # two planes: z = 0 facing +z and a 45-degree-tilted one far away; points near the flat one
    flat_v, flat_f = plane(size=40.0)
    tilt_v, tilt_f = plane(size=40.0, tilt_deg=45.0)
    tilt_v = tilt_v + np.array([100.0, 0, 0])
    v = np.concatenate([flat_v, tilt_v])
    f = np.concatenate([flat_f, tilt_f + len(flat_v)])
    pts = np.array([[0, 0, 1.0], [100.0, 0, 0.5]])
    err = normal_angle_error(pts, np.tile([0, 0, 1.0], (2, 1)), v, f)
    np.testing.assert_allclose(err, [0.0, 45.0], atol=1e-6)


def bump_mesh(depth: float, sigma: float = 8.0, size: float = 100.0, n: int = 401):
    """The plane grid z = depth * exp(-r^2 / (2 sigma^2)) (a groove for depth < 0)."""
    v, f = plane(size, n)
    v[:, 2] = depth * np.exp(-(v[:, 0] ** 2 + v[:, 1] ** 2) / (2 * sigma**2))
    return v, f


def test_normal_offsets_of_a_shifted_plane_are_the_shift_with_its_sign():
    v, f = plane()
    rng = np.random.default_rng(3)
    origins = np.concatenate([rng.uniform(-30, 30, (50, 2)), np.zeros((50, 1))], axis=1)
    up = np.tile([0.0, 0.0, 1.0], (50, 1))
    np.testing.assert_allclose(normal_offsets(origins, up, v + [0.0, 0.0, 0.3], f), 0.3, atol=1e-9)
    np.testing.assert_allclose(normal_offsets(origins, -up, v + [0.0, 0.0, 0.3], f), -0.3, atol=1e-9)
    assert np.isnan(normal_offsets(origins, up, v + [0.0, 0.0, 6.0], f)).all()  # beyond the reach


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0, -1.0])
def test_depth_recovered_of_a_scaled_groove_is_the_scale(share):
    """Origins on the flat base, truth a 1 mm deep Gaussian groove; a mesh of the groove at ``share``
    of its depth recovers that share."""
    rng = np.random.default_rng(4)
    xy = rng.uniform(-20, 20, (400, 2))
    origins = np.concatenate([xy, np.zeros((400, 1))], axis=1)
    up = np.tile([0.0, 0.0, 1.0], (400, 1))
    true = -1.0 * np.exp(-(xy**2).sum(1) / (2 * 8.0**2))
    found = normal_offsets(origins, up, *bump_mesh(-1.0 * share))
    assert depth_recovered(true, found) == pytest.approx(share, abs=1e-3)


def test_depth_recovered_without_a_displacement_is_nan():
    assert math.isnan(depth_recovered(np.zeros(5), np.ones(5)))
    with pytest.raises(ValueError):
        depth_recovered(np.zeros(5), np.zeros(4))


def test_error_stats_known_array():
    e = np.array([1.0, 2.0, 3.0, 4.0, 10.0, np.nan])
    s = ErrorStats.from_errors(e)
    assert s.count == 5
    assert s.median == 3.0
    assert s.mean == pytest.approx(4.0)
    assert s.std == pytest.approx(math.sqrt((9 + 4 + 1 + 0 + 36) / 5))
    assert s.p90 == pytest.approx(4.0 + 0.6 * 6.0)  # linear interpolation between 4 and 10
    assert s.max == 10.0
    d = s.to_json_dict()
    assert d["median"] == 3.0 and d["count"] == 5
    empty = ErrorStats.from_errors(np.array([]))
    assert empty.count == 0 and empty.to_json_dict()["mean"] is None


def test_cumulative_curve_matches_counts():
    rng = np.random.default_rng(3)
    e = rng.exponential(1.5, size=1000)
    thr, frac = cumulative_curve(e, max_value=5.0, n=51)
    assert thr[0] == 0.0 and thr[-1] == 5.0 and len(thr) == 51
    assert np.all(np.diff(frac) >= 0)
    for i in (0, 10, 25, 50):
        assert frac[i] == pytest.approx(np.count_nonzero(e <= thr[i]) / 1000)
    thr2, frac2 = cumulative_curve(np.array([0.5, 1.5]), max_value=2.0, n=3)
    np.testing.assert_allclose(frac2, [0.0, 0.5, 1.0])
    _, ties = cumulative_curve(np.array([0.0, 1.0, 1.0, 2.0]), max_value=2.0, n=3)
    np.testing.assert_allclose(ties, [0.25, 0.75, 1.0])  # "below or at" the threshold
    with pytest.raises(ValueError):
        cumulative_curve(e, max_value=0.0, n=10)

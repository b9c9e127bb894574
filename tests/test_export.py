"""The export package on tiny hand-built meshes: midpoint subdivision and its parents, normals, the
Newton walk onto an analytic sphere + height map, visibility, the disk atlas and xatlas carried
through subdivision, UV rasterization, the bilinear-exact displacement texels, the file writers."""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from synthetic_scenes import CAMERA, NORM, height_field_mesh

from fastsider.export import bake, formats
from fastsider.export.displace import displace_onto_zero_set, fade_weights, visible_vertices
from fastsider.export.subdivision import levels_for_edge, median_edge_mm, midpoint_subdivide, vertex_normals
from fastsider.export.uv import UVAtlas, disk_atlas, folded, is_disk, subdivide_with_atlas


def grid(n: int = 9, size_mm: float = 40.0, depth_mm: float = 600.0) -> trimesh.Trimesh:
    """A flat square patch facing the camera (a disk: one boundary)."""
    return height_field_mesh(size_mm, depth_mm, n, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# subdivision


def test_one_midpoint_level_of_one_triangle():
    """3 corners + 3 midpoints, 4 faces; the corners keep indices and positions; parents say which edge."""
    v = np.array([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]])
    sub = midpoint_subdivide(v, np.array([[0, 1, 2]]), 1)
    assert sub.vertices.shape == (6, 3) and sub.faces.shape == (4, 3) and sub.levels == 1
    np.testing.assert_array_equal(sub.vertices[:3], v)
    np.testing.assert_array_equal(sub.parents, [[0, 1], [0, 2], [1, 2]])  # sorted unique edges
    np.testing.assert_allclose(sub.vertices[3:], [[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert np.isclose(trimesh.Trimesh(sub.vertices, sub.faces).area, 2.0)  # same surface, 4 x 0.5


def test_midpoint_subdivision_is_trimeshs_with_parents():
    """Two levels of a grid: the same vertex set and faces as trimesh.remesh.subdivide (twice), every
    new vertex the midpoint of its two parents, parents always earlier vertices."""
    m = grid(5)
    sub = midpoint_subdivide(m.vertices, m.faces, 2)
    v, f = m.vertices, m.faces
    for _ in range(2):
        v, f = trimesh.remesh.subdivide(v, f)
    assert len(sub.vertices) == len(v) and len(sub.faces) == len(f)
    key = lambda x: set(map(tuple, np.round(x, 9)))
    assert key(sub.vertices) == key(v)
    n0 = len(m.vertices)
    idx = np.arange(n0, len(sub.vertices))
    np.testing.assert_allclose(sub.vertices[idx], sub.vertices[sub.parents].mean(axis=1), atol=1e-12)
    assert (sub.parents.max(axis=1) < idx).all()
    assert np.isclose(trimesh.Trimesh(sub.vertices, sub.faces).area, m.area)


def test_levels_come_nearest_the_target_edge_within_the_face_budget():
    assert levels_for_edge(1.0, 0.42, 1000, 10**9) == 1   # log2(2.4) = 1.26
    assert levels_for_edge(4.0, 0.42, 1000, 10**9) == 3   # log2(9.5) = 3.25
    assert levels_for_edge(4.0, 0.42, 1000, 20000) == 2   # 64k faces would be over the budget
    assert levels_for_edge(0.3, 0.42, 1000, 10**9) == 0
    assert np.isclose(median_edge_mm(np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]]), np.array([[0, 1, 2]])), 4.0)


def test_vertex_normals_of_a_patch_face_the_camera():
    m = grid(4)
    np.testing.assert_allclose(vertex_normals(m.vertices, m.faces), np.tile([0.0, 0.0, -1.0], (16, 1)), atol=1e-12)


# --------------------------------------------------------------------------------------------
# onto the zero set


class SphereSdf(torch.nn.Module):
    """|x - c| - r of a sphere in mm, evaluated in the unit box of ``norm`` (unit-box units)."""

    def __init__(self, centre_mm, radius_mm, norm):
        super().__init__()
        self.c = torch.tensor((np.asarray(centre_mm) - norm.centre) / norm.half_size, dtype=torch.float32)
        self.r = radius_mm / norm.half_size

    def forward(self, x):
        return (x - self.c).norm(dim=-1) - self.r


def sphere_with_height_map(amplitude_mm: float = 0.5):
    """f = sphere - h(project(x)): the fast preset's model with an analytic base; h a smooth bump
    pattern over the 64 px crop, in mm."""
    from fastsider.nn.fields import Geometry, sdf_with_gradient
    from fastsider.nn.maps import HeightMap

    height = HeightMap(CAMERA, NORM, 64)
    u, v = np.meshgrid(np.arange(64), np.arange(64))
    with torch.no_grad():
        height.values[0] = torch.tensor(amplitude_mm * np.sin(u / 4.0) * np.cos(v / 5.0), dtype=torch.float32)
    geometry = Geometry(SphereSdf([0.0, 0.0, 600.0], 30.0, NORM), None, height)

    class Model:  # what stages.topology reads of a SiderModel
        def sdf_with_gradient(self, x, create_graph=True):
            return sdf_with_gradient(geometry, x, "autograd", 1e-3, create_graph)
    return Model(), geometry


def test_vertices_walk_onto_the_zero_set_of_a_sphere_minus_a_height_map():
    """Every vertex of a sphere mesh (r = 30 mm), moved along its normal, lands where
    |x - c| - r = h(project(x)) to 0.01 mm, up to 0.5 mm off the sphere."""
    from fastsider.stages.topology import model_sdf_mm

    model, _ = sphere_with_height_map()
    sdf = model_sdf_mm(model, NORM, torch.device("cpu"))
    ball = trimesh.creation.icosphere(subdivisions=3, radius=30.0)
    base = ball.vertices + np.array([0.0, 0.0, 600.0])
    normals = vertex_normals(base, ball.faces)
    disp = displace_onto_zero_set(sdf, base, normals, 0.0, steps=3, max_mm=5.0, max_step_mm=1.0)
    moved = base + disp.d_mm[:, None] * normals
    f, _ = sdf(moved)
    assert np.abs(f).max() < 0.01 and disp.residual_mm.max() < 0.01
    assert 0.3 < np.abs(disp.d_mm).max() <= 0.5 + 1e-3  # the detail is there, and no more than h
    np.testing.assert_allclose(np.abs(disp.gradient).max(), 1.0, atol=0.5)


def test_newton_on_a_linear_sdf_takes_one_step():
    """f = z - 601 along n = +z from z = 600: d = 1 after one step (f is linear on the line)."""
    def plane(x):
        return x[:, 2] - 601.0, np.tile([0.0, 0.0, 1.0], (len(x), 1))
    disp = displace_onto_zero_set(plane, np.array([[0.0, 0.0, 600.0]]), np.array([[0.0, 0.0, 1.0]]), 0.0, 1, 5.0, 2.0)
    np.testing.assert_allclose(disp.d_mm, [1.0])


def test_newton_evaluates_only_the_vertices_still_off_the_zero_set():
    """Two vertices on f = z - 601 (one step each) and one on f = z^3-like curvature that needs more:
    after the first step only the curved one is evaluated, and all three end on the zero set."""
    calls = []

    def sdf(x):
        calls.append(len(x))
        # vertices with x < 0: the plane z = 601; the other: the cubic e + e^3 of e = z - 601, zero at z = 601
        e = x[:, 2] - 601.0
        f = np.where(x[:, 0] < 0, e, e + e**3)
        dz = np.where(x[:, 0] < 0, 1.0, 1.0 + 3.0 * e**2)
        return f, np.stack([np.zeros_like(dz), np.zeros_like(dz), dz], 1)

    base = np.array([[-1.0, 0.0, 600.0], [-2.0, 0.0, 600.2], [1.0, 0.0, 600.0]])
    disp = displace_onto_zero_set(sdf, base, np.tile([0.0, 0.0, 1.0], (3, 1)), 0.0, 8, 5.0, 2.0)
    np.testing.assert_allclose(base[:, 2] + disp.d_mm, 601.0, atol=1e-4)
    assert calls[:2] == [3, 3] and all(c == 1 for c in calls[2:]) and len(calls) < 9


def test_the_camera_sees_the_front_of_a_sphere_and_the_fade_keeps_to_it():
    ball = trimesh.creation.icosphere(subdivisions=3, radius=30.0)
    v = ball.vertices + np.array([0.0, 0.0, 600.0])
    n = vertex_normals(v, ball.faces)
    seen = visible_vertices(v, ball.faces, n, 1.0, 0.05)
    towards = np.einsum("ij,ij->i", n, v / np.linalg.norm(v, axis=1, keepdims=True))
    assert seen[towards < -0.3].all() and not seen[towards > 0.0].any()
    w = fade_weights(v, seen, fade_mm=8.0)  # ~2 edges of the 642-vertex ball
    assert (w[~seen] == 0).all() and (w >= 0).all() and (w <= 1).all()
    assert (w[towards < -0.8] == 1.0).all() and w[seen].min() < 0.6  # 1 inside, a ramp at the edge


# --------------------------------------------------------------------------------------------
# atlases


def test_only_a_disk_is_a_disk():
    m = grid(5)
    assert is_disk(m.faces, len(m.vertices))
    assert not is_disk(trimesh.creation.icosphere(1).faces, 42)  # closed
    two = np.concatenate([m.faces, m.faces + len(m.vertices)])
    assert not is_disk(two, 2 * len(m.vertices))  # two pieces
    ring = m.faces[~np.isin(m.faces, [12]).any(axis=1)]  # the centre vertex's fan removed: an annulus
    assert not is_disk(ring, len(m.vertices))


def test_the_disk_atlas_is_one_unfolded_chart_upright_like_the_photo():
    """A patch seen by the camera: no folded triangle, inside the padded square, and image up (smaller
    pixel rows) is v up."""
    from fastsider.camera import project

    m = grid(9)
    px = project(CAMERA, m.vertices)
    atlas = disk_atlas(m.vertices, m.faces, px, padding=0.05)
    assert not folded(atlas.uv, atlas.faces_uv).any()
    assert atlas.uv.min() >= 0.05 - 1e-9 and atlas.uv.max() <= 0.95 + 1e-9
    assert np.corrcoef(atlas.uv[:, 1], -px[:, 1])[0, 1] > 0.99 and np.corrcoef(atlas.uv[:, 0], px[:, 0])[0, 1] > 0.99
    even = disk_atlas(m.vertices, m.faces, px, padding=0.05, slim_iterations=1)  # SLIM keeps it unfolded
    assert not folded(even.uv, even.faces_uv).any()


def test_an_atlas_with_seams_follows_the_subdivision():
    """xatlas on a sphere (seams: more UV vertices than vertices), one level: the UV faces index UV
    vertices of the same mesh vertices as the mesh faces, and each UV lies at its parents' midpoint."""
    from fastsider.export.uv import xatlas_atlas

    ball = trimesh.creation.icosphere(subdivisions=1, radius=10.0)
    atlas = xatlas_atlas(ball.vertices, ball.faces, 256, 2)
    assert len(atlas.uv) > len(ball.vertices)
    np.testing.assert_array_equal(atlas.vertex_of_uv[atlas.faces_uv], ball.faces)
    sub, sub_atlas = subdivide_with_atlas(ball.vertices, ball.faces, atlas, 1)
    np.testing.assert_array_equal(sub_atlas.vertex_of_uv[sub_atlas.faces_uv], sub.faces)
    # xatlas may mirror a chart; each of the 4 children keeps its parent's orientation
    parent = np.repeat(folded(atlas.uv, atlas.faces_uv), 4)
    np.testing.assert_array_equal(folded(sub_atlas.uv, sub_atlas.faces_uv), parent)


# --------------------------------------------------------------------------------------------
# baking


def test_rasterizing_a_triangle_covers_its_area_and_interpolates_linear_values_exactly():
    size = 64
    uv = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]])
    atlas = UVAtlas(uv, np.array([[0, 1, 2]]), np.arange(3))
    r = bake.rasterize(atlas.uv, atlas.faces_uv, size)
    assert abs(len(r.rows) - 0.5 * (0.8 * size) ** 2) < 0.8 * size * 2  # area, up to a texel along the edges
    np.testing.assert_allclose(r.bary.sum(axis=1), 1.0)
    values = np.array([[1.0], [3.0], [-2.0]])  # a linear function of (u, v)
    got = bake.interpolate(r, atlas.faces_uv, values)[:, 0]
    u, v = (r.cols + 0.5) / size, 1.0 - (r.rows + 0.5) / size
    expected = 1.0 + (u - 0.1) / 0.8 * 2.0 + (v - 0.1) / 0.8 * -3.0
    np.testing.assert_allclose(got, expected, atol=1e-9)
    img = bake.to_image(r, got[:, None], bake.fill_from(r))  # the texels outside: their nearest inside's value
    assert img.min() >= got.min() and img.max() <= got.max() and img[0, 0, 0] == img[r.rows.min(), r.cols.min(), 0]


def test_the_corrected_texels_read_back_exactly_at_the_points():
    """Random texels, 200 random points 5 texels apart at least: after exact_at a bilinear read (scipy's
    map_coordinates) gives the wanted values (to 1e-3 x the residual: the ridge), and texels away
    from every point are untouched."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    img = rng.normal(size=(256, 256))
    cells = rng.choice(50 * 50, size=200, replace=False)
    pts = np.stack([cells % 50, cells // 50], axis=1) * 5.0 + 2.0 + rng.uniform(0, 1, size=(200, 2))
    want = rng.normal(size=200)
    fixed = bake.exact_at(img, pts, want)
    np.testing.assert_allclose(map_coordinates(fixed, [pts[:, 1], pts[:, 0]], order=1), want, atol=1e-2)
    exact = bake.exact_at(img, pts, want, ridge=1e-12)
    np.testing.assert_allclose(map_coordinates(exact, [pts[:, 1], pts[:, 0]], order=1), want, atol=1e-9)
    far = np.ones_like(img, dtype=bool)
    for c, r in np.floor(pts).astype(int):
        far[r:r + 2, c:c + 2] = False
    np.testing.assert_array_equal(fixed[far], img[far])


def test_16_bit_codes_are_within_half_a_step():
    values = np.linspace(-0.8, 0.9, 1000)
    codes, lo, hi = bake.quantize_16bit(values)
    back = lo + codes / 65535.0 * (hi - lo)
    assert np.abs(back - values).max() <= (hi - lo) / 65535.0 / 2 + 1e-12
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(formats.png16_bytes(codes.reshape(20, 50))), codes.reshape(20, 50))


def test_a_flat_detail_gives_a_flat_normal_map():
    """Detailed normals equal to the base normals: every texel (0, 0, 1) in tangent space."""
    m = grid(9)
    atlas = disk_atlas(m.vertices, m.faces, m.vertices[:, :2] * [1, 1], 0.05)
    n = vertex_normals(m.vertices, m.faces)
    t, b = bake.tangent_frames(m.vertices, m.faces, atlas, n)
    np.testing.assert_allclose(np.einsum("ij,ij->i", t, n), 0.0, atol=1e-9)
    r = bake.rasterize(atlas.uv, atlas.faces_uv, 32)
    ts = bake.tangent_space_normals(r, atlas, n, t, b, n)
    np.testing.assert_allclose(ts, np.tile([0.0, 0.0, 1.0], (len(ts), 1)), atol=1e-9)


def test_obj_text_keeps_positions_apart_from_uvs():
    """Two triangles with a UV seam along their shared edge: 4 v lines, 6 vt lines, faces v/vt/vn."""
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    f = np.array([[0, 1, 2], [1, 3, 2]])
    uv = np.array([[0, 0], [0.4, 0], [0, 0.4], [0.6, 0.6], [1, 0.6], [0.6, 1.0]])
    txt = formats.obj_text(v, np.tile([0, 0, -1.0], (4, 1)), f, uv, np.array([[0, 1, 2], [3, 4, 5]]), "m.mtl")
    lines = txt.splitlines()
    assert sum(x.startswith("v ") for x in lines) == 4 and sum(x.startswith("vt ") for x in lines) == 6
    assert "f 2/4/2 4/5/4 3/6/3" in lines and "mtllib m.mtl" in lines


def test_small_pieces_of_a_marching_cubes_mesh_are_dropped():
    """An 800-face sheet, a 2-face island apart and a 2-face island touching the sheet at one vertex:
    both islands go (under 1% of the sheet), the sheet stays whole."""
    from fastsider.sdf.mesh import drop_small_pieces

    sheet = grid(21)
    v, f = np.asarray(sheet.vertices), np.asarray(sheet.faces)
    apart = np.array([[0.0, 0, 700], [1, 0, 700], [0, 1, 700], [1, 1, 700]])
    corner = v[20] + np.array([[1.0, 0, 0], [1, 1, 0], [0, 1, 0]])
    n = len(v)
    v = np.concatenate([v, apart, corner])
    f = np.concatenate([f, [[n, n + 1, n + 2], [n + 1, n + 3, n + 2]], [[20, n + 4, n + 5], [20, n + 5, n + 6]]])
    kept_v, kept_f, pieces, dropped = drop_small_pieces(v, f, 0.01)
    assert (pieces, dropped) == (3, 2) and len(kept_f) == len(sheet.faces) and len(kept_v) == len(sheet.vertices)
    assert drop_small_pieces(v, f, 0.0)[3] == 0


def test_export_keys_do_nothing_without_the_topology_outputs():
    from fastsider.config import ExportConfig, FitConfig, inert_keys

    assert "export.texture_size" in inert_keys(FitConfig(export=ExportConfig(topology=False)))
    assert not any(k.startswith("export.") for k in inert_keys(FitConfig()))
    assert "export.slim_iterations" in inert_keys(FitConfig(export=ExportConfig(uv_atlas="xatlas")))

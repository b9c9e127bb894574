"""Camera round trips, the embedded default coarse model, the user-mesh path and `fastsider coarse`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from fastsider.camera import Camera, pixel_rays, project, unproject
from fastsider.cli import main
from fastsider.config import DefaultModelConfig, FitConfig, load_config
from fastsider.face.default_model import build_default_coarse, face_mesh_triangles
from fastsider.io import square_crop_around
from fastsider.stages.prepare import working_camera


def test_project_unproject_round_trip():
    cam = Camera(640, 480, 900.0, 910.0, 321.5, 239.0)
    rng = np.random.default_rng(0)
    pts = rng.uniform([-100, -100, 500], [100, 100, 900], size=(50, 3))
    px = project(cam, pts)
    np.testing.assert_allclose(unproject(cam, px, pts[:, 2]), pts, atol=1e-9)


def test_pixel_rays_pass_through_their_pixels():
    import torch

    cam = Camera(64, 64, 100.0, 100.0, 31.5, 31.5)
    pix = torch.tensor([[0.0, 0.0], [31.5, 31.5], [63.0, 10.0]], dtype=torch.float64)
    o, d = pixel_rays(cam, pix)
    pts = (o + 700.0 * d).numpy()
    np.testing.assert_allclose(project(cam, pts), pix.numpy(), atol=1e-9)
    np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0)


def test_camera_json_round_trip_and_crop():
    cam = Camera(512, 400, 1000.0, 1000.0, 250.0, 190.0)
    again = Camera.from_json_dict(json.loads(json.dumps(cam.to_json_dict())))
    assert again.to_json_dict() == cam.to_json_dict()
    crop = square_crop_around(np.array([[100.0, 80.0], [300.0, 260.0]]), 0.25, 128)
    pts = np.array([[10.0, -20.0, 800.0], [-30.0, 15.0, 760.0]])
    # projecting with the cropped camera == projecting then cropping
    cropped = cam.transformed(crop.scale, crop.offset_x, crop.offset_y, 128, 128)
    np.testing.assert_allclose(project(cropped, pts), crop.to_crop(project(cam, pts)), atol=1e-9)
    np.testing.assert_allclose(crop.to_input(crop.to_crop(pts[:, :2])), pts[:, :2], atol=1e-9)


def test_config_presets_and_overrides(tmp_path):
    assert load_config("fast") == FitConfig()  # the defaults are the fast preset
    ref = load_config("reference", ["stage2.iterations=7", "model.backend=torch"])
    assert ref.model.geometry_mlp.network.n_neurons == 512 and ref.model.geometry_mlp.network.skip_layers == (4,)
    assert ref.stage2.iterations == 7 and ref.trace.use_occupancy_grid is False


@pytest.mark.parametrize("preset", ["fast", "reference"])
def test_every_preset_key_differs_from_the_default_and_does_something(preset):
    import tomllib

    from fastsider.config import PRESET_DIR, inert_keys, to_dict
    from fastsider.config.loading import _leaf_keys

    data = tomllib.loads((PRESET_DIR / f"{preset}.toml").read_text())
    cfg, defaults = load_config(preset), to_dict(FitConfig())
    inert = inert_keys(cfg)
    for key in _leaf_keys(data):
        default = defaults
        for part in key.split("."):
            default = default[part]
        value = data
        for part in key.split("."):
            value = value[part]
        assert value != default, f"{preset}: {key} restates the default"
        assert not any(key == p or key.startswith(p + ".") for p in inert), f"{preset}: {key} does nothing"


def test_a_key_that_does_nothing_is_refused_in_a_preset_and_warned_about_in_an_override(tmp_path, caplog):
    from fastsider.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[stage2.mlp]\nrays_per_batch = 512\n')  # the default carries the detail in a height map
    with pytest.raises(ConfigError, match="stage2.mlp.rays_per_batch does nothing in this preset"):
        load_config(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\ndetail = "mlp"\n[stage2]\nsdf_weight = 100.0\n[stage2.mlp]\nrays_per_batch = 512\n')
    assert load_config(ok).stage2.mlp.rays_per_batch == 512
    with caplog.at_level("WARNING", logger="fastsider.config"):
        cfg = load_config(None, ["model.height_map.resolution=64", "stage1.iterations=5"])
    assert cfg.stage1.iterations == 5 and "stage1.iterations does nothing here" in caplog.text
    assert "height_map.resolution" not in caplog.text  # it does something in the default path


def test_face_mesh_triangulation_is_a_clean_disk():
    tris = face_mesh_triangles()
    mesh = trimesh.Trimesh(np.random.default_rng(0).normal(size=(468, 3)), tris, process=False)
    assert mesh.euler_number == 1  # one disk: eyes and mouth closed, the face outline open
    edges = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    assert len(edges) > 0  # it has its outline boundary


def test_default_model_reprojects_onto_landmarks(example_landmarks):
    crop = square_crop_around(example_landmarks[:, :2], 0.45, 256)
    lmk = np.concatenate([crop.to_crop(example_landmarks[:, :2]), example_landmarks[:, 2:] * crop.scale], 1)
    cam = working_camera(4.0, 256)
    face = build_default_coarse(lmk, cam, DefaultModelConfig())
    err = np.linalg.norm(project(cam, face.landmarks_3d) - lmk[face.landmark_ids, :2], axis=1)
    assert err.mean() < 1.5  # smoothing moves landmark vertices by about a pixel, no more
    # metric scale: the two iris landmarks are ~63 mm apart once back-projected
    width = np.ptp(face.vertices[:, 0])
    assert 110.0 < width < 180.0, width  # an adult face is ~140 mm wide
    mesh = trimesh.Trimesh(face.vertices, face.faces, process=False)
    assert np.mean(mesh.face_normals[:, 2]) < -0.3  # normals face the camera (-z)


def test_coarse_cli_on_example(tmp_path, capsys, example_files):
    photo, lmk = example_files
    out = tmp_path / "o" / "coarse.ply"
    assert main(["coarse", str(photo), "--landmarks", str(lmk), "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert {"coarse.ply", "camera.json", "landmarks.npy", "overlay.png", "coarse_landmarks7.txt"} <= names
    assert not any(n.startswith(".fastsider-tmp") for n in names)
    cam = Camera.load(out.parent / "camera.json")
    mesh = trimesh.load(out, process=False)
    # the written camera maps the landmark vertices onto the landmarks of the *input* photo
    lm = np.load(out.parent / "landmarks.npy")
    err = np.linalg.norm(project(cam, np.asarray(mesh.vertices)[:468]) - lm[:468, :2], axis=1)
    assert err.mean() < 3.0, err.mean()  # ~1 crop px = ~2 input px at this crop scale


def test_user_mesh_path_round_trip(tmp_path, example_files):
    """Feeding `coarse`'s own mesh + camera.json back in reproduces the same crop and mesh."""
    photo, lmk = example_files
    first = tmp_path / "a"
    assert main(["coarse", str(photo), "--landmarks", str(lmk), "--out", str(first)]) == 0
    second = tmp_path / "b"
    assert main(["coarse", str(photo), "--coarse", str(first / "coarse.ply"), "--camera",
                 str(first / "camera.json"), "--out", str(second)]) == 0
    a = trimesh.load(first / "coarse.ply", process=False)
    b = trimesh.load(second / "coarse.ply", process=False)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-4)
    assert not (second / "landmarks.npy").exists()  # no detection on this path


def test_mid_surface_undoes_the_shell_offset_on_a_sphere():
    """Points on the outer sheet of a shell around a 50 mm sphere go back to radius 50 mm."""
    from fastsider.sdf.shell import to_mid_surface

    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    outer = dirs * (50.0 + 0.5)                      # shell of 1 mm: outer sheet at r + eps/2
    back = to_mid_surface(outer, dirs * 3.0, 0.5)  # normals need not be unit length
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 50.0, atol=1e-9)


def test_meshing_keeps_the_front_sheet_of_a_shell_and_the_mid_surface_is_the_plane():
    """A 1 mm shell around the plane z = 600 mm: the kept sheet is the camera-facing one (599.5 mm),
    oriented towards the camera; moved to the mid-surface it lies on the plane."""
    import torch

    from fastsider.sdf.mesh import extract_face_mesh
    from fastsider.camera import Normalization
    from fastsider.sdf.shell import to_mid_surface

    cam = Camera(64, 64, fx=320.0, fy=320.0, cx=31.5, cy=31.5)
    norm = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=40.0)
    plane_z = (600.0 - norm.centre[2]) / norm.half_size

    def shell_sdf(x):  # unit box in, unit box out
        return (x[:, 2] - plane_z).abs() - 0.5 / norm.half_size
    verts, faces = extract_face_mesh(shell_sdf, norm, None, 96, cam, np.ones((64, 64), bool),
                                     torch.device("cpu"), 1 << 16)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert len(faces) > 100
    np.testing.assert_allclose(verts[:, 2], 599.5, atol=1e-3)
    assert (mesh.face_normals[:, 2] < -0.99).all()  # towards the camera (-z)
    mid = to_mid_surface(verts, mesh.vertex_normals, 0.5)
    np.testing.assert_allclose(mid[:, 2], 600.0, atol=1e-3)


def test_meshing_a_solid_in_a_band_keeps_no_walls_at_the_band_edge():
    """A solid half-space behind the plane z = 600 mm (negative behind it, as a face's signed SDF),
    evaluated only in a band around the plane whose back edge is a staircase (an occupancy grid's
    cells): behind the plane the SDF is still negative against the positive fill outside the band,
    and the stairs' risers face the camera on one side. Those crossings are not surface; every kept
    vertex must be on the plane."""
    import torch

    from fastsider.sdf.occupancy import OccupancyGrid
    from fastsider.sdf.mesh import extract_face_mesh
    from fastsider.camera import Normalization

    cam = Camera(64, 64, fx=320.0, fy=320.0, cx=31.5, cy=31.5)
    norm = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=40.0)

    def solid_sdf(x):  # unit box; the plane through the box centre, inside = behind it (+z)
        return -x[:, 2]
    r = 32
    c = (torch.arange(r) + 0.5) / r * 2 - 1  # cell centres
    cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
    back = 0.2 + 0.15 * torch.floor((cx + 1.0) * 3.0)  # deeper by 6 mm every third of the box
    band = OccupancyGrid((cz > -0.2) & (cz < back) & (cx.abs() < 0.6) & (cy.abs() < 0.6))
    verts, faces = extract_face_mesh(solid_sdf, norm, band, 96, cam, np.ones((64, 64), bool),
                                     torch.device("cpu"), 1 << 16)
    assert len(faces) > 100
    np.testing.assert_allclose(verts[:, 2], 600.0, atol=1e-3)


@pytest.mark.parametrize("slab_points", [7 * 33 * 33, 1 << 20])  # several x-planes a slab, and all
def test_band_sampling_slab_by_slab_matches_the_sdf_at_every_lattice_point(monkeypatch, slab_points):
    """The volume is filled slab by slab along x (memory); every band sample must hold the SDF of
    its own lattice point, x index first, and everything outside the band the OUTSIDE fill."""
    import torch

    from fastsider.sdf import mesh
    from fastsider.sdf.occupancy import OccupancyGrid

    monkeypatch.setattr(mesh, "SLAB_POINTS", slab_points)
    r = 33  # 33 x-planes: the last slab is a partial one

    def sdf(x):  # no symmetry between the axes, so a transposed lattice would show
        return x[:, 0] + 10.0 * x[:, 1] + 100.0 * x[:, 2]
    c = torch.arange(8)
    band = OccupancyGrid(((c[:, None, None] + 2 * c[None, :, None] + c[None, None, :]) % 3) == 0)
    values, evaluated = mesh.sample_sdf_volume(sdf, r, band, torch.device("cpu"), chunk=100)
    axis = np.linspace(-1.0, 1.0, r)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    lattice = torch.tensor(np.stack([x, y, z], -1).reshape(-1, 3), dtype=torch.float32)
    expected_in = band.contains(lattice).numpy().reshape(r, r, r)
    assert 0.1 < expected_in.mean() < 0.9
    np.testing.assert_array_equal(evaluated, expected_in)
    np.testing.assert_allclose(values[evaluated], (x + 10.0 * y + 100.0 * z)[evaluated], atol=1e-4)
    assert (values[~evaluated] == mesh.OUTSIDE).all()


def test_a_coarse_sdf_spares_the_full_one_away_from_the_surface_and_the_mesh_is_unchanged():
    """Full SDF: a sphere with a 1 mm dimple; coarse: the plain sphere, margin 3 mm. Within the margin
    the full SDF is evaluated, beyond it the coarse sign stands: the same mesh, far fewer calls."""
    import torch

    from fastsider.sdf.occupancy import OccupancyGrid
    from fastsider.sdf.mesh import Coarse, extract_face_mesh
    from fastsider.camera import Normalization

    cam = Camera(64, 64, fx=320.0, fy=320.0, cx=31.5, cy=31.5)
    norm = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=40.0)

    def sphere(x):  # radius 24 mm
        return x.norm(dim=-1) - 0.6

    calls = {"points": 0}

    def dimpled(x):  # 1 mm deep towards the camera's side of the sphere
        calls["points"] += len(x)
        return sphere(x) + 0.025 * torch.exp(-((x[:, 0] ** 2 + x[:, 1] ** 2) / 0.02)) * (x[:, 2] < 0)

    # a band that starts away from index 0 on every axis, and chunks smaller than a slab's band
    c = (torch.arange(16) + 0.5) / 16 * 2 - 1
    cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
    band = OccupancyGrid(((cx**2 + cy**2 + cz**2).sqrt() - 0.6).abs() < 0.3)
    full = extract_face_mesh(dimpled, norm, band, 64, cam, np.ones((64, 64), bool), torch.device("cpu"), 1000)
    n_full, calls["points"] = calls["points"], 0
    spared = extract_face_mesh(dimpled, norm, band, 64, cam, np.ones((64, 64), bool), torch.device("cpu"),
                               1000, Coarse(sphere, 3.0 / norm.half_size))
    assert len(full[1]) > 500
    np.testing.assert_array_equal(spared[1], full[1])
    np.testing.assert_allclose(spared[0], full[0], atol=1e-9)
    assert calls["points"] < 0.3 * n_full  # 3 mm of a 12 mm band each side
    z_min = full[0][:, 2].min()  # the dimple is there: the front pole is 1 mm behind the sphere's
    assert 600.0 - 24.0 + 0.8 < z_min < 600.0 - 24.0 + 1.2


def test_marching_cubes_runs_on_the_band_bounding_box():
    from fastsider.sdf.mesh import evaluated_bounds

    ev = np.zeros((10, 12, 14), dtype=bool)
    assert evaluated_bounds(ev) == (slice(0, 10), slice(0, 12), slice(0, 14))  # nothing: all of it
    ev[2, 5, 13] = ev[6, 3, 7] = True
    assert evaluated_bounds(ev) == (slice(2, 7), slice(3, 6), slice(7, 14))
    ev[:] = False
    ev[9, 0, 4] = True  # one sample at the far edge: still a cube's width
    assert evaluated_bounds(ev) == (slice(8, 10), slice(0, 2), slice(4, 6))


def test_signed_target_is_the_signed_distance_to_a_camera_facing_plane():
    """target='signed': zero on the mesh, positive towards the camera, |.| the exact distance."""
    from fastsider.camera import Normalization
    from fastsider.sdf.shell import ShellSDF
    from synthetic_scenes import height_field_mesh

    mesh = height_field_mesh(100.0, 600.0, 21, bump_mm=0.0, sigma_mm=10.0)  # faces towards the camera (-z)
    norm = Normalization.around(mesh.vertices, 0.15)
    sdf = ShellSDF(mesh.vertices, mesh.faces, 1.0, norm, target="signed")
    z_mm = np.array([590.0, 599.0, 600.0, 603.0])
    pts = norm.to_unit(np.stack([np.zeros(4), np.full(4, 10.0), z_mm], 1))
    np.testing.assert_allclose(sdf.sdf(pts) * norm.half_size, 600.0 - z_mm, atol=1e-9)
    assert sdf.surface_offset_mm == 0.0
    shell = ShellSDF(mesh.vertices, mesh.faces, 1.0, norm, target="shell")
    np.testing.assert_allclose(shell.sdf(pts) * norm.half_size, np.abs(600.0 - z_mm) - 0.5, atol=1e-9)
    assert shell.surface_offset_mm == pytest.approx(0.5)

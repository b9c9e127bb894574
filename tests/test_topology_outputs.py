"""The topology outputs (fastsider.stages.topology) written for a sphere cap under an analytic
sphere + height-map model: the detailed mesh rebuilt from coarse.obj + the displacement map
within 0.01 mm, its vertices on the zero set, the OBJ and glb loading with UVs and textures; and
one tiny end-to-end fit writing them, one piece, with stage times that add up."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import map_coordinates
from synthetic_scenes import CAMERA, NORM
from test_export import sphere_with_height_map

from fastsider.config import ExportConfig
from fastsider.face.types import CoarseFace
from fastsider.io import OutputStage

CAP_CENTRE, CAP_RADIUS = np.array([0.0, 0.0, 600.0]), 30.0  # the model's sphere (test_export)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(v [n, 3], vt [m, 2], face v indices [k, 3], face vt indices [k, 3]) of an OBJ, as written."""
    v, vt, fv, ft = [], [], [], []
    for line in path.read_text().splitlines():
        tag, *rest = line.split() or [""]
        if tag == "v":
            v.append([float(x) for x in rest])
        elif tag == "vt":
            vt.append([float(x) for x in rest])
        elif tag == "f":
            corners = [c.split("/") for c in rest]
            fv.append([int(c[0]) - 1 for c in corners])
            ft.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners])
    return np.array(v), np.array(vt), np.array(fv), np.array(ft)


def area_weighted_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """docs/outputs.md's rule, written out again here: normalize(sum of the faces' (b - a) x (c - a))."""
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], cross)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def rebuild(d: Path, stem: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """The detailed mesh from coarse.obj, the displacement map + its json and the UVs of ``stem``.obj:
    the coarse mesh subdivided by the parents in the topology file (checked against trimesh's
    subdivision), each vertex moved along the area-weighted normal by the map read bilinearly at its UV.
    Returns (rebuilt vertices, written vertices)."""
    coarse_v, _, coarse_f, _ = read_obj(d / "coarse.obj")
    v, vt, fv, ft = read_obj(d / f"{stem}.obj")
    topo = np.load(d / f"{stem}_topology.npz")
    base = np.concatenate([coarse_v, np.zeros((len(topo["parents"]), 3))])
    for i, (a, b) in enumerate(topo["parents"]):  # parents are always earlier vertices
        base[len(coarse_v) + i] = (base[a] + base[b]) / 2.0
    sv, sf = coarse_v, coarse_f
    for _ in range(int(topo["levels"])):
        sv, sf = trimesh.remesh.subdivide(sv, sf)
    assert {tuple(x) for x in np.round(sv, 6)} == {tuple(x) for x in np.round(base, 6)}
    normals = area_weighted_normals(base, fv)
    meta = json.loads((d / f"{stem}_displacement.json").read_text())
    codes = iio.imread(d / f"{stem}_displacement.png").astype(np.float64)
    disp = meta["min_mm"] + codes / 65535.0 * (meta["max_mm"] - meta["min_mm"])
    uv_of_v = np.zeros((len(v), 2))
    uv_of_v[fv.ravel()] = vt[ft.ravel()]
    s = codes.shape[0]
    d_mm = map_coordinates(disp, [(1.0 - uv_of_v[:, 1]) * s - 0.5, uv_of_v[:, 0] * s - 0.5], order=1)
    return base + d_mm[:, None] * normals, v


def sphere_cap(n: int = 17, half_mm: float = 20.0) -> CoarseFace:
    """The front of the model's sphere as a grid patch (a disk), normals towards the camera."""
    xs = np.linspace(-half_mm, half_mm, n)
    x, y = np.meshgrid(xs, xs)
    z = CAP_CENTRE[2] - np.sqrt(CAP_RADIUS**2 - x**2 - y**2)
    v = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    f = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)])
    assert trimesh.Trimesh(v, f, process=False).face_normals[:, 2].mean() < 0
    return CoarseFace(v, f, CAMERA, np.zeros((0, 3)), np.zeros(0, dtype=int), "default")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """write_topology_outputs for the sphere cap under sphere - h, 256-texel maps."""
    from fastsider.stages.topology import detailed_topology, write_topology_outputs

    model, _ = sphere_with_height_map(0.5)
    coarse = sphere_cap()
    yy, xx = np.mgrid[0:64, 0:64]
    photo = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    st = SimpleNamespace(prep=SimpleNamespace(coarse=coarse, photo=photo, camera=CAMERA, image=photo / 255.0),
                         model=model, norm=NORM,
                         device=torch.device("cpu"), shell=SimpleNamespace(surface_offset_mm=0.0),
                         mm_per_px=600.0 / CAMERA.fx)
    d = tmp_path_factory.mktemp("topology")
    with OutputStage(d) as out:
        cfg = ExportConfig(texture_size=256)
        stats, _ = write_topology_outputs(out, st, cfg, detailed_topology(st, cfg, with_atlas=True), "mesh")
        out.commit()
    return d, stats, model, coarse


def test_the_written_files(written):
    d, stats, _, _ = written
    for name in ("mesh.obj", "mesh.mtl", "mesh.glb", "coarse.obj", "coarse.mtl", "mesh_color.png", "mesh_normal.png",
                 "mesh_displacement.png", "mesh_displacement.json", "mesh_topology.npz", "viewer.html"):
        assert (d / name).is_file(), name
    # 5 mm coarse edges, 1.9 mm crop pixels: one level
    assert stats["subdivision_levels"] == 1 and stats["vertices"] == 17**2 + 2 * 16 * 17 + 16**2
    assert stats["uv_atlas"] == "disk" and stats["uv_folded_faces"] == 0 and stats["coarse_vertices"] == 17**2


def test_the_mesh_is_rebuilt_from_the_coarse_mesh_and_the_displacement_map(written):
    """coarse.obj + mesh_displacement.png/.json + the UVs: every vertex within 0.01 mm of mesh.obj's."""
    d = written[0]
    rebuilt, v = rebuild(d)
    err = np.linalg.norm(rebuilt - v, axis=1)
    assert err.max() < 0.01, err.max()
    assert np.abs(np.load(d / "mesh_topology.npz")["displacement_mm"]).max() > 0.2  # there is detail to rebuild


def test_the_seen_vertices_lie_on_the_zero_set_and_the_first_ones_are_the_coarse_ones(written):
    from fastsider.stages.topology import model_sdf_mm

    d, _, model, coarse = written
    v, _, fv, _ = read_obj(d / "mesh.obj")
    topo = np.load(d / "mesh_topology.npz")
    f, _ = model_sdf_mm(model, NORM, torch.device("cpu"))(v)
    on = topo["weight"] >= 1.0 - 1e-6  # float32 in the file
    assert on.mean() > 0.5 and np.abs(f[on]).max() < 0.01
    moved = np.linalg.norm(v[: len(coarse.vertices)] - coarse.vertices, axis=1)
    # vertex i is coarse vertex i, moved along its normal by about |h| <= 0.5 mm (the grid's normals are
    # not quite radial: a few hundredths more)
    assert moved.max() < 0.55
    assert len(trimesh.Trimesh(v, fv, process=False).split(only_watertight=False)) == 1


def test_the_glb_and_the_objs_load_with_uvs_and_textures(written):
    d = written[0]
    scene = trimesh.load(d / "mesh.glb")
    (mesh,) = scene.geometry.values()
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert mesh.visual.material.baseColorTexture.size == (256, 256)
    assert scene.camera is not None  # the photo's camera
    obj = trimesh.load(d / "mesh.obj", force="mesh")
    assert obj.visual.uv is not None and obj.visual.material.image.size == (256, 256)
    assert "map_Bump" in (d / "coarse.mtl").read_text() and "disp mesh_displacement.png" in (d / "coarse.mtl").read_text()
    coarse = trimesh.load(d / "coarse.obj", force="mesh")
    assert coarse.visual.uv is not None
    normal = iio.imread(d / "mesh_normal.png").astype(float) / 255.0 * 2.0 - 1.0
    assert np.median(normal[..., 2]) > 0.9  # tangent space: mostly along the base normal


@pytest.mark.slow
def test_a_tiny_fit_writes_the_topology_mesh_in_one_piece(tmp_path, example_files):
    """The whole job on the example (tiny config): the topology outputs beside mesh.ply, one connected
    piece, rebuilt from the map within 0.01 mm, mesh.ply the same surface; summary.json's stage times
    add up to the total."""
    from fit_helpers import fit_argv

    from fastsider.cli import main

    photo, lmk = example_files
    out = tmp_path / "run"
    assert main(fit_argv(photo, lmk, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    seconds = summary["seconds"]
    parts = sum(v for k, v in seconds.items() if k != "total")
    assert parts == pytest.approx(seconds["total"], abs=1e-6)
    topo = summary["outputs"]["topology"]
    assert topo["vertices"] >= summary["outputs"]["coarse_vertices"] and topo["uv_atlas"] == "disk"
    v, _, fv, _ = read_obj(out / "mesh.obj")
    assert len(trimesh.Trimesh(v, fv, process=False).split(only_watertight=False)) == 1
    rebuilt, written_v = rebuild(out)
    assert np.linalg.norm(rebuilt - written_v, axis=1).max() < 0.01
    assert summary["outputs"]["mesh_method"] == "topology"
    ply = trimesh.load(out / "mesh.ply", process=False)  # the same mesh (OBJ's 5 decimals)
    assert ply.vertices.shape == written_v.shape and np.abs(ply.vertices - written_v).max() < 1e-4

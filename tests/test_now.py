"""The NoW protocol on a synthetic head: a known similarity transform and a known 0.5 mm offset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from fastsider.errors import InputError
from fastsider.eval.metrics import ErrorStats
from fastsider.eval.now import crop_ball, evaluate_now, evaluate_pair, read_pp, run_now_cli
from fastsider.io import save_mesh

SUBJECT = "FaMoS_180424_03335_TA"
OFFSET_MM = 0.5
PATCH_CENTRE_XY = np.array([45.0, -20.0])  # a cheek, away from all 7 landmarks
PATCH_RADIUS = 12.0  # 3 % of the cropped scan
# NoW order: outer/inner right eye, inner/outer left eye, subnasale, mouth corners (x, y in mm)
LANDMARK_XY = np.array([[-45, 30], [-15, 30], [15, 30], [45, 30], [0, -12], [-25, -35], [25, -35]], dtype=float)


@pytest.fixture(scope="module")
def head():
    """An ellipsoidal head (mm; y up, z towards the camera) with a nose bump, and its 7 landmarks."""
    s = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    v = s.vertices * np.array([70.0, 95.0, 80.0])
    front = v[:, 2] > 0
    bump = 22.0 * np.exp(-(v[:, 0] ** 2 + (v[:, 1] + 2.0) ** 2) / (2 * 11.0**2))
    v[front, 2] += bump[front]
    mesh = trimesh.Trimesh(v, s.faces, process=False)
    cand = np.flatnonzero(v[:, 2] > 20)
    lm_idx = [cand[np.argmin(np.linalg.norm(v[cand, :2] - xy, axis=1))] for xy in LANDMARK_XY]
    return mesh, v[lm_idx].copy()


def known_transform():
    """scan -> prediction frame: scale 1.15, a 3-axis rotation, a translation (mm)."""
    rot = Rotation.from_euler("xyz", [12.0, -25.0, 8.0], degrees=True).as_matrix()
    return 1.15, rot, np.array([14.0, -250.0, 610.0])


def to_pred(points, transform):
    s, r, t = transform
    return s * points @ r.T + t


def offset_patch(mesh) -> tuple[np.ndarray, np.ndarray]:
    """Vertices with the cheek patch pushed out 0.5 mm along the normals, and the patch mask."""
    v = np.asarray(mesh.vertices)
    patch = (v[:, 2] > 0) & (np.linalg.norm(v[:, :2] - PATCH_CENTRE_XY, axis=1) < PATCH_RADIUS)
    return v + OFFSET_MM * patch[:, None] * mesh.vertex_normals, patch


def rotation_error_deg(r_est, r_true_inv):
    return math.degrees(Rotation.from_matrix(r_est @ np.linalg.inv(r_true_inv)).magnitude())


def check_alignment(alignment, transform, points):
    """Rotation error (deg) and worst point error (mm) of alignment o transform against identity."""
    s, r, t = transform
    rot_err = rotation_error_deg(alignment.rotation, r.T)
    pt_err = np.max(np.linalg.norm(alignment.apply(to_pred(points, transform)) - points, axis=1))
    return rot_err, pt_err, alignment.scale * s


def test_crop_ball_matches_official_formula(head):
    _, lm = head
    centre, radius = crop_ball(lm)
    eyes = (lm[1] + lm[2]) / 2
    np.testing.assert_allclose(centre, lm[4] + 0.3 * (eyes - lm[4]))
    assert radius == pytest.approx(1.4 * (np.linalg.norm(lm[0] - lm[3]) + np.linalg.norm(eyes - lm[4])) / 2)


def test_refinement_recovers_transform_from_noisy_landmarks(head):
    mesh, lm = head
    tf = known_transform()
    noisy = lm + np.random.default_rng(0).normal(0, 3.0, lm.shape)  # badly clicked landmarks
    args = (mesh.vertices, lm, to_pred(mesh.vertices, tf), mesh.faces, to_pred(noisy, tf))
    coarse = evaluate_pair(*args, refine=False)
    fine = evaluate_pair(*args)
    rot_c, pt_c, _ = check_alignment(coarse.alignment, tf, lm)
    rot_f, pt_f, scale_f = check_alignment(fine.alignment, tf, lm)
    assert pt_c > 1.0  # the landmark fit alone is visibly off, so the refinement has work to do
    assert fine.refine_steps > 0
    assert rot_f < 0.5 and pt_f < 0.1 and scale_f == pytest.approx(1.0, abs=1e-3)
    assert np.median(fine.distances) < 0.01 < np.median(coarse.distances)


def test_distances_match_known_offset(head):
    mesh, lm = head
    tf = known_transform()
    pred_v, patch = offset_patch(mesh)
    v = np.asarray(mesh.vertices)
    centre, radius = crop_ball(lm)
    crop = np.linalg.norm(v - centre, axis=1) <= radius
    d_patch = np.linalg.norm(v[crop, :2] - PATCH_CENTRE_XY, axis=1)
    # 6 mm > one edge (~4 mm): the 1-ring of an inside vertex is all offset, of an outside one none
    inside, outside = (d_patch < PATCH_RADIUS - 6) & (v[crop, 2] > 0), d_patch > PATCH_RADIUS + 6
    args = (v, lm, to_pred(pred_v, tf), mesh.faces, to_pred(lm, tf))
    exact = evaluate_pair(*args, refine=False)  # exact landmarks: the landmark fit is already exact
    assert len(exact.distances) == crop.sum()
    np.testing.assert_allclose(exact.distances[inside], OFFSET_MM, atol=0.01)  # chord sag on ~80 mm radius
    assert np.max(exact.distances[outside]) < 1e-6
    full = evaluate_pair(*args)
    rot, pt, scale = check_alignment(full.alignment, tf, lm)
    # the protocol's least-squares refinement may trade a little of the patch error for a small
    # shift of the whole face (~0.04 mm here, 3 % of the points being off by 0.5 mm)
    assert rot < 0.5 and pt < 0.15 and scale == pytest.approx(1.0, abs=1e-3)
    assert abs(np.median(full.distances[inside]) - OFFSET_MM) < 0.08
    assert np.median(full.distances[outside]) < 0.04


def test_metrical_mode_does_not_fit_scale(head):
    mesh, lm = head
    tf = known_transform()
    args = (mesh.vertices, lm, to_pred(mesh.vertices, tf), mesh.faces, to_pred(lm, tf))
    assert np.median(evaluate_pair(*args).distances) < 0.01
    metrical = evaluate_pair(*args, metrical=True)
    assert metrical.alignment.scale == 1.0
    assert np.median(metrical.distances) > 1.0  # a 15 % too large face cannot fit without scale
    unscaled = (1.0, tf[1], tf[2])
    args1 = (mesh.vertices, lm, to_pred(mesh.vertices, unscaled), mesh.faces, to_pred(lm, unscaled))
    assert np.median(evaluate_pair(*args1, metrical=True).distances) < 0.01


def write_pp(path: Path, points: np.ndarray) -> None:
    """MeshLab picked points, laid out like the NoW files: 8 header lines, then one <point> per line."""
    lines = [
        "<!DOCTYPE PickedPoints>",
        "<PickedPoints>",
        " <DocumentData>",
        '  <DateTime time="12:00:00" date="2018-04-24"/>',
        '  <User name="annotator"/>',
        '  <DataFileName name="natural_head_rotation.000001.obj"/>',
        '  <templateName name=""/>',
        " </DocumentData>",
    ]
    lines += [f' <point x="{x:.6f}" y="{y:.6f}" z="{z:.6f}" active="1" name="{i + 1}"/>'
              for i, (x, y, z) in enumerate(points)]
    lines.append("</PickedPoints>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def now_tree(tmp_path, head):
    """A NoW root with one subject and 3 listed images; predictions for 2 of them (both layouts)."""
    mesh, lm = head
    root, preds = tmp_path / "now", tmp_path / "preds"
    (root / "scans" / SUBJECT).mkdir(parents=True)
    save_mesh(root / "scans" / SUBJECT / "natural_head_rotation.000001.obj", mesh.vertices, mesh.faces)
    write_pp(root / "scans_lmks_onlypp" / SUBJECT / "natural_head_rotation.000001_picked_points.pp", lm)
    images = [f"{SUBJECT}/multiview_neutral/IMG_0001.jpg", f"{SUBJECT}/selfie/IMG_0002.jpg",
              f"{SUBJECT}/multiview_expressions/IMG_0003.jpg"]
    (root / "imagepathsvalidation.txt").write_text("\n".join(images) + "\n")
    tf = known_transform()
    official = preds / SUBJECT / "multiview_neutral"  # official layout: IMG_0001.obj + IMG_0001.npy
    official.mkdir(parents=True)
    save_mesh(official / "IMG_0001.obj", to_pred(mesh.vertices, tf), mesh.faces)
    np.save(official / "IMG_0001.npy", to_pred(lm, tf)[None])  # [1, 7, 3] is accepted officially
    ours = preds / SUBJECT / "selfie" / "IMG_0002"  # fastsider layout: a folder per image
    ours.mkdir(parents=True)
    pred_v, _ = offset_patch(mesh)
    save_mesh(ours / "mesh.ply", to_pred(pred_v, tf), mesh.faces)
    np.savetxt(ours / "landmarks7.txt", to_pred(lm, tf), fmt="%.4f")
    return root, preds, images


def test_evaluate_now_end_to_end(now_tree, tmp_path, head):
    root, preds, images = now_tree
    _, lm = head
    pp = root / "scans_lmks_onlypp" / SUBJECT / "natural_head_rotation.000001_picked_points.pp"
    np.testing.assert_allclose(read_pp(pp), lm, atol=1e-6)
    out = tmp_path / "report"
    res = evaluate_now(preds, root, split="val", out_dir=out)
    assert [r.image for r in res.images] == images[:2]
    assert res.missing == [images[2]]
    exact, offset = res.images
    assert exact.stats.median < 0.01 and exact.stats.max < 0.05
    assert offset.stats.max > 0.4  # the patch shows up
    for r in res.images:
        rot, pt, scale = check_alignment(r.alignment, known_transform(), lm)
        assert rot < 0.5 and pt < 0.2 and scale == pytest.approx(1.0, abs=2e-3)
    pooled = ErrorStats.from_errors(np.concatenate([exact.distances, offset.distances]))
    assert res.overall == pooled
    assert res.challenges() == ["multiview_neutral", "selfie"]
    np.testing.assert_array_equal(res.distances("selfie"), offset.distances)
    report = json.loads((out / "now_results.json").read_text())
    assert report["n_missing"] == 1 and report["n_evaluated"] == 2 and report["missing"] == [images[2]]
    assert report["overall"]["median"] == pytest.approx(pooled.median)
    table = (out / "now_table.md").read_text()
    assert f"{pooled.median:.3f}" in table and "missing predictions: 1 of 3" in table
    assert (out / "now_cumulative_error.png").stat().st_size > 1000


def test_run_now_cli_summary(now_tree, tmp_path):
    root, preds, _ = now_tree
    summary = run_now_cli(preds, root, "val", tmp_path / "cli")
    assert summary["n_images"] == 3 and summary["n_evaluated"] == 2 and summary["n_missing"] == 1
    assert all(Path(p).is_file() for p in summary["outputs"])


def test_bad_inputs_raise_input_error(now_tree, tmp_path):
    root, preds, _ = now_tree
    with pytest.raises(InputError, match="NoW root folder not found"):
        evaluate_now(preds, tmp_path / "nowhere")
    with pytest.raises(InputError, match="image list not found"):
        evaluate_now(preds, root, split="test")
    with pytest.raises(InputError, match="unknown NoW split"):
        evaluate_now(preds, root, split="train")
    pp = root / "scans_lmks_onlypp" / SUBJECT / "natural_head_rotation.000001_picked_points.pp"
    pp.write_text("<PickedPoints><point x='1' y='2'")  # truncated XML
    with pytest.raises(InputError, match="cannot read landmark file"):
        evaluate_now(preds, root)
    write_pp(pp, np.zeros((5, 3)))
    with pytest.raises(InputError, match="has 5 points"):
        evaluate_now(preds, root)


def test_fastsider_eval_now_command(now_tree, tmp_path, capsys):
    from fastsider.cli import main

    root, preds, _ = now_tree
    assert main(["eval", "now", "--predictions", str(preds), "--now-root", str(root), "--out",
                 str(tmp_path / "cmd")]) == 0
    assert (tmp_path / "cmd" / "now_table.md").is_file()
    assert main(["eval", "now", "--predictions", str(preds), "--now-root", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NoW root folder not found" in err[0]
    assert not (tmp_path / "bad" / "now_table.md").exists()

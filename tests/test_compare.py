"""tools/compare_to_reference.py and fastsider.eval.compare: metrics on known surfaces, the speed
table from given summaries, the budget overrides, bad input, and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from fastsider.camera import Camera
from fastsider.config import load_config
from fastsider.eval.compare import TIME_BUDGET_ITERATIONS, CompareRequest, parse_progress, preset_overrides
from fastsider.eval.compare_metrics import FAST, REFERENCE, mesh_distance, preset_speed, quality, speedups
from fastsider.eval.compare_report import speed_rows
from fit_helpers import TINY_FIT, set_flags

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "compare_to_reference.py"
# a subdivision-4 icosphere of radius 50 mm sags at most ~0.05 mm between its vertices, so distances
# between two of them (and from sampled points to them) are exact to that
FACET_SAG_MM = 0.1


def sphere(radius: float, centre=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return trimesh.Trimesh(s.vertices + np.asarray(centre), s.faces, process=False)


def test_concentric_spheres_are_their_radius_difference_apart():
    d = mesh_distance(sphere(50.0), sphere(52.0), n_samples=20_000)
    assert abs(d["chamfer_mm"] - 2.0) < FACET_SAG_MM
    for key in ("chamfer_a_to_b_mm", "chamfer_b_to_a_mm", "scan_to_mesh_mm"):
        assert abs(d[key]["median"] - 2.0) < FACET_SAG_MM, key
        assert d[key]["max"] < 2.0 + FACET_SAG_MM, key
    assert d["normal_deg"]["max"] < 1.0  # same tessellation, scaled: parallel faces


def test_a_mesh_is_zero_from_itself():
    s = sphere(50.0)
    d = mesh_distance(s, s, n_samples=5_000)
    assert d["chamfer_mm"] < 1e-6 and d["scan_to_mesh_mm"]["max"] < 1e-6 and d["normal_deg"]["max"] < 1e-3


def test_quality_counts_only_the_face_region():
    """A sphere in front of the camera whose hidden back half is pushed out 5 mm: over the visible
    region it equals the reference; its 1 mm larger twin is 1 mm off there; GT errors follow."""
    centre = np.array([0.0, 0.0, 300.0])
    cam = Camera(width=256, height=256, fx=400.0, fy=400.0, cx=127.5, cy=127.5)
    ref = sphere(50.0, centre)
    back = sphere(50.0, centre)
    v = np.asarray(back.vertices).copy()
    hidden = v[:, 2] > centre[2]
    v[hidden] = centre + (v[hidden] - centre) * 55.0 / 50.0
    back = trimesh.Trimesh(v, back.faces, process=False)
    whole = mesh_distance(back, ref, n_samples=20_000)
    assert whole["chamfer_mm"] > 1.0  # without the region the hidden half counts

    q = quality({"coarse": ref, FAST: back, REFERENCE: ref}, cam, None, None)
    assert q["fast_vs_reference"]["chamfer_mm"] < 0.01
    assert q["fast_vs_reference"]["scan_to_mesh_mm"]["max"] < 0.01
    assert q["to_gt"] is None

    q = quality({"coarse": ref, FAST: sphere(51.0, centre), REFERENCE: ref}, cam, ref, None)
    assert abs(q["fast_vs_reference"]["chamfer_mm"] - 1.0) < FACET_SAG_MM
    assert abs(q["from_coarse"][FAST]["median"] - 1.0) < FACET_SAG_MM
    assert q["from_coarse"][REFERENCE]["max"] < 1e-6
    assert abs(q["to_gt"][FAST]["scan_to_mesh"]["mean"] - 1.0) < FACET_SAG_MM
    assert q["to_gt"][REFERENCE]["scan_to_mesh"]["max"] < 1e-6
    n_front = q["fast_vs_reference"]["scan_to_mesh_mm"]["count"]
    assert 0 < n_front < len(sphere(51.0).vertices) / 2  # the front half, eroded


def summary(s1: tuple[float, int], s2: tuple[float, int], total: float, rays: int = 2048, face_rays: int = 10_000,
            rss: float = 500.0) -> dict:
    """The parts of a fit's summary.json that the speed table reads: (seconds, iterations) per stage."""
    return {"seconds": {"stage1": s1[0], "stage2": s2[0], "total": total},
            "stage1": {"seconds": s1[0], "iterations": s1[1]},
            "stage2": {"seconds": s2[0], "iterations": s2[1], "psnr": 25.0},
            "config": {"model": {"detail": "mlp"}, "stage2": {"mlp": {"rays_per_batch": rays}}}, "face_rays": face_rays,
            "peak_memory_mb": {"rss": rss}, "device": "cpu",
            "implementation": {"networks": "torch", "normals": "autograd", "occupancy_grid": "torch"}}


def test_speed_ratios_from_two_summaries():
    fast = preset_speed(summary((10.0, 100), (30.0, 30), 50.0))
    ref = preset_speed(summary((150.0, 100), (240.0, 30), 420.0, rss=3000.0))
    assert fast["stage2"]["rays_per_s"] == pytest.approx(30 * 2048 / 30.0)
    assert fast["stage1"]["iterations_per_s"] == pytest.approx(10.0)
    r = speedups(fast, ref)
    assert r["stage1_per_iteration"] == pytest.approx(15.0)
    assert r["stage2_per_iteration"] == pytest.approx(8.0)
    assert r["stages_wall"] == pytest.approx(390.0 / 40.0)
    assert r["total_wall"] == pytest.approx(8.4)
    rows = {row[0]: row[1:] for row in speed_rows(fast, ref)}
    assert rows["stage 2 s / iteration"] == pytest.approx([1.0, 8.0, 8.0])
    assert rows["stage 2 rays / s"][2] == pytest.approx(8.0)   # throughput: fast / reference
    assert rows["peak RSS MB"][2] == pytest.approx(6.0)


def test_speed_ratios_under_a_time_budget_and_degenerate_stages():
    """Same time, different counts: the per-iteration ratio still compares like with like."""
    fast = preset_speed(summary((10.0, 100), (20.0, 40), 40.0, rays=2048, face_rays=1000))
    ref = preset_speed(summary((10.5, 7), (21.0, 3), 60.0))
    assert fast["stage2"]["rays_per_batch"] == 1000  # a batch is never larger than the face
    r = speedups(fast, ref)
    assert r["stage1_per_iteration"] == pytest.approx((10.5 / 7) / (10.0 / 100))
    assert r["stage2_per_iteration"] == pytest.approx((21.0 / 3) / (20.0 / 40))
    empty = preset_speed(summary((0.0, 0), (0.0, 0), 1.0))
    assert empty["stage1"]["seconds_per_iteration"] is None
    assert speedups(empty, ref)["stage1_per_iteration"] is None


def test_budget_overrides_win_and_meshes_match(tmp_path):
    req = CompareRequest(image=None, out=tmp_path, stage1_iterations=7, stage2_iterations=3,
                         overrides=("stage1.iterations=999",))
    for preset in (FAST, REFERENCE):
        cfg = load_config(preset, preset_overrides(req, preset))
        assert (cfg.stage1.iterations, cfg.stage2.iterations) == (7, 3)
        assert cfg.mesh.method == load_config(FAST).mesh.method  # the reference's own is marching cubes
        assert cfg.stage2.snapshot_every == 0
    own = CompareRequest(image=None, out=tmp_path, overrides=("mesh.method=marching_cubes", "mesh.resolution=64"))
    assert load_config(FAST, preset_overrides(own, FAST)).mesh.resolution == 64
    cubes = CompareRequest(image=None, out=tmp_path, overrides=("mesh.method=marching_cubes",))
    assert load_config(REFERENCE, preset_overrides(cubes, REFERENCE)).mesh.resolution == load_config(FAST).mesh.resolution

    timed = CompareRequest(image=None, out=tmp_path, budget="time")
    assert load_config(FAST, preset_overrides(timed, FAST)).stage1.iterations == load_config(FAST).stage1.iterations
    fast_summary = {"seconds": {"stage1": 12.5, "stage2": 0.0}}
    cfg = load_config(REFERENCE, preset_overrides(timed, REFERENCE, fast_summary))
    assert cfg.stage1.max_seconds == pytest.approx(12.5) and cfg.stage2.max_seconds > 0  # 0 would mean "none"
    assert cfg.stage1.iterations == cfg.stage2.iterations == TIME_BUDGET_ITERATIONS
    # a fast run without stage-1 steps: the reference gets the same total, half per stage
    cfg = load_config(REFERENCE, preset_overrides(timed, REFERENCE, {"seconds": {"stage1": 0.0, "stage2": 30.0}}))
    assert cfg.stage1.max_seconds == pytest.approx(15.0) and cfg.stage2.max_seconds == pytest.approx(15.0)


def test_progress_lines_of_the_fit_are_parsed():
    assert parse_progress("\x1b[2Kstage 2 (details)    ━━━━━━      10/30   0:01:20 loss 0.3 psnr 20") == \
        ("stage 2", 10, 30)
    assert parse_progress("stage 1 (coarse SDF) ━━━━ 400/400 0:00:04 loss 0.0004952  sdf_mm 0.4763") == \
        ("stage 1", 400, 400)
    assert parse_progress("[11/24/26 16:55:01] INFO     networks: torch implementation on cpu") is None


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_to_reference", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_error_line(err: str, expect: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("compare_to_reference: error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err


def test_bad_input_is_one_line(tmp_path, capsys, example_files):
    tool = load_tool()
    assert tool.main([str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "r")]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "not found")
    bad_gt = tmp_path / "gt.ply"
    bad_gt.write_text("not a mesh")
    photo, _ = example_files
    assert tool.main([str(photo), "--gt", str(bad_gt), "--out", str(tmp_path / "r")]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "gt.ply")
    assert not (tmp_path / "r").exists()


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    # one thread per fit: the test's timings do not matter, and on a CPU shared with other jobs
    # torch's threads can spend most of a step waiting for each other (80x slower seen)
    return subprocess.run([sys.executable, str(TOOL), *argv, "--threads", "1"], cwd=ROOT, capture_output=True,
                          text=True)


SMOKE = (*TINY_FIT, "stage1.batch_points=1024", "model.geometry_mlp.network.n_neurons=64",
         "model.rendering_mlp.network.n_neurons=64", "trace.max_steps=32")


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory, example_files):
    """One tiny run of the whole tool on the example: coarse fit, both presets, report."""
    photo, landmarks = example_files
    out = tmp_path_factory.mktemp("compare") / "report"
    argv = [str(photo), "--landmarks", str(landmarks), "--out", str(out), "--budget", "iterations",
            "--stage1-iterations", "20", "--stage2-iterations", "2", "--seed", "1", *set_flags(*SMOKE)]
    proc = run_tool(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return out, proc


@pytest.mark.slow  # the whole tool: coarse fit, both presets, report
def test_tool_end_to_end(smoke_report):
    out, proc = smoke_report
    for name in ("report.md", "report.json", "comparison.png", "fast/mesh.ply", "reference/mesh.ply",
                 "coarse/coarse.ply"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    # the fast preset has no stage-1 steps (coarse SDF on a lattice); the reference fits its MLP
    for preset, stage1_steps in ((FAST, 0), (REFERENCE, 20)):
        p = data["presets"][preset]
        assert (p["stage1"]["iterations"], p["stage2"]["iterations"]) == (stage1_steps, 2)
        assert (p["stage1"]["seconds"] > 0) == (stage1_steps > 0)
        assert p["stage2"]["seconds"] > 0 and p["total_seconds"] > 0
        assert p["stage2"]["rays_per_s"] > 0 and p["peak_rss_mb"] > 0
    assert math.isfinite(data["quality"]["fast_vs_reference"]["chamfer_mm"])
    assert data["quality"]["fast_vs_reference"]["scan_to_mesh_mm"]["count"] > 0
    for key in ("stage2_per_iteration", "total_wall"):
        assert data["speedup"][key] > 0, key
    assert data["speedup"]["stage1_per_iteration"] is None
    assert data["threads"] == 1 and "without stage-1 steps" in (out / "report.md").read_text()
    assert "fastsider vs reference: speed" in proc.stderr  # the terminal table


@pytest.mark.slow  # the tool again, up to the reference's fit
def test_failing_fit_is_named_in_one_line(smoke_report, tmp_path):
    """A fit that fails (an explicit tcnn backend on a CPU: the reference's MLPs; the fast preset has
    none and only warns) stops the tool with the preset and the reason."""
    out, _ = smoke_report
    proc = run_tool("--example", "--coarse", str(out / "coarse" / "coarse.ply"), "--camera",
                    str(out / "coarse" / "camera.json"), "--out", str(tmp_path / "r"), "--set", "model.backend=tcnn",
                    "--device", "cpu",
                    "--stage1-iterations", "1", "--stage2-iterations", "1")
    assert proc.returncode == 2
    one_error_line(proc.stderr, "reference failed: fastsider: error: backend 'tcnn'")
    assert not (tmp_path / "r" / "report.json").exists()

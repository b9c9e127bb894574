"""tools/profile_fit.py and fastsider.eval.speed: the figures, their spread and the reference ratio
from made-up summaries, the written report, bad input, and one tiny end-to-end run on the example."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from fit_helpers import TINY_FIT, set_flags

from fastsider.eval.compare import ChildRun
from fastsider.eval.speed import (
    SpeedRequest,
    input_data,
    reference_figures,
    reference_overrides,
    report_markdown,
    run_figures,
    spread,
    write_speed_report,
)
from fastsider.io import OutputStage

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "profile_fit.py"


def summary(stage2_seconds: float, stage2_steps: int = 100, total: float = 10.0, rss: float = 500.0,
            stage1_steps: int = 0) -> dict:
    """The parts of a fit's summary.json the speed report reads."""
    return {"seconds": {"prepare": 1.0, "setup": 0.5, "stage1": 0.25, "stage2": stage2_seconds + 0.1,
                        "outputs": 2.0, "total": total},
            "seconds_parts": {"prepare": {"landmarks": 0.4, "coarse_fit": 0.6}, "outputs": {"mesh": 1.5}},
            "stage1": {"seconds": 0.2 * stage1_steps, "iterations": stage1_steps},
            "stage2": {"seconds": stage2_seconds, "iterations": stage2_steps, "psnr": 30.0},
            "config": {"model": {"detail": "height_map"}, "stage2": {"mlp": {"rays_per_batch": 2048}}},
            "face_rays": 1000, "peak_memory_mb": {"rss": rss}, "device": "cpu", "implementation": {}}


def fast_runs() -> list[dict]:
    made = [(summary(4.0, total=12.0, rss=600.0), 14.0, 0.5), (summary(5.0, total=10.0, rss=400.0), 12.0, 1.5),
            (summary(2.0, total=11.0, rss=500.0), 13.0, 0.25)]
    return [{"command": ["fastsider", "fit", "--example"], "figures": run_figures(s, ChildRun(wall, 0.05),
                                                                                  (load, load + 1.0))}
            for s, wall, load in made]


def made_data() -> dict:
    ref = {"command": ["fastsider", "fit", "--config", "reference"], "load": [1.0, 2.0],
           "figures": reference_figures(summary(30.0, stage2_steps=10, stage1_steps=20), ChildRun(60.0, None))}
    return {"runs": 3, "threads": 1, "overrides": ["mesh.resolution=64"],
            "targets": {"wall_s": 20.0, "stage2_step_ratio": 100.0},
            "machine": {"cpu_count": 2, "cpus_usable": 2, "torch_threads": 1, "threads_requested": 1,
                        "omp_num_threads_env": "1", "platform": "Linux", "processor": "x86_64", "python": "3.11",
                        "torch": "2", "load_average_start": [0.5, 0.4, 0.3], "load_average_end": [1.0, 0.9, 0.8]},
            "inputs": {"example": input_data(fast_runs(), ref)}}


def test_figures_of_one_run():
    f = run_figures(summary(4.0, stage2_steps=100), ChildRun(14.0, 0.25), (0.5, 1.5))
    assert f["process_wall_s"] == 14.0 and f["seconds.total"] == 10.0
    assert f["seconds.prepare"] == 1.0 and f["seconds_parts.prepare.landmarks"] == 0.4
    assert f["seconds_parts.outputs.mesh"] == 1.5
    assert f["stage2.iterations"] == 100 and f["stage2.seconds"] == 4.0
    assert f["stage2.iterations_per_s"] == pytest.approx(25.0)       # the loop's steps / its seconds
    assert f["stage2.seconds_per_iteration"] == pytest.approx(0.04)
    assert f["stage2.rays_per_s"] == pytest.approx(25.0 * 1000)       # a height map traces every face ray
    assert f["stage1.iterations"] == 0 and f["stage1.iterations_per_s"] is None  # no stage-1 steps: no rate
    assert f["peak_rss_mb"] == 500.0 and "cuda_max_allocated_mb" not in f
    assert (f["load_before"], f["load_after"], f["others_cpu_percent"]) == (0.5, 1.5, 25.0)


def test_spread_is_min_median_max_over_the_runs_that_have_the_figure():
    s = spread([{"a": 3.0, "b": None}, {"a": 1.0, "b": 4.0}, {"a": 2.0}, {"a": 10.0, "b": 2.0}])
    assert s["a"] == {"min": 1.0, "median": 2.5, "max": 10.0, "n": 4}
    assert s["b"] == {"min": 2.0, "median": 3.0, "max": 4.0, "n": 2}
    assert spread([{"c": None}])["c"] is None
    assert list(spread([{"x": 1}, {"y": 2, "x": 3}])) == ["x", "y"]  # order of first appearance


def test_an_inputs_spread_and_the_reference_ratio():
    d = made_data()["inputs"]["example"]
    st = d["stats"]
    assert st["process_wall_s"] == {"min": 12.0, "median": 13.0, "max": 14.0, "n": 3}
    assert d["wall_median_s"] == 13.0  # the headline: the median process wall time
    assert (st["seconds.total"]["min"], st["seconds.total"]["median"], st["seconds.total"]["max"]) == (10.0, 11.0, 12.0)
    # stage-2 loops of 4, 5 and 2 s for 100 steps each: 25, 20 and 50 steps / s
    assert st["stage2.iterations_per_s"]["median"] == pytest.approx(25.0)
    assert st["stage2.iterations_per_s"]["max"] == pytest.approx(50.0)
    assert st["peak_rss_mb"]["median"] == 500.0
    assert st["load_before"]["max"] == 1.5 and st["load_after"]["min"] == 1.25
    # the reference: 30 s for 10 steps = 3 s / step; fast's median 0.04 s / step -> 75x
    assert d["reference"]["figures"]["seconds_per_iteration"] == pytest.approx(3.0)
    assert d["reference"]["figures"]["stage1_iterations"] == 20
    assert d["stage2_step_ratio"] == pytest.approx(75.0)
    assert input_data(fast_runs(), None)["stage2_step_ratio"] is None


def test_report_files_hold_the_figures(tmp_path):
    data = made_data()
    with OutputStage(tmp_path / "r") as stage:
        write_speed_report(stage, data)
        stage.commit()
    md = (tmp_path / "r" / "speed_report.md").read_text()
    assert "**example: 13.0 s wall (median; target under 20 s: met)" in md
    assert "75.0x faster than the reference's (target 100x: NOT met)" in md
    for text in ("| process wall s (from outside, Python start-up incl.) | 12.000 | 13.000 | 14.000 |",
                 "| stage 2 loop steps / s | 20.000 | 25.000 | 50.000 |", "| peak RSS MB | 400.000 | 500.000 | 600.000 |",
                 "| prepare s | 1.000 | 1.000 | 1.000 |", "landmarks s", "| example | 13.000 | 25.000 | 0.040 | 3.000 | 75.000 |",
                 "2 CPUs (2 usable), torch threads per fit 1", "at the start 0.50, 0.40, 0.30", "load average (1 min) before",
                 "3.000 s per stage-2 step", "`fastsider fit --config reference`",
                 "| 2 | 12.000 | 10.000 | 20.000 | 400.000 | 1.500 | 2.500 | 5.000 |",  # run 2 and the load around it
                 "| stage 2 loop steps | 100 | 100 | 100 |"):
        assert text in md, text
    assert "Warning" not in md  # others took 5% of the CPU: under the busy threshold
    back = json.loads((tmp_path / "r" / "speed_report.json").read_text())
    assert back["inputs"]["example"]["stage2_step_ratio"] == pytest.approx(75.0)
    assert back["inputs"]["example"]["stats"]["stage1.iterations_per_s"] is None  # NaN-free JSON
    data["inputs"]["example"]["runs"][1]["figures"]["others_cpu_percent"] = 40.0
    assert "during example run 2" in report_markdown(data)


def test_the_reference_cuts_win_over_the_users_settings():
    req = SpeedRequest(out=Path("x"), reference_steps=7, reference_stage1_steps=3,
                       overrides=("stage2.iterations=5", "mesh.resolution=128"))
    over = reference_overrides(req)
    last = {t.split("=")[0]: t.split("=")[1] for t in over}  # the last of a key is the one that counts
    assert (last["stage2.iterations"], last["stage1.iterations"], last["mesh.resolution"]) == ("7", "3", "64")


def load_tool():
    sys.path.insert(0, str(TOOL.parent))  # as `python tools/profile_fit.py` has it (the tool does too)
    return importlib.import_module("profile_fit")


def one_error_line(err: str, needle: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("profile_fit: error:"), err
    assert "Traceback" not in err


def test_bad_input_is_one_line(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--out", str(tmp_path / "r"), "--case", str(tmp_path / "nope")]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "bench case folder not found")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "image.png").write_bytes(b"")
    assert tool.main(["--out", str(tmp_path / "r"), "--case", str(tmp_path / "half")]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "lacks coarse.ply, camera.json")
    assert tool.main(["--out", str(tmp_path / "r"), "--runs", "0"]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "--runs")
    assert not (tmp_path / "r").exists()
    (tmp_path / "file").write_text("")
    assert tool.main(["--out", str(tmp_path / "file"), "--reference-steps", "0"]) == tool.EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "output folder is a file")


# small networks and short traces keep the reference's fit to seconds; its stage 1 stays at the
# tool's default, the count known to leave a surface to mesh
TINY_REFERENCE = ("stage1.batch_points=1024", "model.geometry_mlp.network.n_neurons=64",
                  "model.rendering_mlp.network.n_neurons=64", "trace.max_steps=32")


@pytest.mark.slow  # the whole tool: one fast fit and one reference fit of the example
def test_tool_end_to_end(tmp_path):
    out = tmp_path / "speed"
    proc = subprocess.run([sys.executable, str(TOOL), "--out", str(out), "--runs", "1", "--reference-steps", "2",
                           "--threads", "1", *set_flags(*TINY_FIT, *TINY_REFERENCE)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    md = (out / "speed_report.md").read_text()
    data = json.loads((out / "speed_report.json").read_text())
    d = data["inputs"]["example"]
    (run,) = d["runs"]
    f = run["figures"]
    assert f["stage2.iterations"] == 4 and d["reference"]["figures"]["stage2_iterations"] == 2
    for value in (f["process_wall_s"], f["seconds.total"], f["seconds.stage2"], f["stage2.iterations_per_s"],
                  f["peak_rss_mb"], d["reference"]["figures"]["seconds_per_iteration"], d["stage2_step_ratio"],
                  d["wall_median_s"]):
        assert value is not None and math.isfinite(value) and value > 0
    assert f["process_wall_s"] > f["seconds.total"]  # Python start-up and imports on top of the fit
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["cpu_count"] >= 1
    assert len(data["machine"]["load_average_end"]) == 3
    assert "**example:" in md and "reference / fast step (x)" in md and "fastsider speed" in proc.stderr
    assert (out / "fits" / "example" / "fast_1" / "mesh.ply").is_file()

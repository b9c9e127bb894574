"""fastsider against the reference (the paper's configuration) on one photo: same coarse mesh, same budget.

One coarse fit (``fastsider coarse``), then ``fastsider fit`` once per preset from that coarse mesh
and camera, each in its own process so that its peak memory is its own. Both get the same seed,
``--set`` overrides, device and marching-cubes resolution, and the same budget: equal iteration
counts (``iterations``), or the fast run's measured stage times as the reference's time limits
(``time``). The report puts the two runs' speed side by side (ratios measured in the same run) and
measures how far apart their meshes are over the face region (and from a ground truth if given).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from fastsider.camera import Camera, world_to_camera_points
from fastsider.config import load_config
from fastsider.errors import FastsiderError, InputError
from fastsider.eval.bench import evaluation_region, mesh_errors
from fastsider.eval.metrics import ErrorStats, chamfer
from fastsider.io import OutputStage, load_image, load_mesh, save_json
from fastsider.render import normal_map, raycast_mesh

log = logging.getLogger(__name__)

FAST, REFERENCE = "fast", "reference"
PRESETS = (FAST, REFERENCE)                # run in this order: a time budget needs fast's stage times
DEFAULT_ITERATIONS = (100, 30)             # stage 1, stage 2: a few minutes for both presets on a CPU
TIME_BUDGET_ITERATIONS = 10**6             # reference's count under a time budget: time is what binds
MIN_SECONDS = 0.001                        # a time limit of 0 would mean "none"
CHAMFER_SAMPLES = 50_000                   # area-uniform samples per mesh
ERROR_MAP_MAX_MM = 1.0                     # colour scale of the depth-difference pictures
BUSY_MACHINE = 0.1                         # other processes' CPU share above which timings are flagged
STAGES = ("stage1", "stage2")
# (task, completed, total or None, note) -> None, task = "coarse" / a preset: completed/total are its
# current stage's steps (None: unchanged / unknown), note its stage or latest log line
CompareProgress = Callable[[str, int | None, int | None, str], None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"^(stage [12]) \([^)]*\)\s.*?\s(\d+)/(\d+)\s")  # a line of the fit's progress bars


class FitFailed(FastsiderError):
    """A coarse or fit subprocess exited with an error."""


@dataclass(frozen=True)
class CompareRequest:
    """What ``tools/compare_to_reference.py`` was asked for (paths as given; ``image`` None: the example)."""

    image: Path | None
    out: Path
    budget: Literal["iterations", "time"] = "iterations"
    stage1_iterations: int | None = None   # iterations: both presets (default 100); time: fast's count
    stage2_iterations: int | None = None   # (default 30 / the fast preset's own)
    overrides: tuple[str, ...] = ()        # --set KEY=VALUE, for both presets and the coarse fit
    seed: int = 0
    device: str | None = None
    landmarks: Path | None = None
    flame: Path | None = None
    flame_embedding: Path | None = None
    coarse: Path | None = None             # skip the coarse fit: this mesh ...
    camera: Path | None = None             # ... and its camera.json
    gt: Path | None = None                 # ground-truth mesh (same frame as the coarse mesh), optional
    threads: int | None = None             # CPU threads per fit (OMP_NUM_THREADS); None: torch's default


# --------------------------------------------------------------------------------------------
# command lines


def _photo_args(req: CompareRequest) -> list[str]:
    return ["--example"] if req.image is None else [str(req.image)]


def _common_args(req: CompareRequest, overrides: list[str]) -> list[str]:
    args = ["--seed", str(req.seed)] + (["--device", req.device] if req.device else [])
    for text in overrides:
        args += ["--set", text]
    return args


def coarse_argv(req: CompareRequest) -> list[str]:
    """``fastsider coarse`` arguments: the same landmark / FLAME inputs a fit would take."""
    argv = ["coarse", *_photo_args(req), "--out", str(req.out / "coarse")]
    for flag, path in (("--landmarks", req.landmarks), ("--flame", req.flame),
                       ("--flame-embedding", req.flame_embedding)):
        if path is not None:
            argv += [flag, str(path)]
    return argv + _common_args(req, list(req.overrides))


def preset_overrides(req: CompareRequest, preset: str, fast_summary: dict | None = None) -> list[str]:
    """The ``--set`` list of one preset's fit: shared settings, the user's, then the budget (which wins)."""
    own = {t.split("=", 1)[0].strip() for t in req.overrides}
    shared = [t for t in (f"mesh.resolution={load_config(FAST, list(req.overrides)).mesh.resolution}",
                          "stage2.snapshot_every=0") if t.split("=")[0] not in own] + list(req.overrides)
    n1, n2 = req.stage1_iterations, req.stage2_iterations
    if req.budget == "iterations":
        n1, n2 = n1 or DEFAULT_ITERATIONS[0], n2 or DEFAULT_ITERATIONS[1]
        return shared + [f"stage1.iterations={n1}", f"stage2.iterations={n2}",
                         "stage1.max_seconds=0.0", "stage2.max_seconds=0.0"]
    if preset == FAST:
        counts = [f"stage{i}.iterations={n}" for i, n in ((1, n1), (2, n2)) if n is not None]
        return shared + counts + ["stage1.max_seconds=0.0", "stage2.max_seconds=0.0"]
    if fast_summary is None:
        raise ValueError("a time budget needs the fast run's summary first")
    secs = reference_time_limits({s: float(fast_summary["seconds"][s]) for s in STAGES})
    return shared + [f"{s}.iterations={TIME_BUDGET_ITERATIONS}" for s in STAGES] + \
        [f"{s}.max_seconds={secs[s]:.3f}" for s in STAGES]


def reference_time_limits(fast_seconds: dict[str, float]) -> dict[str, float]:
    """The reference's per-stage time limits from the fast run's stage seconds. A fast run without
    stage-1 steps (the coarse SDF on a lattice) leaves the reference the same total, split evenly:
    the paper's MLP has to be fitted to the coarse SDF before stage 2 means anything."""
    if fast_seconds["stage1"] < MIN_SECONDS:
        half = sum(fast_seconds.values()) / 2.0
        return {s: max(half, MIN_SECONDS) for s in STAGES}
    return {s: max(fast_seconds[s], MIN_SECONDS) for s in STAGES}


def fit_argv(req: CompareRequest, preset: str, coarse: Path, camera: Path, overrides: list[str]) -> list[str]:
    return ["fit", *_photo_args(req), "--coarse", str(coarse), "--camera", str(camera), "--config", preset,
            "--out", str(req.out / preset)] + _common_args(req, overrides)


# --------------------------------------------------------------------------------------------
# subprocesses


def parse_progress(line: str) -> tuple[str, int, int] | None:
    """``'stage 2 (details) ━━━ 10/30 0:01:20 loss 0.3'`` -> ``('stage 2', 10, 30)``; None for other lines."""
    m = _BAR.match(_ANSI.sub("", line).strip() + " ")
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


class ChildRun(NamedTuple):
    seconds: float      # wall clock of the child process
    others_cpu: float | None  # share of the machine's CPU time that other processes took meanwhile (Linux)


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process and its waited-for children), or None."""
    import resource

    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system (idle iowait) irq softirq steal
    ours = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
    return busy / os.sysconf("SC_CLK_TCK"), ours


def run_cli(argv: list[str], name: str, log_dir: Path, progress: CompareProgress | None = None,
            threads: int | None = None) -> ChildRun:
    """``python -m fastsider.cli argv`` in a child process; its output goes to ``log_dir/name.log``.

    The child draws its progress bars as on a terminal so they can be relayed to ``progress``.
    Raises :class:`FitFailed` with the child's last error line.
    """
    report = progress or (lambda *a: None)
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_dir.mkdir(parents=True, exist_ok=True)
    err_path = log_dir / f"{name}.stderr.log"
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as out_log, open(err_path, "w") as err_log:
        proc = subprocess.Popen([sys.executable, "-m", "fastsider.cli", *argv], stdout=subprocess.PIPE,
                                stderr=err_log, text=True, errors="replace", env=env)
        seen: dict[str, tuple[str, int, int]] = {}
        try:
            for raw in proc.stdout:
                line = _ANSI.sub("", raw).rstrip()
                bar = parse_progress(line)
                if bar is not None and seen.get(bar[0]) != bar:  # each redraw repeats every stage's bar
                    seen[bar[0]] = bar
                    report(name, bar[1], None if bar[2] >= TIME_BUDGET_ITERATIONS else bar[2], bar[0])
                elif bar is None and line.strip():
                    out_log.write(line + "\n")
                    report(name, None, None, line.strip()[:100])
        finally:
            code = proc.wait()  # on Ctrl-C the child checkpoints and stops on its own
    seconds, cpu1 = time.perf_counter() - t0, _cpu_seconds()
    report(name, None, None, "done" if code == 0 else f"failed (exit code {code})")
    if code != 0:
        lines = [ln.strip() for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {code} and no message (killed? out of memory?)"
        raise FitFailed(f"{name} failed: {why} (log: {log_dir / name}.log)")
    others = None
    if cpu0 is not None and cpu1 is not None and seconds > 0:
        others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / (seconds * (os.cpu_count() or 1))
    return ChildRun(seconds, others)


# --------------------------------------------------------------------------------------------
# speed


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def stage_speed(summary: dict[str, Any], stage: str) -> dict[str, Any]:
    """Wall seconds, iterations and throughput of one stage of a fit's summary.json (rays/s: stage 2)."""
    stats = summary.get(stage) or {}
    seconds = float(stats.get("seconds", summary["seconds"].get(stage, 0.0)))
    iterations = int(stats.get("iterations", 0))
    out = {"seconds": seconds, "iterations": iterations, "iterations_per_s": _ratio(iterations, seconds),
           "seconds_per_iteration": _ratio(seconds, iterations)}
    if stage == "stage2":
        face_rays = int(summary.get("face_rays", 2**62))
        every_ray = summary["config"].get("model", {}).get("geometry", {}).get("detail") == "height_map"
        rays = face_rays if every_ray else min(int(summary["config"]["stage2"]["rays_per_batch"]), face_rays)
        out["rays_per_batch"] = rays
        out["rays_per_s"] = _ratio(iterations * rays, seconds)
    return out


def preset_speed(summary: dict[str, Any]) -> dict[str, Any]:
    mem = summary.get("peak_memory_mb", {})
    return {**{s: stage_speed(summary, s) for s in STAGES},
            "total_seconds": float(summary["seconds"]["total"]),
            "peak_rss_mb": mem.get("rss"), "cuda_max_allocated_mb": mem.get("cuda_max_allocated"),
            "device": summary.get("device"), "implementation": summary.get("implementation", {}),
            "psnr": (summary.get("stage2") or {}).get("psnr")}


def speedups(fast: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    """Reference / fast time ratios (> 1: fast is faster), from two :func:`preset_speed` dicts."""
    stages_wall = [sum(p[s]["seconds"] for s in STAGES) for p in (ref, fast)]
    return {"stage1_per_iteration": _ratio(ref["stage1"]["seconds_per_iteration"],
                                           fast["stage1"]["seconds_per_iteration"]),
            "stage2_per_iteration": _ratio(ref["stage2"]["seconds_per_iteration"],
                                           fast["stage2"]["seconds_per_iteration"]),
            "stages_wall": _ratio(*stages_wall),
            "total_wall": _ratio(ref["total_seconds"], fast["total_seconds"])}


SPEED_HEADERS = ("", "fast", "reference", "fast's advantage (x)")


def speed_rows(fast: dict[str, Any], ref: dict[str, Any]) -> list[list[Any]]:
    """Rows of the speed table; the last column is > 1 where fast is better (less time, more throughput)."""
    rows = []
    for s, label in (("stage1", "stage 1"), ("stage2", "stage 2")):
        f, r = fast[s], ref[s]
        rows += [[f"{label} wall s", f["seconds"], r["seconds"], _ratio(r["seconds"], f["seconds"])],
                 [f"{label} iterations", f["iterations"], r["iterations"], _ratio(f["iterations"], r["iterations"])],
                 [f"{label} s / iteration", f["seconds_per_iteration"], r["seconds_per_iteration"],
                  _ratio(r["seconds_per_iteration"], f["seconds_per_iteration"])],
                 [f"{label} iterations / s", f["iterations_per_s"], r["iterations_per_s"],
                  _ratio(f["iterations_per_s"], r["iterations_per_s"])]]
    rows.append(["stage 2 rays / s", fast["stage2"]["rays_per_s"], ref["stage2"]["rays_per_s"],
                 _ratio(fast["stage2"]["rays_per_s"], ref["stage2"]["rays_per_s"])])
    rows.append(["total wall s (setup, meshing, pictures incl.)", fast["total_seconds"], ref["total_seconds"],
                 _ratio(ref["total_seconds"], fast["total_seconds"])])
    if "process_seconds" in fast:
        rows.append(["process wall s (Python start-up incl.)", fast["process_seconds"], ref["process_seconds"],
                     _ratio(ref["process_seconds"], fast["process_seconds"])])
        rows.append(["other processes' CPU share %", *(None if p.get("others_cpu_share") is None
                                                       else 100 * p["others_cpu_share"] for p in (fast, ref)), None])
    for key, label in (("peak_rss_mb", "peak RSS MB"), ("cuda_max_allocated_mb", "peak CUDA allocated MB")):
        if fast[key] is not None or ref[key] is not None:
            rows.append([label, fast[key], ref[key], _ratio(ref[key], fast[key])])
    rows.append(["stage 2 PSNR dB (last batch)", fast["psnr"], ref["psnr"], None])
    rows.append(["device", fast["device"], ref["device"], None])
    rows.append(["networks / normals / grid", *("/".join(map(str, p["implementation"].values())) for p in (fast, ref)),
                 None])
    return rows


# --------------------------------------------------------------------------------------------
# quality


def _region_of_samples(meshes: list[trimesh.Trimesh], regions: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Points [n, 3] -> bool [n]: in the region when the nearest vertex of any of the meshes is."""
    tree = cKDTree(np.concatenate([np.asarray(m.vertices) for m in meshes]))
    flags = np.concatenate(regions)
    return lambda pts: flags[tree.query(pts)[1]]


def mesh_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, region_a: np.ndarray | None = None,
                  region_b: np.ndarray | None = None, n_samples: int = CHAMFER_SAMPLES,
                  seed: int = 0) -> dict[str, Any]:
    """How far surface A is from surface B (mm, degrees), over the vertex regions (None: everywhere).

    Chamfer: area-uniform samples of each surface, kept when their nearest vertex is in its mesh's
    region, to the other surface. Scan-to-mesh: A's region vertices to B. Normal angle: A's region
    face normals against B's at the closest points (bench.mesh_errors).
    """
    region_a = np.ones(len(a.vertices), bool) if region_a is None else region_a
    region_b = np.ones(len(b.vertices), bool) if region_b is None else region_b
    ch = chamfer(a.vertices, a.faces, b.vertices, b.faces, n_samples, seed,
                 region=_region_of_samples([a, b], [region_a, region_b]))
    errs, _ = mesh_errors(a, np.zeros(len(a.vertices)), region_a, b)
    return {"chamfer_mm": ch.mean, "chamfer_a_to_b_mm": ErrorStats.from_errors(ch.a_to_b).to_json_dict(),
            "chamfer_b_to_a_mm": ErrorStats.from_errors(ch.b_to_a).to_json_dict(),
            "scan_to_mesh_mm": errs.scan_to_mesh.to_json_dict(), "normal_deg": errs.normal_deg.to_json_dict()}


def quality(meshes: dict[str, trimesh.Trimesh], camera: Camera, gt: trimesh.Trimesh | None,
            gt_labels: np.ndarray | None) -> dict[str, Any]:
    """Fast vs reference over the face region, each one's distance from the coarse mesh, errors to GT."""
    coarse = meshes["coarse"]
    region = {k: evaluation_region(meshes[k], coarse, camera) for k in PRESETS}
    out: dict[str, Any] = {"fast_vs_reference": mesh_distance(meshes[FAST], meshes[REFERENCE], region[FAST],
                                                              region[REFERENCE]),
                           "from_coarse": {}, "to_gt": None}
    for k in PRESETS:
        errs, _ = mesh_errors(meshes[k], np.zeros(len(meshes[k].vertices)), region[k], coarse)
        out["from_coarse"][k] = errs.scan_to_mesh.to_json_dict()
    if gt is not None:
        labels = gt_labels if gt_labels is not None else np.zeros(len(gt.vertices))
        gt_region = evaluation_region(gt, coarse, camera)
        keep = ("scan_to_mesh", "normal_deg") + (("wrinkle_scan_to_mesh", "wrinkle_normal_deg")
                                                  if gt_labels is not None else ())
        out["to_gt"] = {k: {m: getattr(mesh_errors(gt, labels, gt_region, meshes[k])[0], m).to_json_dict()
                            for m in keep} for k in ("coarse", *PRESETS)}
    return out


def load_gt(path: Path, camera_path: Path) -> tuple[trimesh.Trimesh, np.ndarray | None]:
    """The GT mesh in the camera frame, and its detail labels when a ``gt_labels.npy`` (bench case) lies beside it."""
    gt = load_mesh(path)
    gt = trimesh.Trimesh(world_to_camera_points(Camera.load(camera_path), np.asarray(gt.vertices)), gt.faces,
                         process=False)
    labels_path = path.parent / "gt_labels.npy"
    labels = np.load(labels_path) if labels_path.is_file() else None
    return gt, labels if labels is not None and len(labels) == len(gt.vertices) else None


def picture(fits: dict[str, Path], meshes: dict[str, trimesh.Trimesh]) -> list[tuple[str, np.ndarray]]:
    """Input crop, coarse / fast / reference (/ GT) normals, and |depth| differences (mm) in the working crop."""
    import imageio.v3 as iio

    crop = json.loads((fits[FAST] / "crop.json").read_text())
    cam = Camera.load(fits[FAST] / "camera.json").transformed(crop["scale"], crop["offset_x"], crop["offset_y"],
                                                               crop["size"], crop["size"])
    surf = {k: raycast_mesh(np.asarray(m.vertices), np.asarray(m.faces), cam) for k, m in meshes.items()
            if k != "coarse"}
    panels = [("input crop", iio.imread(fits[FAST] / "input_crop.png")),
              ("coarse normals", iio.imread(fits[FAST] / "coarse_normals.png")),
              *((f"{k} normals", iio.imread(fits[k] / "normals.png")) for k in PRESETS)]
    pairs = [(FAST, REFERENCE)]
    if "gt" in surf:
        panels.append(("ground truth normals", normal_map(surf["gt"].normals, surf["gt"].mask)))
        pairs += [(FAST, "gt"), (REFERENCE, "gt")]
    for a, b in pairs:
        both = surf[a].mask & surf[b].mask
        panels.append((f"|depth {a} - {b}| (mm)", np.where(both, np.abs(surf[a].depth - surf[b].depth), np.nan)))
    return panels


# --------------------------------------------------------------------------------------------
# the job


def check_request(req: CompareRequest) -> None:
    """Every input the user can get wrong, before minutes of fitting (one-line errors)."""
    if req.image is not None:
        load_image(req.image)
    for flag, path in (("--landmarks", req.landmarks), ("--flame", req.flame),
                       ("--flame-embedding", req.flame_embedding), ("--camera", req.camera)):
        if path is not None and not path.is_file():
            raise InputError(f"{flag} file not found: {path}")
    if (req.coarse is None) != (req.camera is None):
        raise InputError("--coarse and --camera go together: give both or neither")
    if req.coarse is not None:
        load_mesh(req.coarse)
        Camera.load(req.camera)
    if req.gt is not None:
        load_mesh(req.gt)
    for n in (req.stage1_iterations, req.stage2_iterations, req.threads):
        if n is not None and n < 1:
            raise InputError(f"iteration and thread counts must be at least 1, got {n}")
    for preset in PRESETS:
        load_config(preset, list(req.overrides))


def run_compare(req: CompareRequest, progress: CompareProgress | None = None) -> dict[str, Any]:
    """Coarse fit, both presets' fits, metrics and the report in ``req.out``. Returns report.json's data."""
    check_request(req)
    logs = req.out / "logs"
    with OutputStage(req.out) as stage:  # checks the folder is writable before any work
        coarse, camera = req.coarse, req.camera
        if coarse is None:
            run_cli(coarse_argv(req), "coarse", logs, progress, req.threads)
            coarse, camera = req.out / "coarse" / "coarse.ply", req.out / "coarse" / "camera.json"
        fits = {p: req.out / p for p in PRESETS}
        summaries: dict[str, dict] = {}
        runs, argvs = {}, {}
        for preset in PRESETS:
            argvs[preset] = fit_argv(req, preset, coarse, camera, preset_overrides(req, preset, summaries.get(FAST)))
            runs[preset] = run_cli(argvs[preset], preset, logs, progress, req.threads)
            summaries[preset] = json.loads((fits[preset] / "summary.json").read_text())
            log.info("%s fit: %.1f s (process %.1f s)", preset, summaries[preset]["seconds"]["total"],
                     runs[preset].seconds)
            if (runs[preset].others_cpu or 0.0) > BUSY_MACHINE:
                log.warning("other processes took %.0f%% of the CPU time during the %s fit: its timings are "
                            "disturbed", 100 * runs[preset].others_cpu, preset)
        data = report_data(req, summaries, runs, argvs)
        meshes = {"coarse": load_mesh(fits[FAST] / "coarse.ply"),
                  **{p: load_mesh(fits[p] / "mesh.ply") for p in PRESETS}}
        gt, labels = load_gt(req.gt, camera) if req.gt is not None else (None, None)
        data["quality"] = quality(meshes, Camera.load(fits[FAST] / "camera.json"), gt, labels)
        if gt is not None:
            meshes["gt"] = gt
        write_report(stage, data, picture(fits, meshes))
        stage.commit()
    return data


def report_data(req: CompareRequest, summaries: dict[str, dict], runs: dict[str, ChildRun],
                argvs: dict[str, list[str]]) -> dict[str, Any]:
    speed = {p: {**preset_speed(summaries[p]), "process_seconds": runs[p].seconds,
                 "others_cpu_share": runs[p].others_cpu} for p in PRESETS}
    ratios = speedups(speed[FAST], speed[REFERENCE])
    ratios["process_wall"] = _ratio(runs[REFERENCE].seconds, runs[FAST].seconds)
    return {"photo": str(req.image) if req.image else "example", "budget": req.budget,
            "seed": req.seed, "threads": req.threads, "overrides": list(req.overrides),
            "gt": str(req.gt) if req.gt else None,
            "commands": {p: ["fastsider", *argvs[p]] for p in PRESETS}, "presets": speed, "speedup": ratios}


QUALITY_HEADERS = ("surfaces (face region)", "median", "mean", "p90", "points")


def quality_rows(q: dict[str, Any]) -> list[list[Any]]:
    """Distance rows (mm, or degrees for normals) for the markdown and terminal tables."""
    def row(label: str, s: dict) -> list[Any]:
        return [label, s["median"], s["mean"], s["p90"], s["count"]]
    fr = q["fast_vs_reference"]
    rows = [["Chamfer fast <-> reference mm (mean of both ways)", None, fr["chamfer_mm"], None, None],
            row("fast -> reference mm (Chamfer samples)", fr["chamfer_a_to_b_mm"]),
            row("reference -> fast mm (Chamfer samples)", fr["chamfer_b_to_a_mm"]),
            row("fast vertices -> reference mm (scan-to-mesh)", fr["scan_to_mesh_mm"]),
            row("normal angle fast vs reference deg", fr["normal_deg"])]
    rows += [row(f"{k} vertices -> coarse mm (detail added)", q["from_coarse"][k]) for k in PRESETS]
    for k, errs in (q["to_gt"] or {}).items():
        rows += [row(f"GT -> {k} {m.replace('_', ' ')}" + (" deg" if "normal" in m else " mm"), s)
                 for m, s in errs.items()]
    return rows


def write_report(stage: OutputStage, data: dict[str, Any], panels: list[tuple[str, np.ndarray]]) -> None:
    """report.md, report.json and comparison.png into the staged output folder."""
    from fastsider.report import fmt, image_panel, markdown_table

    fast, ref = data["presets"][FAST], data["presets"][REFERENCE]
    sp = data["speedup"]
    budget = (f"the same iteration counts ({fast['stage1']['iterations']} / {fast['stage2']['iterations']})"
              if data["budget"] == "iterations" else "the fast run's stage times as the reference's time limits "
              "(the step in flight at the limit is finished)")
    stage1_phrase = (f"{fmt(sp['stage1_per_iteration'], 1)}x faster in stage 1" if fast["stage1"]["iterations"]
                     else "without stage-1 steps (the coarse SDF on a lattice)")
    lines = ["# fastsider vs reference", "",
             f"Photo `{data['photo']}`, seed {data['seed']}, one coarse mesh for both; budget: {budget}; "
             f"CPU threads per fit: {data['threads'] or 'default'}.", "",
             f"**Per iteration, fast is {stage1_phrase} and "
             f"{fmt(sp['stage2_per_iteration'], 1)}x faster in stage 2; the whole fit {fmt(sp['total_wall'], 1)}x "
             f"(stages only {fmt(sp['stages_wall'], 1)}x). Their meshes are "
             f"{fmt(data['quality']['fast_vs_reference']['chamfer_mm'], 3)} mm apart (Chamfer, face region).**",
             *_busy_warning(data), "", "## Speed (wall times measured in this run)", "",
             markdown_table(SPEED_HEADERS, speed_rows(fast, ref)), "",
             "## Quality", "", markdown_table(QUALITY_HEADERS, quality_rows(data["quality"])), "",
             "![comparison](comparison.png)", "", "## Commands", "",
             *(f"- {p}: `{' '.join(c)}`" for p, c in data["commands"].items()), ""]
    image_panel(panels, stage.path("comparison.png"), "fastsider vs reference", colorbar_max=ERROR_MAP_MAX_MM)
    stage.path("report.md").write_text("\n".join(lines) + "\n")
    save_json(stage.path("report.json"), _json_safe(data))


def _busy_warning(data: dict[str, Any]) -> list[str]:
    busy = {p: v["others_cpu_share"] for p, v in data["presets"].items() if (v["others_cpu_share"] or 0) > BUSY_MACHINE}
    if not busy:
        return []
    what = ", ".join(f"{100 * v:.0f}% during the {p} fit" for p, v in busy.items())
    return ["", f"Warning: other processes took CPU time ({what}); the timings are disturbed. "
                "Rerun on an otherwise idle machine."]


def _json_safe(o: Any) -> Any:
    """NaN / inf -> None (JSON has neither)."""
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o

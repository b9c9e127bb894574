"""fastsider against the reference (the paper's configuration) on one photo: same coarse mesh, same budget.

One coarse fit (``fastsider coarse``), then ``fastsider fit`` once per preset from that coarse mesh
and camera, each in its own process so that its peak memory is its own. Both get the same seed,
``--set`` overrides, device and marching-cubes resolution, and the same budget: equal iteration
counts (``iterations``), or the fast run's measured stage times as the reference's time limits
(``time``). The report puts the two runs' speed side by side (ratios measured in the same run) and
measures how far apart their meshes are over the face region (and from a ground truth if given).

This module runs the job (command lines, the child processes, the budget); what is measured lives
in :mod:`fastsider.eval.compare_metrics`, the report's tables and files in
:mod:`fastsider.eval.compare_report`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

from fastsider.camera import Camera
from fastsider.config import load_config
from fastsider.errors import FastsiderError, InputError
from fastsider.eval.compare_metrics import (
    BUSY_MACHINE,
    FAST,
    PRESETS,
    REFERENCE,
    STAGES,
    load_gt,
    preset_speed,
    quality,
    ratio,
    speedups,
)
from fastsider.eval.compare_report import picture, write_report
from fastsider.io import OutputStage, load_image, load_mesh

log = logging.getLogger(__name__)

DEFAULT_ITERATIONS = (100, 30)             # stage 1, stage 2: a few minutes for both presets on a CPU
TIME_BUDGET_ITERATIONS = 10**6             # reference's count under a time budget: time is what binds
MIN_SECONDS = 0.001                        # a time limit of 0 would mean "none"
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
    mesh = load_config(FAST, list(req.overrides)).mesh  # both presets meshed the same way
    meshing = [f"mesh.method={mesh.method}"] + ([f"mesh.resolution={mesh.resolution}"]
                                                if mesh.method == "marching_cubes" else [])
    shared = [t for t in (*meshing, "stage2.snapshot_every=0") if t.split("=")[0] not in own] + list(req.overrides)
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
    # the optimisation loops' own seconds (summary["seconds"] holds each stage's wall time, set-up included)
    secs = reference_time_limits({s: float(fast_summary.get(s, {}).get("seconds", fast_summary["seconds"][s]))
                                  for s in STAGES})
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
    ratios["process_wall"] = ratio(runs[REFERENCE].seconds, runs[FAST].seconds)
    return {"photo": str(req.image) if req.image else "example", "budget": req.budget,
            "seed": req.seed, "threads": req.threads, "overrides": list(req.overrides),
            "gt": str(req.gt) if req.gt else None,
            "commands": {p: ["fastsider", *argvs[p]] for p in PRESETS}, "presets": speed, "speedup": ratios}

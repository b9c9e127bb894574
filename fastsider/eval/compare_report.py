"""The report of ``tools/compare_to_reference.py``: report.md, report.json and comparison.png.

Turns the measured data (:mod:`fastsider.eval.compare_metrics`, gathered by
:func:`fastsider.eval.compare.run_compare`) into the speed and quality tables (also printed by the
tool), the side-by-side normal maps and depth-difference pictures, and the written files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from fastsider.camera import Camera
from fastsider.eval.compare_metrics import BUSY_MACHINE, FAST, PRESETS, REFERENCE, ratio
from fastsider.io import OutputStage, save_json
from fastsider.pictures import normal_map, raycast_mesh

ERROR_MAP_MAX_MM = 1.0                     # colour scale of the depth-difference pictures

SPEED_HEADERS = ("", "fast", "reference", "fast's advantage (x)")


def speed_rows(fast: dict[str, Any], ref: dict[str, Any]) -> list[list[Any]]:
    """Rows of the speed table; the last column is > 1 where fast is better (less time, more throughput)."""
    rows = []
    for s, label in (("stage1", "stage 1"), ("stage2", "stage 2")):
        f, r = fast[s], ref[s]
        rows += [[f"{label} wall s", f["seconds"], r["seconds"], ratio(r["seconds"], f["seconds"])],
                 [f"{label} iterations", f["iterations"], r["iterations"], ratio(f["iterations"], r["iterations"])],
                 [f"{label} s / iteration", f["seconds_per_iteration"], r["seconds_per_iteration"],
                  ratio(r["seconds_per_iteration"], f["seconds_per_iteration"])],
                 [f"{label} iterations / s", f["iterations_per_s"], r["iterations_per_s"],
                  ratio(f["iterations_per_s"], r["iterations_per_s"])]]
    rows.append(["stage 2 rays / s", fast["stage2"]["rays_per_s"], ref["stage2"]["rays_per_s"],
                 ratio(fast["stage2"]["rays_per_s"], ref["stage2"]["rays_per_s"])])
    rows.append(["total wall s (setup, meshing, pictures incl.)", fast["total_seconds"], ref["total_seconds"],
                 ratio(ref["total_seconds"], fast["total_seconds"])])
    if "process_seconds" in fast:
        rows.append(["process wall s (Python start-up incl.)", fast["process_seconds"], ref["process_seconds"],
                     ratio(ref["process_seconds"], fast["process_seconds"])])
        rows.append(["other processes' CPU share %", *(None if p.get("others_cpu_share") is None
                                                       else 100 * p["others_cpu_share"] for p in (fast, ref)), None])
    for key, label in (("peak_rss_mb", "peak RSS MB"), ("cuda_max_allocated_mb", "peak CUDA allocated MB")):
        if fast[key] is not None or ref[key] is not None:
            rows.append([label, fast[key], ref[key], ratio(ref[key], fast[key])])
    rows.append(["stage 2 PSNR dB (last batch)", fast["psnr"], ref["psnr"], None])
    rows.append(["device", fast["device"], ref["device"], None])
    rows.append(["networks / normals / grid", *("/".join(map(str, p["implementation"].values())) for p in (fast, ref)),
                 None])
    return rows


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

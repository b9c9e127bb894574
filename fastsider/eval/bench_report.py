"""The ``fastsider bench`` report: tables per renderer and side by side, JSON, plots, pictures.

Every number comes from :mod:`fastsider.eval.bench`'s measurements (``BenchResult``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastsider.config import to_dict
from fastsider.eval.bench import CURVE_MAX_MM, BenchResult, CaseResult, bench_dirs, case_picture
from fastsider.eval.metrics import ErrorStats, cumulative_curve, finite_or_none
from fastsider.io import OutputStage, save_json

RENDERER_WORDS = {
    "simple": "the optimiser's own shading model (ray-cast albedo x (ambient + Lambert) + sheen) from an exact "
              "coarse input: an inverse crime, the upper bound",
    "cycles": "Blender Cycles path tracing (subsurface skin, area + environment light, shadows, sRGB, sensor "
              "noise, JPEG) from a coarse input off by a smooth 0.5-3 mm",
}


CASE_HEADERS = ("case", "coarse median", "coarse mean", "detailed median", "detailed mean", "median lower %",
                "mean lower %", "wrinkle coarse mean", "wrinkle detailed mean", "normal coarse", "normal detailed",
                "wrinkle normal coarse", "wrinkle normal detailed",
                "stage 1 s", "stage 2 s", "total s", "peak RSS MB")


def case_rows(cases: list[CaseResult]) -> list[list[Any]]:
    rows = []
    for c in cases:
        rows.append([c.name, c.coarse.scan_to_mesh.median, c.coarse.scan_to_mesh.mean,
                     c.detailed.scan_to_mesh.median, c.detailed.scan_to_mesh.mean,
                     100 * c.reduction("scan_to_mesh", "median"), 100 * c.reduction("scan_to_mesh", "mean"),
                     c.coarse.wrinkle_scan_to_mesh.mean, c.detailed.wrinkle_scan_to_mesh.mean,
                     c.coarse.normal_deg.mean, c.detailed.normal_deg.mean,
                     c.coarse.wrinkle_normal_deg.mean, c.detailed.wrinkle_normal_deg.mean,
                     c.seconds.get("stage1"), c.seconds.get("stage2"),
                     c.seconds.get("total"), c.peak_memory_mb.get("rss")])
    return rows


TERMINAL_HEADERS = ("case", "s2m coarse", "s2m detailed", "wrinkle s2m coarse", "wrinkle s2m detailed",
                    "wrinkle normal coarse", "wrinkle normal detailed", "total s")


def terminal_rows(result: BenchResult) -> list[list[Any]]:
    """The short table for the terminal: mean errors (mm, degrees) and time, per renderer and case."""
    return [[f"{c.renderer} {c.name}", c.coarse.scan_to_mesh.mean, c.detailed.scan_to_mesh.mean, c.coarse.wrinkle_scan_to_mesh.mean,
             c.detailed.wrinkle_scan_to_mesh.mean, c.coarse.wrinkle_normal_deg.mean,
             c.detailed.wrinkle_normal_deg.mean, c.seconds.get("total")] for c in result.cases]


def overall(cases: list[CaseResult]) -> dict[str, Any]:
    """Pooled errors over the cases, the mean per-case reductions and high-pass scores."""
    pooled = {k: np.concatenate([c.distances[k] for c in cases]) for k in ("coarse", "detailed")}
    stats = {k: ErrorStats.from_errors(v) for k, v in pooled.items()}

    def mean_reduction(what: str, stat: str) -> float:
        return float(np.mean([c.reduction(what, stat) for c in cases]))
    return {
        "scan_to_mesh_mm": {k: s.to_json_dict() for k, s in stats.items()},
        "pooled_reduction": {s: (getattr(stats["coarse"], s) - getattr(stats["detailed"], s))
                             / getattr(stats["coarse"], s) for s in ("median", "mean")},
        "mean_case_reduction": {
            "scan_to_mesh_median": mean_reduction("scan_to_mesh", "median"),
            "scan_to_mesh_mean": mean_reduction("scan_to_mesh", "mean"),
            "wrinkle_scan_to_mesh_mean": mean_reduction("wrinkle_scan_to_mesh", "mean"),
            "normal_mean": mean_reduction("normal_deg", "mean"),
            "wrinkle_normal_mean": mean_reduction("wrinkle_normal_deg", "mean"),
        },
        "depth_recovered_mean": {k: finite_or_none(v) for k, v in mean_depth_recovered(cases).items()},
        "highpass_mean": highpass_means(cases),
    }


def _mean(values: list[Any]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def highpass_means(cases: list[CaseResult]) -> dict[str, Any]:
    """Mesh -> region -> mean over the cases of the high-passed detail's correlation and depth
    recovered, and the mean noise RMS outside the details (eval.highpass)."""
    out: dict[str, Any] = {"gt": {"true_rms_mm": _mean([c.highpass.get("gt", {}).get("true_rms_mm") for c in cases])}}
    for mesh in ("coarse", "detailed"):
        per = [c.highpass.get(mesh, {}) for c in cases]
        regions = dict.fromkeys(k for p in per for k in p if k != "noise_rms_mm")
        out[mesh] = {r: {m: _mean([p.get(r, {}).get(m) for p in per]) for m in ("correlation", "depth_recovered")}
                     for r in regions}
        out[mesh]["noise_rms_mm"] = _mean([p.get("noise_rms_mm") for p in per])
    return out


def mean_depth_recovered(cases: list[CaseResult]) -> dict[str, float]:
    """Detail region -> mean over the cases that have it of the detailed mesh's depth recovered."""
    names = dict.fromkeys(k for c in cases for k in c.detailed.depth_recovered)  # first-seen order
    out = {}
    for name in names:
        values = [c.detailed.depth_recovered.get(name, np.nan) for c in cases]
        finite = [v for v in values if np.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    return out


def depth_rows(cases: list[CaseResult]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the depth-recovered table: one row per case and the mean."""
    mean = mean_depth_recovered(cases)
    rows = [[c.name, *(c.detailed.depth_recovered.get(k, np.nan) for k in mean)] for c in cases]
    rows.append(["mean", *mean.values()])
    return ["case", *(k.replace("_", " ") for k in mean)], rows


def _change(reduction: float) -> str:
    """A relative reduction as words: 0.4 -> '40.0% lower', -0.2 -> '20.0% higher (worse)'."""
    return f"{100 * reduction:.1f}% lower" if reduction >= 0 else f"{-100 * reduction:.1f}% higher (worse)"


HIGHPASS_HEADERS = ("case", "wrinkle correlation", "wrinkle depth recovered", "noise RMS mm (outside details)",
                    "true detail RMS mm")


def highpass_rows(cases: list[CaseResult]) -> list[list[Any]]:
    """The high-passed detail of the detailed mesh per case, and the mean."""
    def row(name: str, hp: dict[str, Any]) -> list[Any]:
        w = hp["detailed"]["wrinkles"]
        return [name, w["correlation"], w["depth_recovered"], hp["detailed"]["noise_rms_mm"], hp["gt"]["true_rms_mm"]]
    rows = [row(c.name, c.highpass) for c in cases if c.highpass]
    m = highpass_means(cases)
    rows.append(["mean", m["detailed"].get("wrinkles", {}).get("correlation"),
                 m["detailed"].get("wrinkles", {}).get("depth_recovered"), m["detailed"]["noise_rms_mm"],
                 m["gt"]["true_rms_mm"]])
    return rows


SIDE_HEADERS = ("renderer", "cases", "face scan-to-mesh mean", "wrinkle scan-to-mesh mean", "normal error",
                "wrinkle normal error", "high-passed wrinkles: correlation", "depth recovered")


def side_by_side_rows(summaries: dict[str, dict[str, Any]], counts: dict[str, int]) -> list[list[Any]]:
    rows = []
    for renderer, s in summaries.items():
        red, hp = s["mean_case_reduction"], s["highpass_mean"]["detailed"].get("wrinkles", {})
        rows.append([renderer, counts[renderer], _change(red["scan_to_mesh_mean"]),
                     _change(red["wrinkle_scan_to_mesh_mean"]), _change(red["normal_mean"]),
                     _change(red["wrinkle_normal_mean"]), hp.get("correlation"), hp.get("depth_recovered")])
    return rows


def _renderer_section(renderer: str, cases: list[CaseResult], summary: dict[str, Any], out: OutputStage,
                      out_dir: Path) -> list[str]:
    from fastsider.report import image_panel, markdown_table, plot_cumulative

    prefix = "" if renderer == "simple" else f"{renderer}/"
    red = summary["mean_case_reduction"]
    lines = [f"## Renderer `{renderer}`: {RENDERER_WORDS.get(renderer, renderer)}", "",
             f"Seeds of the cases: {', '.join(str(c.seed) for c in cases)}.", "",
             "### Detail stage gain (mean over cases)", "",
             markdown_table(("scan-to-mesh median", "scan-to-mesh mean", "wrinkle scan-to-mesh mean",
                             "normal error", "wrinkle normal error"),
                            [[_change(red["scan_to_mesh_median"]), _change(red["scan_to_mesh_mean"]),
                              _change(red["wrinkle_scan_to_mesh_mean"]), _change(red["normal_mean"]),
                              _change(red["wrinkle_normal_mean"])]]),
             "", "Wrinkle regions: ground-truth vertices (scan-to-mesh) and faces (normals) the generator "
             "labels as forehead lines, crow's feet, nasolabial folds or bumps.",
             "", "### Per case (errors to ground truth: mm, normals in degrees)", "",
             markdown_table(CASE_HEADERS, case_rows(cases), digits=3), "",
             "### Depth recovered by region (detailed mesh)", "",
             "The share of the true displacement the detailed mesh reproduces along the coarse "
             "surface's normal (least squares over the region's ground-truth vertices): 1 is full "
             "depth, 0 a missed detail. The coarse mesh scores 0 by construction.", "",
             markdown_table(*depth_rows(cases), digits=2), "",
             "### High-passed detail (each surface minus its own low-pass, seen from the camera)", "",
             "A coarse input that is off at large scale does not count here: the detail the fit added to its "
             "coarse input (depth minus the coarse input's) against the true detail (the GT's depth minus its "
             "base's), each minus its own 2.5 mm Gaussian low-pass: correlation and depth recovered over the "
             "wrinkle regions, and the RMS of the added detail outside them (noise).", "",
             markdown_table(HIGHPASS_HEADERS, highpass_rows(cases), digits=3), "",
             f"![cumulative error]({prefix}cumulative_error.png)", ""]
    errors = {k: np.concatenate([c.distances[k] for c in cases]) for k in ("coarse", "detailed")}
    curves = {f"{k} (median {np.median(e):.3f})": cumulative_curve(e, CURVE_MAX_MM, 201) for k, e in errors.items()}
    plot_cumulative(curves, out.path(f"{prefix}cumulative_error.png"), CURVE_MAX_MM, "scan-to-mesh error [mm]",
                    f"{renderer}: all cases, face region")
    case_root, fit_root = bench_dirs(out_dir, renderer)
    for c in cases:
        image_panel(case_picture(case_root / c.name, fit_root / c.name), out.path(f"{prefix}pictures/{c.name}.png"),
                    f"{renderer} {c.name}", colorbar_max=1.0)
        lines.append(f"![{c.name}]({prefix}pictures/{c.name}.png)")
    return lines


def write_bench_report(result: BenchResult, out_dir: Path) -> dict[str, Any]:
    """bench_report.md/.json, per renderer cumulative_error.png and pictures/<case>.png (under
    ``<renderer>/`` for all but the simple one). Returns the JSON data: ``overall`` is the first
    renderer's, ``by_renderer`` every renderer's."""
    from fastsider.report import markdown_table

    by = {}
    for c in result.cases:
        by.setdefault(c.renderer, []).append(c)
    summaries = {r: overall(cs) for r, cs in by.items()}
    data = {"config": to_dict(result.config), "seconds": result.seconds,
            "overall": next(iter(summaries.values()), {}), "by_renderer": summaries,
            "cases": [{"name": c.name, "renderer": c.renderer, "seed": c.seed, "coarse": c.coarse.to_json_dict(),
                       "detailed": c.detailed.to_json_dict(), "highpass": c.highpass, "seconds": c.seconds,
                       "peak_memory_mb": c.peak_memory_mb, "device": c.device, "implementation": c.implementation}
                      for c in result.cases],
            "photos": result.photos}
    with OutputStage(out_dir) as out:
        lines = ["# fastsider bench", "",
                 f"{len(result.cases)} synthetic case(s), {len(result.photos)} timed photo(s); "
                 f"{result.seconds:.0f} s in all.", ""]
        if result.cases:
            c0 = result.cases[0]
            lines += [f"Device `{c0.device}`, networks `{c0.implementation.get('networks')}`, normals "
                      f"`{c0.implementation.get('normals')}`, occupancy grid `{c0.implementation.get('occupancy_grid')}`.",
                      "", "## Renderers side by side (detail stage vs the coarse input, mean over cases)", "",
                      markdown_table(SIDE_HEADERS, side_by_side_rows(summaries, {r: len(cs) for r, cs in by.items()}),
                                     digits=2), ""]
            for renderer, cases in by.items():
                lines += _renderer_section(renderer, cases, summaries[renderer], out, out_dir)
        if result.photos:
            lines += ["", "## Real photos (timing only)", "",
                      markdown_table(("photo", "stage 1 s", "stage 2 s", "total s", "peak RSS MB"),
                                     [[Path(p["photo"]).name, p["seconds"].get("stage1"), p["seconds"].get("stage2"),
                                       p["seconds"].get("total"), p["peak_memory_mb"].get("rss")] for p in result.photos])]
        out.path("bench_report.md").write_text("\n".join(lines) + "\n")
        save_json(out.path("bench_report.json"), data)
        out.commit()
    return data

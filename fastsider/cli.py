"""``fastsider`` command line: ``coarse``, ``fit``. Only this module (and report.py) talks to the user."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from fastsider import __version__
from fastsider.errors import FastsiderError

log = logging.getLogger("fastsider")

EXIT_BAD_INPUT = 2


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", type=Path, help="input photo (JPEG/PNG/WebP/BMP); omit with --example")
    p.add_argument("--example", action="store_true", help="use the embedded example photo (scikit-image's astronaut)")
    p.add_argument("--out", type=Path, required=True, help="output mesh path (*.ply) or folder")
    _add_shared_options(p)
    p.add_argument("--landmarks", type=Path, help="your own 478 MediaPipe landmarks (.npy or .json), skips detection")
    p.add_argument("--flame", type=Path, help="your FLAME model file (generic_model.pkl, flame2023.pkl or .npz)")
    p.add_argument("--flame-embedding", type=Path, help="MediaPipe landmark embedding for FLAME (.npz)")
    p.add_argument("--coarse", type=Path, help="your own coarse mesh instead of fitting; needs --camera")
    p.add_argument("--coarse-units", choices=["mm", "cm", "m"], default="mm",
                   help="units of --coarse and of its camera's world_to_camera translation (DECA, MICA, FLAME: m)")
    p.add_argument("--camera", type=Path, help="camera.json for --coarse (see README)")


def _add_shared_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="preset name (fast, reference) or a TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set stage2.iterations=100 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config's, 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="compute device")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastsider", description="Fine facial geometry from a single photo (fast SIDER).")
    parser.add_argument("--version", action="version", version=f"fastsider {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("coarse", help="landmarks + coarse face mesh, camera.json and overlay.png")
    _add_common(p)
    p = sub.add_parser("fit", help="the full job: coarse face, coarse SDF, photometric details, mesh")
    _add_common(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in the same --out from its last checkpoint")
    p = sub.add_parser("batch", help="one fit per photo of a folder; a rerun skips finished photos")
    p.add_argument("input_dir", type=Path, help="folder of photos (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per photo + manifest.json")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel fits (default: one per GPU, else 1; CPU threads are shared out)")
    p.add_argument("--retry-failed", action="store_true", help="fit again the photos that failed before")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="one Ray task per photo: alone, a local Ray instance; with an address (auto, host:port, "
                        "ray://head:10001), that cluster (IN and OUT on a filesystem shared by its nodes). "
                        "Needs pip install 'fastsider[ray]'")
    _add_shared_options(p)

    p = sub.add_parser("bench", help="synthetic faces with known wrinkles: fit each, report the errors to ground truth")
    p.add_argument("--cases", type=int, default=4, help="number of synthetic cases (default 4)")
    p.add_argument("--case-seed", type=int, default=0, help="seed of the first synthetic case")
    p.add_argument("--photos", type=Path, help="folder of real photos to time as well (no ground truth)")
    p.add_argument("--renderer", default="simple",
                   help="simple (the optimiser's own shading, exact coarse input), cycles (path-traced, "
                        "realistic coarse input; needs the bench extra), or both: simple,cycles")
    p.add_argument("--out", type=Path, required=True, help="report folder (bench_report.md/.json, plots, cases, fits)")
    _add_shared_options(p)

    p = sub.add_parser("gallery", help="fit the real-photo gallery (licence-clear portraits): one picture to judge")
    p.add_argument("--out", type=Path, required=True, help="folder: gallery.png, gallery.json, fits/<photo>/")
    p.add_argument("--photos", default=None, help="comma-separated names (default all: astronaut, grace_hopper, "
                                                  "biden, obama)")
    _add_shared_options(p)

    p = sub.add_parser("eval", help="score meshes against ground truth (NoW protocol)")
    ev = p.add_subparsers(dest="eval_command", required=True)
    q = ev.add_parser("now", help="NoW challenge: align to scans by 7 landmarks + refinement, scan-to-mesh errors")
    q.add_argument("--predictions", type=Path, required=True,
                   help="folder laid out like NoW's images: <subject>/<type>/<name>.obj + .npy, or <name>/mesh.ply"
                        " + landmarks7.txt as fastsider writes them")
    q.add_argument("--now-root", type=Path, required=True, help="NoW dataset folder (scans, scans_lmks_onlypp, lists)")
    q.add_argument("--split", choices=["val", "test"], default="val")
    q.add_argument("--out", type=Path, required=True, help="report folder (now_table.md, now_results.json, plot)")
    q.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, markup=False)], force=True)
    for noisy in ("trimesh", "PIL", "matplotlib", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _out_paths(out: Path, default_mesh: str) -> tuple[Path, str]:
    """``--out x.ply`` -> (folder of x.ply, "x.ply"); ``--out folder`` -> (folder, default name)."""
    if out.suffix.lower() in (".ply", ".obj", ".stl", ".off"):
        return out.parent if str(out.parent) else Path("."), out.name
    return out, default_mesh


def _load_cfg(args: argparse.Namespace):
    from fastsider.config import load_config

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f'device="{args.device}"')
    return load_config(args.config, overrides)


def _inputs(args: argparse.Namespace):
    from fastsider.stages.prepare import CoarseInputs

    if args.example == (args.image is not None):
        raise FastsiderError("give an input photo or --example (not both)")
    return CoarseInputs(landmarks=args.landmarks, flame=args.flame, flame_embedding=args.flame_embedding,
                        mesh=args.coarse, camera=args.camera, mesh_units=args.coarse_units)


def cmd_coarse(args: argparse.Namespace) -> int:
    from fastsider.io import OutputStage
    from fastsider.stages.export import write_coarse_outputs
    from fastsider.stages.prepare import prepare

    cfg = _load_cfg(args)
    inputs = _inputs(args)
    out_dir, mesh_name = _out_paths(args.out, "coarse.ply")
    with OutputStage(out_dir, expect=(mesh_name,)) as out:  # checks the folder is writable before any work
        prep = prepare(args.image, cfg, inputs)
        write_coarse_outputs(out, prep, mesh_name)
        out.commit()
    err = f", landmark reprojection {prep.reprojection_px:.2f} px" if prep.reprojection_px is not None else ""
    log.info("coarse mesh (%s, %d vertices) -> %s%s", prep.coarse.source, len(prep.coarse.vertices),
             out_dir / mesh_name, err)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from fastsider.stages.fit import run_fit

    cfg = _load_cfg(args)
    inputs = _inputs(args)
    out_dir, mesh_name = _out_paths(args.out, "mesh.ply")
    with _ProgressBars() as bars:
        summary = run_fit(args.image, cfg, inputs, out_dir, mesh_name, progress=bars.update, resume=args.resume)
    log.info("detailed mesh -> %s (%.1f s in all)", out_dir / mesh_name, summary["seconds"]["total"])
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    import functools

    from rich.console import Console

    from fastsider.report import print_table
    from fastsider.stages.batch import MANIFEST_NAME, run_batch

    cfg = _load_cfg(args)
    if args.jobs is not None and args.jobs < 1:
        raise FastsiderError("--jobs must be at least 1")
    executor = None
    if args.ray is not None:
        from fastsider.stages.batch_ray import RayExecutor, check_reachable, require_ray

        require_ray()
        check_reachable(args.ray)  # a wrong address: one line before any output
        executor = functools.partial(RayExecutor, address=args.ray, verbose=args.verbose)
    with _BatchBar() as bar:
        result = run_batch(args.input_dir, args.out, cfg, args.jobs, args.retry_failed, bar.update, executor)
    print_table(f"fastsider batch -> {args.out}", ("photo", "status", "seconds", "reason"),
                [[rel, rec.status, rec.seconds, rec.reason or ""] for rel, rec in sorted(result.records.items())],
                digits=1)
    console = Console(stderr=True)
    done = [r.seconds for r in result.records.values() if r.status == "done"]
    per_image = f", {sum(done) / len(done):.1f} s per photo" if done else ""
    failed_before = sum(r.status == "failed" for r in result.skipped.values())
    console.print(f"done {len(done)}, failed {result.count('failed') + result.count('crashed')}, "
                  f"skipped {len(result.skipped)} (finished earlier, {failed_before} of them failed){per_image}")
    if result.interrupted:
        raise KeyboardInterrupt
    failed = result.count("failed", True) + result.count("crashed")
    if failed:
        print(f"fastsider: {failed} photo(s) failed; reasons in {args.out / MANIFEST_NAME}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util

    from fastsider.eval.bench import RENDERERS, run_bench
    from fastsider.eval.bench_report import TERMINAL_HEADERS, terminal_rows, write_bench_report
    from fastsider.report import print_table
    from fastsider.stages.batch import find_images

    cfg = _load_cfg(args)
    if args.cases < 0:
        raise FastsiderError("--cases must be 0 or more")
    renderers = tuple(dict.fromkeys(r.strip() for r in args.renderer.split(",")))
    if not set(renderers) <= set(RENDERERS):
        raise FastsiderError(f"--renderer {args.renderer!r}: choose from {', '.join(RENDERERS)} (comma-separated)")
    if "cycles" in renderers and importlib.util.find_spec("bpy") is None:
        raise FastsiderError("--renderer cycles needs Blender's bpy module: pip install -e \".[bench]\" (Python 3.11)")
    photos = find_images(args.photos) if args.photos is not None else None
    with _ProgressBars() as bars:
        result = run_bench(args.out, args.cases, args.case_seed, cfg, photos,
                           progress=lambda what, i, n: bars.update("bench", i, n, {}),
                           renderers=renderers)
        bars.update("bench", args.cases, args.cases, {})
    data = write_bench_report(result, args.out)
    if result.cases:
        print_table("fastsider bench: mean errors to ground truth (mm / degrees)", TERMINAL_HEADERS,
                    terminal_rows(result))
        red = data["overall"]["mean_case_reduction"]
        log.info("detail stage vs coarse (reduction; negative = worse): scan-to-mesh median %+.1f%%, mean %+.1f%%; "
                 "normal error %+.1f%% (wrinkles %+.1f%%) -> %s", 100 * red["scan_to_mesh_median"],
                 100 * red["scan_to_mesh_mean"], 100 * red["normal_mean"], 100 * red["wrinkle_normal_mean"],
                 args.out / "bench_report.md")
        depth = data["overall"]["depth_recovered_mean"]
        log.info("depth recovered (1 = full): %s", ", ".join(
            f"{k.replace('_', ' ')} {v:.2f}" if v is not None else f"{k.replace('_', ' ')} -" for k, v in depth.items()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fastsider.eval.now import run_now_cli

    res = run_now_cli(args.predictions, args.now_root, args.split, args.out)
    log.info("NoW %s: %d of %d images scored (%d missing): median %.3f mm, mean %.3f mm, std %.3f mm -> %s",
             res["split"], res["n_evaluated"], res["n_images"], res["n_missing"], res["median_mm"],
             res["mean_mm"], res["std_mm"], args.out)
    return 0


class _ProgressBars:
    """One rich progress bar per stage, with the stage's latest losses; where the output is a file or a
    pipe (a batch, a cluster job), where bars would show nothing until the end, a log line at the
    first step, every tenth of the stage and the last (``live`` says which)."""

    SHOWN = ("loss", "sdf_mm", "psnr", "hit_fraction")
    LOG_LINES = 10  # progress lines per stage when not on a terminal

    def __init__(self, live: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.live = Console().is_terminal if live is None else live
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[stats]}"), transient=False)
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def update(self, stage: str, step: int, total: int, stats: dict[str, float]) -> None:
        text = "  ".join(f"{k} {stats[k]:.4g}" for k in self.SHOWN if k in stats)
        if not self.live:
            import time

            start = self.started.setdefault(stage, time.perf_counter())
            if step == 1 or step == total or step % max(1, total // self.LOG_LINES) == 0:
                log.info("%s: step %d of %d (%.0f s)%s", stage, step, total, time.perf_counter() - start,
                         f"  {text}" if text else "")
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, stats="")
        if step % 10 == 0 or step == total:
            self.progress.update(self.tasks[stage], completed=step, stats=text)

    def __enter__(self) -> "_ProgressBars":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.stop()


class _BatchBar:
    """The batch's one progress bar: photos finished of those to fit, with the done / failed / running
    counts and the last one finished (fed by run_batch's progress calls: pending, running, outcome)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), transient=False)
        self.task = self.progress.add_task("", total=None)
        self.status: dict[str, str] = {}
        self.counts: Counter[str] = Counter()  # photos per status, kept as they change (batches of thousands)

    def update(self, rel: str, rec) -> None:
        if rel in self.status:
            self.counts[self.status[rel]] -= 1
        self.status[rel] = rec.status
        self.counts[rec.status] += 1
        counts = self.counts
        finished = len(self.status) - counts["pending"] - counts["running"]
        last = f"  (last: {rel} {rec.status})" if rec.status not in ("pending", "running") else ""
        self.progress.update(self.task, total=len(self.status), completed=finished,
                             description=f"done {counts['done']}, failed {counts['failed'] + counts['crashed']}, "
                                         f"running {counts['running']}{last}")

    def __enter__(self) -> "_BatchBar":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def cmd_gallery(args: argparse.Namespace) -> int:
    from fastsider.eval.gallery import PHOTOS, run_gallery

    cfg = _load_cfg(args)
    names = tuple(n.strip() for n in args.photos.split(",")) if args.photos else None
    known = {p.name for p in PHOTOS}
    if names is not None and not set(names) <= known:
        raise FastsiderError(f"--photos: unknown {sorted(set(names) - known)}; known: {sorted(known)}")
    with _ProgressBars() as bars:
        picture = run_gallery(args.out, cfg, names, progress=lambda what, i, n: bars.update("gallery", i, n, {}))
    log.info("gallery -> %s", picture)
    return 0


COMMANDS = {"coarse": cmd_coarse, "fit": cmd_fit, "batch": cmd_batch, "bench": cmd_bench, "gallery": cmd_gallery,
            "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except FastsiderError as exc:
        print(f"fastsider: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        what = {"fit": "no outputs were written; rerun with --resume to continue",
                "batch": "finished photos are kept; rerun the batch to continue"}
        print(f"fastsider: interrupted; {what.get(args.command, 'no outputs were written')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Compare fastsider (the fast preset) with the reference (the paper's configuration) on one photo.

    python tools/compare_to_reference.py face.jpg --out report/
    python tools/compare_to_reference.py --example --out report/ --budget time

One coarse fit, then one fit per preset from it (each in its own process), then report.md,
report.json and comparison.png in --out: speed per stage with the reference/fast ratios measured
in this run, and how far apart the two meshes are (and from --gt when given). The logic lives in
fastsider/eval/compare.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fastsider.errors import FastsiderError

EXIT_BAD_INPUT = 2
PROG = "compare_to_reference"


def build_parser() -> argparse.ArgumentParser:
    from fastsider.eval.compare import DEFAULT_ITERATIONS

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("image", nargs="?", type=Path, help="input photo; omit with --example")
    p.add_argument("--example", action="store_true", help="use the embedded example photo")
    p.add_argument("--out", type=Path, required=True, help="report folder (coarse/, fast/, reference/, logs/ inside)")
    p.add_argument("--budget", choices=["iterations", "time"], default="iterations",
                   help="iterations: both presets run the same counts; time: the reference gets the fast run's "
                        "measured stage times as limits")
    p.add_argument("--stage1-iterations", type=int, default=None,
                   help=f"stage 1 steps (iterations budget: both, default {DEFAULT_ITERATIONS[0]}; time: fast's)")
    p.add_argument("--stage2-iterations", type=int, default=None,
                   help=f"stage 2 steps (iterations budget: both, default {DEFAULT_ITERATIONS[1]}; time: fast's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both presets (repeatable); the budget's counts and limits win")
    p.add_argument("--seed", type=int, default=0, help="random seed of both fits (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="compute device of both fits")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per fit (default: torch's); 1 keeps timings sane when other jobs share the CPU")
    p.add_argument("--landmarks", type=Path, help="your own 478 MediaPipe landmarks (.npy or .json)")
    p.add_argument("--flame", type=Path, help="FLAME model file for the coarse fit")
    p.add_argument("--flame-embedding", type=Path, help="MediaPipe landmark embedding for FLAME (.npz)")
    p.add_argument("--coarse", type=Path, help="your own coarse mesh (mm) instead of the coarse fit; needs --camera")
    p.add_argument("--camera", type=Path, help="camera.json for --coarse")
    p.add_argument("--gt", type=Path, help="ground-truth mesh in the coarse mesh's frame (e.g. a bench case's gt.ply)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class StatusLines:
    """One rich progress line per subprocess (coarse, fast, reference), fed by compare's progress callback."""

    def __init__(self) -> None:
        from rich import get_console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(finished_text="-"), TextColumn("{task.description:<10}"), BarColumn(),
                                 TextColumn("{task.fields[count]:>9}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[note]}"), console=get_console())
        self.tasks: dict[str, int] = {}

    def update(self, task: str, completed: int | None, total: int | None, note: str) -> None:
        if task not in self.tasks:
            for earlier in self.tasks.values():  # the subprocesses run one after the other
                self.progress.update(earlier, total=1, completed=1)
                self.progress.stop_task(earlier)
            self.tasks[task] = self.progress.add_task(task, total=None, count="", note="")
        if completed is not None:  # a stage's step count; total None: a time budget
            self.progress.update(self.tasks[task], completed=completed, total=total,
                                 count=f"{completed}" if total is None else f"{completed}/{total}")
        self.progress.update(self.tasks[task], note=note)

    def __enter__(self) -> "StatusLines":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        for t in self.tasks.values():
            self.progress.update(t, total=1, completed=1)
        self.progress.stop()


def run_tool(prog: str, run_fn, args: argparse.Namespace, kept: Path) -> int:
    """``run_fn(args)`` with the fit's logging; a bad input is one line on stderr (exit 2), Ctrl-C one
    line saying where the finished fits are (exit 130). Shared by the tools in this folder."""
    from fastsider.cli import _setup_logging

    _setup_logging(args.verbose)
    try:
        return run_fn(args)
    except FastsiderError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished fits are kept in {kept}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(PROG, run, args, args.out)


def run(args: argparse.Namespace) -> int:
    from fastsider.eval.compare import CompareRequest, run_compare
    from fastsider.eval.compare_metrics import FAST, REFERENCE
    from fastsider.eval.compare_report import QUALITY_HEADERS, SPEED_HEADERS, quality_rows, speed_rows
    from fastsider.report import print_table

    if args.example == (args.image is not None):
        raise FastsiderError("give an input photo or --example (not both)")
    req = CompareRequest(image=args.image, out=args.out, budget=args.budget,
                         stage1_iterations=args.stage1_iterations, stage2_iterations=args.stage2_iterations,
                         overrides=tuple(args.overrides), seed=args.seed, device=args.device,
                         landmarks=args.landmarks, flame=args.flame, flame_embedding=args.flame_embedding,
                         coarse=args.coarse, camera=args.camera, gt=args.gt, threads=args.threads)
    with StatusLines() as status:
        data = run_compare(req, status.update)
    fast, ref = data["presets"][FAST], data["presets"][REFERENCE]
    print_table("fastsider vs reference: speed", SPEED_HEADERS, speed_rows(fast, ref))
    print_table("fastsider vs reference: surfaces (mm, degrees)", QUALITY_HEADERS, quality_rows(data["quality"]))
    sp = data["speedup"]
    # the fast preset takes no stage-1 steps (the coarse SDF on a lattice): no per-step ratio there
    stage1 = (f"{sp['stage1_per_iteration']:.1f}x faster in stage 1" if sp["stage1_per_iteration"]
              else "has no stage-1 steps")
    logging.getLogger(PROG).info(
        "per iteration fast %s, %.1fx faster in stage 2; whole fit %.1fx; meshes %.3f mm apart (Chamfer) -> %s",
        stage1, sp["stage2_per_iteration"] or float("nan"), sp["total_wall"] or float("nan"),
        data["quality"]["fast_vs_reference"]["chamfer_mm"] or float("nan"), args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

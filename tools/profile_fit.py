"""Time whole fits as a user runs them: per-stage wall time, steps per second, peak memory.

    python tools/profile_fit.py --out speed/                       # the example, 3 runs
    python tools/profile_fit.py --out speed/ --case bench/cases/case_000 --threads 2

The fast preset's `fastsider fit` --runs times per input (the example, then each --case bench
folder), each a fresh process timed from outside, with the load average around it; then one short
reference fit per input for its seconds per stage-2 step. Writes speed_report.md and
speed_report.json in --out (fits in fits/, their logs in logs/). The logic lives in
fastsider/eval/speed.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tool's progress lines

from compare_to_reference import EXIT_BAD_INPUT, StatusLines, run_tool  # noqa: F401 (its exit code, for callers)


PROG = "profile_fit"


def build_parser() -> argparse.ArgumentParser:
    from fastsider.eval.speed import REFERENCE_STAGE1_STEPS

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="report folder (fits/ and logs/ inside)")
    p.add_argument("--runs", type=int, default=3, help="fast-preset fits per input (default 3; the median counts)")
    p.add_argument("--case", dest="cases", type=Path, action="append", default=[], metavar="BENCH_CASE_DIR",
                   help="a bench case folder (image.png, coarse.ply, camera.json) to time too (repeatable)")
    p.add_argument("--reference-steps", type=int, default=10,
                   help="stage-2 steps of the reference fit that measures its step time (default 10; 0: none)")
    p.add_argument("--reference-stage1-steps", type=int, default=REFERENCE_STAGE1_STEPS,
                   help=f"stage-1 steps of that fit (default {REFERENCE_STAGE1_STEPS}: enough to leave a surface)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per fit (default: torch's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every fit (repeatable); the reference fit's step counts win")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(PROG, run, args, args.out / "fits")


def run(args: argparse.Namespace) -> int:
    from fastsider.eval.speed import (
        HEADLINE_HEADERS,
        SpeedRequest,
        headline_rows,
        run_speed,
    )
    from fastsider.report import print_table

    req = SpeedRequest(out=args.out, runs=args.runs, cases=tuple(args.cases), reference_steps=args.reference_steps,
                       reference_stage1_steps=args.reference_stage1_steps, threads=args.threads,
                       overrides=tuple(args.overrides))
    with StatusLines() as status:
        data = run_speed(req, status.update)
    print_table(f"fastsider speed ({args.runs} run(s) per input) -> {args.out / 'speed_report.md'}",
                HEADLINE_HEADERS, headline_rows(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

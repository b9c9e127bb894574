"""Progress people can follow: log lines instead of bars when the output is not a terminal, and
summary.json's stage times (stages.fit.Laps) adding up to the total."""

from __future__ import annotations

import logging
import time

import pytest


def test_without_a_terminal_a_stage_logs_a_line_every_tenth_of_its_steps(caplog):
    from fastsider.cli import _ProgressBars

    with caplog.at_level(logging.INFO, logger="fastsider"), _ProgressBars(live=False) as bars:
        for step in range(1, 101):
            bars.update("stage 2 (details)", step, 100, {"loss": 0.5, "psnr": 30.0, "other": 1.0})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage 2 (details): step")]
    assert len(lines) == 11  # step 1, then 10, 20, ... 100
    assert lines[0].startswith("stage 2 (details): step 1 of 100") and "loss 0.5" in lines[0] and "other" not in lines[0]
    assert lines[-1].startswith("stage 2 (details): step 100 of 100")


def test_laps_add_up_to_the_total():
    from fastsider.stages.fit import Laps

    laps = Laps()
    for name in ("prepare", "setup", "stage1", "stage2", "outputs"):
        time.sleep(0.002)
        laps.lap(name, {"part": 1.0} if name == "outputs" else None)
    seconds = laps.seconds()
    assert list(seconds) == ["prepare", "setup", "stage1", "stage2", "outputs", "total"]
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(seconds["total"], abs=1e-9)
    assert all(v > 0 for v in seconds.values()) and laps.parts == {"outputs": {"part": 1.0}}

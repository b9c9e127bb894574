"""`fastsider fit` runs that survive: determinism, kill/Ctrl-C and resume, refused checkpoints, a NaN
rolled back and persistent divergence stopped with the last good mesh (real runs, subprocesses
and signals; the loop's own guard is tests/test_loop.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsider.cli import main
from fastsider.stages.fit import PARTIAL_DIR, checkpoint_file
from fit_helpers import fit_argv, mesh_vertices

pytestmark = pytest.mark.slow  # whole fits


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastsider.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, stage: str, min_step: int, timeout: float = 400):
    ckpt = checkpoint_file(out)
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read()
        if ckpt.is_file():
            state = torch.load(ckpt, weights_only=False)  # replaced atomically: always whole
            if state["stage"] == stage and state["loop"]["step"] >= min_step:
                return state
        time.sleep(0.05)
    raise AssertionError(f"no {stage} checkpoint at step >= {min_step} within {timeout} s")


RESUMABLE = ("run.checkpoint_every=20", "stage2.iterations=60", "stage2.snapshot_every=10")  # checkpoints at 20, 40


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, example_files):
    """The uninterrupted run the interrupted ones must reproduce: its output folder."""
    photo, lmk = example_files
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(fit_argv(photo, lmk, out, *RESUMABLE)) == 0
    return out


def _resume_and_compare(argv: list[str], out: Path, reference: Path) -> None:
    assert main(argv + ["--resume"]) == 0
    np.testing.assert_allclose(mesh_vertices(out / "mesh.ply"), mesh_vertices(reference / "mesh.ply"), atol=1e-4)


def test_same_seed_gives_identical_outputs(tmp_path, example_files, reference_run):
    photo, lmk = example_files
    ref = reference_run
    assert main(fit_argv(photo, lmk, tmp_path, *RESUMABLE)) == 0
    assert np.array_equal(mesh_vertices(ref / "mesh.ply"), mesh_vertices(tmp_path / "mesh.ply"))
    assert np.array_equal(np.load(ref / "depth.npy"), np.load(tmp_path / "depth.npy"))
    assert not (tmp_path / PARTIAL_DIR).exists()  # a finished run leaves no checkpoint behind


def test_a_cpu_fit_optimizes_in_deterministic_mode_and_leaves_it_as_it_was(tmp_path, example_files, monkeypatch):
    import fastsider.stages.fit as fit_module

    seen = []
    real = fit_module.fit_details

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)
    monkeypatch.setattr(fit_module, "fit_details", spy)
    photo, lmk = example_files
    assert not torch.are_deterministic_algorithms_enabled()
    assert main(fit_argv(photo, lmk, tmp_path, "device=cpu")) == 0
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_killed_run_resumes_to_the_same_mesh(tmp_path, example_files, reference_run):
    photo, lmk = example_files
    argv = fit_argv(photo, lmk, tmp_path, *RESUMABLE)
    proc = _start(argv)
    _wait_for_checkpoint(proc, tmp_path, "stage2", 20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "mesh.ply").exists()
    _resume_and_compare(argv, tmp_path, reference_run)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == "stage2 step 20"


def test_ctrl_c_leaves_no_outputs_and_resumes(tmp_path, example_files, reference_run):
    photo, lmk = example_files
    argv = fit_argv(photo, lmk, tmp_path, *RESUMABLE)
    proc = _start(argv)
    _wait_for_checkpoint(proc, tmp_path, "stage2", 20)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert [p.name for p in tmp_path.iterdir()] == [PARTIAL_DIR]  # nothing but the hidden state
    _resume_and_compare(argv, tmp_path, reference_run)


def test_a_checkpoint_from_another_config_or_input_is_refused(tmp_path, example_files, capsys):
    photo, lmk = example_files
    # the paper's path (stage-1 MLP fit), so stage-1 checkpoints are covered too
    argv = fit_argv(photo, lmk, tmp_path, "run.checkpoint_every=20", "stage1.iterations=40",
                    "model.sdf=mlp", "model.detail=mlp", "stage2.sdf_weight=100")
    proc = _start(argv)
    _wait_for_checkpoint(proc, tmp_path, "stage1", 20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(argv + ["--set", "stage2.mlp.lr=0.01", "--resume"]) == 2
    assert "different config" in capsys.readouterr().err
    other = tmp_path.parent / "other_landmarks.npy"
    np.save(other, np.load(lmk) + 0.5)
    moved = [other if a == str(lmk) else a for a in argv]
    assert main([str(a) for a in moved] + ["--resume"]) == 2
    assert "different input" in capsys.readouterr().err
    assert checkpoint_file(tmp_path).is_file()  # kept for a right resume
    assert not (tmp_path / "mesh.ply").exists()


def _poison_color_loss(monkeypatch, bad_calls):
    """Make the stage-2 colour term NaN on the given call numbers."""
    from fastsider.sdf import losses

    real, calls = losses.color_l1, {"n": 0}

    def poisoned(pred, target):
        calls["n"] += 1
        value = real(pred, target)
        return value * float("nan") if calls["n"] in bad_calls else value
    monkeypatch.setattr(losses, "color_l1", poisoned)


def test_fit_with_an_injected_nan_rolls_back_and_finishes(tmp_path, example_files, monkeypatch):
    photo, lmk = example_files
    _poison_color_loss(monkeypatch, {3})
    assert main(fit_argv(photo, lmk, tmp_path, "stage2.iterations=8", "run.guard_every=2")) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stage2"]["rollbacks"] == 1 and summary["diverged"] is None
    assert np.isfinite(mesh_vertices(tmp_path / "mesh.ply")).all()


def test_fit_that_keeps_diverging_stops_with_an_error_and_the_last_good_mesh(tmp_path, example_files,
                                                                            monkeypatch, capsys):
    photo, lmk = example_files
    _poison_color_loss(monkeypatch, set(range(5, 1000)))
    assert main(fit_argv(photo, lmk, tmp_path, "stage2.iterations=8", "run.guard_every=2",
                         "run.max_rollbacks=2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 2 diverged" in err[0] and "last good state" in err[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] and summary["stage2"]["diverged"]
    mesh = mesh_vertices(tmp_path / "mesh.ply")
    assert len(mesh) > 100 and np.isfinite(mesh).all()

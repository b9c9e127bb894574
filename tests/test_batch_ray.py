"""`fastsider batch --ray`: the local batch's manifest, skip and resume semantics on Ray tasks; a worker
killed mid-fit is retried from its checkpoint; Ctrl-C leaves a consistent manifest and no Ray behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra (pip install -e '.[ray]') brings Ray; CI installs it")

from fastsider.cli import main  # noqa: E402
from fastsider.config import load_config  # noqa: E402
from fastsider.stages.fit import PARTIAL_DIR, checkpoint_file  # noqa: E402
from fit_helpers import TINY_FIT, set_flags  # noqa: E402

# stage 2 checkpoints at step 5, then runs on for some seconds (55 more steps, the outputs): the window
# in which the test kills the fit's worker, so that its retry has a checkpoint to resume from
RAY_FIT = (*TINY_FIT, "stage2.iterations=60", "stage2.snapshot_every=0", "run.checkpoint_every=5")


def _argv(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(inp), "--out", str(out), "--seed", "1", *extra, *set_flags(*RAY_FIT)]


def _photos(tmp_path: Path, photo: Path, broken: bool = True) -> Path:
    inp = tmp_path / "photos"
    inp.mkdir()
    shutil.copy(photo, inp / "a.png")
    shutil.copy(photo, inp / "b.png")
    if broken:
        (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return inp


def _task_pids(rel: str) -> list[int]:
    """The processes running the Ray task of photo ``rel`` (its process title: 'ray::fastsider fit <rel>')."""
    title = f"ray::fastsider fit {rel}".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().rstrip(b"\0 ") == title:
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def _kill_at_first_checkpoint(out: Path, folders: dict[str, str], killed: list, timeout: float = 240.0) -> None:
    """Watch for the first checkpoint of one of the photos' fits, then SIGKILL the worker running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rel, folder in folders.items():
            if checkpoint_file(out / folder).is_file():
                for pid in _task_pids(rel):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((rel, pid))
                    return
        time.sleep(0.05)


@pytest.mark.slow  # a local Ray instance, two fits and a retry
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the Ray worker through /proc")
def test_ray_batch_survives_a_killed_worker_records_the_failure_and_reruns_for_free(tmp_path, example_files,
                                                                                   monkeypatch, capsys):
    inp, out = _photos(tmp_path, example_files[0]), tmp_path / "meshes"
    killed: list[tuple[str, int]] = []
    killer = threading.Thread(target=_kill_at_first_checkpoint, args=(out, {"a.png": "a_png", "b.png": "b_png"},
                                                                      killed), daemon=True)
    killer.start()
    # the CLI's local Ray: 2 CPUs on this 2-core machine, one per fit (--jobs 2); shut down at the end
    assert main(_argv(inp, out, "--jobs", "2", "--ray")) == 1  # one photo failed, the others done
    killer.join(timeout=1)
    assert not ray.is_initialized()
    assert killed, "no fit was seen with a checkpoint to kill"
    rel, pid = killed[0]
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    err = capsys.readouterr().err
    assert "1 photo(s) failed" in err

    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert {k: v["status"] for k, v in manifest.items()} == {"a.png": "done", "b.png": "done", "broken.jpg": "failed"}
    assert "broken.jpg" in manifest["broken.jpg"]["reason"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written manifest
    for photo in ("a.png", "b.png"):
        rec = manifest[photo]
        assert rec["reason"] is None and rec["seconds"] > 0
        assert (out / rec["out"] / "mesh.ply").is_file() and not (out / rec["out"] / PARTIAL_DIR).exists()
    assert not (out / "broken_jpg").exists()
    summary = json.loads((out / manifest[rel]["out"] / "summary.json").read_text())
    assert summary["resumed_from"].startswith("stage2 step"), summary["resumed_from"]  # the retry took the checkpoint
    other = "b.png" if rel == "a.png" else "a.png"
    assert json.loads((out / manifest[other]["out"] / "summary.json").read_text())["resumed_from"] is None

    from fastsider.stages import batch

    def no_work(*args, **kwargs):
        raise AssertionError("a finished batch did work again")
    monkeypatch.setattr(batch, "fit_one", no_work)
    monkeypatch.setattr(ray, "init", no_work)  # nothing to fit: Ray is not even started
    assert main(_argv(inp, out, "--jobs", "2", "--ray")) == 1  # the failure is still reported
    assert "skipped 3" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["images"] == manifest


@pytest.mark.slow  # a local Ray instance and a fit up to its interrupt
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the Ray worker through /proc")
def test_ray_batch_ctrl_c_marks_the_running_fits_interrupted_and_stops_ray(tmp_path, example_files):
    inp, out = _photos(tmp_path, example_files[0], broken=False), tmp_path / "meshes"
    (inp / "b.png").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, as a terminal's foreground job: the Ctrl-C goes to the whole process group
    proc = subprocess.Popen([sys.executable, "-m", "fastsider.cli", *_argv(inp, out, "--ray")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _task_pids("a.png") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _task_pids("a.png"), "the fit's Ray task never started"
        workers = _task_pids("a.png")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted; finished photos are kept" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert manifest["a.png"]["status"] == "interrupted" and "rerun" in manifest["a.png"]["reason"]
    assert not (out / "a_png" / "mesh.ply").exists()
    time.sleep(1)  # the local Ray instance was shut down: its workers are gone
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text()]


def test_the_broken_photos_reason_comes_back_from_the_ray_task(tmp_path):
    """What a Ray task returns for a photo that cannot be read (run here, without Ray)."""
    import torch

    from fastsider.stages.batch_ray import ray_fit

    photo = tmp_path / "broken.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    threads = torch.get_num_threads()
    status, seconds, reason = ray_fit(str(photo), str(tmp_path / "out"), load_config(None, list(TINY_FIT)), threads)
    assert status == "failed" and "broken.jpg" in reason and seconds >= 0
    assert torch.get_num_threads() == threads and not (tmp_path / "out").exists()


def test_ray_tasks_take_a_gpu_each_where_there_are_gpus_else_a_share_of_the_cpus():
    from fastsider.errors import InputError
    from fastsider.stages.batch_ray import TaskPlan, plan_tasks

    auto, cpu, cuda = (load_config(None, [f'device="{d}"']) for d in ("auto", "cpu", "cuda"))
    two_gpu_nodes = [{"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 2}, {"CPU": 4}]
    cluster = {"CPU": 28, "GPU": 4}
    assert plan_tasks(cluster, two_gpu_nodes, None, auto) == TaskPlan(cpus=4, gpus=1, slots=4)
    assert plan_tasks(cluster, two_gpu_nodes, 2, auto) == TaskPlan(cpus=4, gpus=1, slots=2)
    # CPUs only: --jobs shares them out (within what one node has); without, the smallest node's CPUs each
    assert plan_tasks(cluster, two_gpu_nodes, 7, cpu) == TaskPlan(cpus=4, gpus=0, slots=7)
    assert plan_tasks(cluster, two_gpu_nodes, 2, cpu) == TaskPlan(cpus=8, gpus=0, slots=2)
    assert plan_tasks(cluster, two_gpu_nodes, None, cpu) == TaskPlan(cpus=4, gpus=0, slots=7)
    assert plan_tasks({"CPU": 2}, [{"CPU": 2}], 2, auto) == TaskPlan(cpus=1, gpus=0, slots=2)
    assert plan_tasks({"CPU": 2}, [{"CPU": 2}], 5, auto) == TaskPlan(cpus=1, gpus=0, slots=2)
    with pytest.raises(InputError, match="no GPUs"):
        plan_tasks({"CPU": 2}, [{"CPU": 2}], None, cuda)


def test_a_photo_whose_worker_dies_on_every_attempt_is_recorded_crashed_with_the_reason(monkeypatch):
    from ray.exceptions import TaskCancelledError, WorkerCrashedError

    from fastsider.stages.batch_ray import MAX_RETRIES, RayExecutor

    ex = RayExecutor(load_config(None, []), None, 1)
    outcomes = []
    for error in (WorkerCrashedError(), TaskCancelledError()):
        def get(handle, error=error):
            raise error
        monkeypatch.setattr(ray, "get", get)
        outcomes.append(ex.outcome(object()))
    (crashed, _, reason), (interrupted, _, why) = outcomes
    assert crashed == "crashed" and f"all {MAX_RETRIES + 1} attempts" in reason and "rerun" in reason
    assert interrupted == "interrupted" and "rerun" in why

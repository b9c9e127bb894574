"""``fastsider batch``: one fit per photo of a folder, resumable through a manifest of input hashes.

Each photo's outputs go to ``OUT/<relative path, suffix as _ext>/`` (:func:`output_folders`).
``OUT/manifest.json`` records, per photo, its hash, the config hash, the status (done / failed /
interrupted), the reason of a failure and the seconds spent; it is rewritten atomically after
every photo. A rerun skips photos
whose hash and config are unchanged (failed ones too, unless ``retry_failed``) and resumes
interrupted fits from their checkpoints. One failing photo never stops the others.

The fits run in this process (one job), in a local process pool (:class:`PoolExecutor`) or on a Ray
cluster (``fastsider.stages.batch_ray``); :func:`run_parallel` is the batch logic both executors share.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

from fastsider.config import FitConfig
from fastsider.errors import FastsiderError, InputError, OutputError
from fastsider.io import lock_folder
from fastsider.stages.checkpoint import CheckpointError, config_hash, file_hash

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MANIFEST_NAME = "manifest.json"

# (photo's relative path, its record) -> None, for each photo to fit with its status "pending", then
# "running" when its fit starts, then its outcome; the CLI's progress bar counts them
BatchProgress = Callable[[str, "ImageRecord"], None]
Outcome = tuple[str, float, "str | None"]  # a fit's (status, seconds, reason)
INTERRUPTED = "interrupted; rerun the batch to resume"


@dataclass
class ImageRecord:
    status: str                 # "done" | "failed" | "interrupted" | "crashed" (the last two are redone)
    input_hash: str
    config_hash: str
    out: str                    # output folder, relative to the batch's OUT
    seconds: float = 0.0
    reason: str | None = None   # why it failed


@dataclass
class BatchResult:
    records: dict[str, ImageRecord]   # every photo of this run, by relative path
    skipped: dict[str, ImageRecord]   # done (or failed) earlier with the same hash and config
    interrupted: bool

    def count(self, status: str, include_skipped: bool = False) -> int:
        records = [*self.records.values(), *(self.skipped.values() if include_skipped else ())]
        return sum(r.status == status for r in records)


def find_images(input_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Photos under ``input_dir`` (recursive), not in hidden folders nor under ``exclude`` (the
    batch's own output folder, which may sit inside the input folder)."""
    if not input_dir.is_dir():
        raise InputError(f"input folder not found: {input_dir}")
    skip = exclude.resolve() if exclude is not None else None

    def wanted(p: Path) -> bool:
        rel = p.relative_to(input_dir).parts
        return (p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(r.startswith(".") for r in rel)
                and not (skip is not None and p.resolve().is_relative_to(skip)))
    images = sorted(p for p in input_dir.rglob("*") if wanted(p))
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    return images


def output_folders(rels: list[Path], earlier: dict[str, str] | None = None) -> dict[str, str]:
    """Output folder per photo (relative paths, posix): the photo's path with its suffix as '_ext'
    (sub/a.jpg -> sub/a_jpg), and '-2', '-3' ... after a name another photo has, compared without
    case (a.jpg, a.JPG -> a_jpg, a_jpg-2), as on case-insensitive file systems.

    ``earlier``: the folders earlier runs gave (the manifest's), kept for their photos and never
    given to another one.
    """
    wanted = {r.as_posix() for r in rels}
    folders: dict[str, str] = {}
    used: set[str] = set()
    for rel, folder in sorted((earlier or {}).items()):
        if folder.casefold() not in used:
            used.add(folder.casefold())
            if rel in wanted:
                folders[rel] = folder
    for r in sorted(rels):
        if r.as_posix() in folders:
            continue
        base = name = f"{r.with_suffix('').as_posix()}_{r.suffix.lstrip('.').lower()}"
        k = 2
        while name.casefold() in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name.casefold())
        folders[r.as_posix()] = name
    return folders


def load_manifest(out_dir: Path) -> dict[str, ImageRecord]:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: ImageRecord(**v) for k, v in data["images"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read batch manifest {path}: {exc}") from None


def save_manifest(out_dir: Path, records: dict[str, ImageRecord]) -> None:
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    try:
        tmp.write_text(json.dumps({"images": {k: asdict(v) for k, v in sorted(records.items())}}, indent=2) + "\n")
        os.replace(tmp, out_dir / MANIFEST_NAME)
    except OSError as exc:  # the manifest before this photo stays whole: a rerun redoes only what it lacks
        raise OutputError(f"cannot write the batch manifest in {out_dir}: {exc.strerror}") from None


def _is_finished(rec: ImageRecord | None, in_hash: str, cfg_hash: str, out_dir: Path, retry_failed: bool) -> bool:
    if rec is None or (rec.input_hash, rec.config_hash) != (in_hash, cfg_hash):
        return False
    if rec.status == "done":
        return (out_dir / rec.out / "summary.json").is_file()
    return rec.status == "failed" and not retry_failed


def fit_one(image: Path, out: Path, cfg: FitConfig) -> Outcome:
    """One fit, resumed from its checkpoint if an earlier batch was interrupted. Never raises
    (except KeyboardInterrupt in-process): returns (status, seconds, reason)."""
    from fastsider.stages.fit import run_fit
    from fastsider.stages.prepare import CoarseInputs

    t0 = time.perf_counter()
    try:
        try:
            run_fit(image, cfg, CoarseInputs(), out, resume=True)
        except CheckpointError as exc:  # a stale checkpoint (other config): start this photo over
            log.warning("%s: %s", image.name, exc)
            run_fit(image, cfg, CoarseInputs(), out, resume=False)
        return "done", time.perf_counter() - t0, None
    except FastsiderError as exc:
        return "failed", time.perf_counter() - t0, str(exc)
    except KeyboardInterrupt:
        return "interrupted", time.perf_counter() - t0, INTERRUPTED
    except Exception as exc:  # one photo's bug must not stop the batch; its reason is recorded
        log.exception("internal error on %s", image)
        return "failed", time.perf_counter() - t0, f"internal error: {type(exc).__name__}: {exc}"


def worker_setup(threads: int, log_format: str = "%(processName)s: %(message)s") -> None:
    """A worker process's share of the CPU threads and its logging (warnings only: a fit's reasons go
    to the manifest). Called in the process pool's workers and in each Ray task."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format=log_format)


def _worker_init(threads: int, gpu_ids: Any) -> None:
    """Pool worker: its share of CPU threads, its own GPU if any; Ctrl-C is handled inside fits only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())
    worker_setup(threads)


def default_jobs(cfg: FitConfig) -> int:
    """One fit per GPU where there are GPUs, else one (a fit already uses every CPU core)."""
    import torch

    if cfg.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


class Executor(Protocol):
    """Where a batch's fits run: the local process pool (:class:`PoolExecutor`) or a Ray cluster
    (``fastsider.stages.batch_ray.RayExecutor``). The batch logic (manifest, skip, resume, progress,
    Ctrl-C) is :func:`run_parallel`'s, the same for both."""

    slots: int  # fits at once; no more are submitted, so that none waits in a queue a Ctrl-C cannot reach

    def submit(self, rel: str, image: Path, out: Path, cfg: FitConfig) -> Any:
        """Start one fit (:func:`fit_one`); returns its handle."""

    def wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has finished; returns the finished ones."""

    def outcome(self, handle: Any) -> Outcome:
        """A finished fit's outcome; a worker that died is an outcome ("crashed"), not an exception."""

    def interrupt(self, handles: list[Any]) -> None:
        """Ctrl-C: have the running fits checkpoint and return "interrupted"."""


# (config, --jobs, number of photos to fit) -> a context manager giving the executor; entered only
# when there is work, so a rerun with nothing to do starts nothing
ExecutorFactory = Callable[[FitConfig, "int | None", int], ContextManager[Executor]]


def run_batch(input_dir: Path, out_dir: Path, cfg: FitConfig, jobs: int | None = None, retry_failed: bool = False,
              progress: BatchProgress | None = None, executor: ExecutorFactory | None = None) -> BatchResult:
    """``executor``: where the fits run (default: in this process for one job, else a process pool)."""
    if input_dir.resolve().is_relative_to(out_dir.resolve()):
        raise InputError(f"--out {out_dir} holds the input folder {input_dir}: its photos would be taken for outputs;"
                         " choose another --out (a folder inside the input folder is fine)")
    images = find_images(input_dir, exclude=out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out_dir}: {exc.strerror}") from None
    lock = lock_folder(out_dir)  # one batch at a time per output folder (the manifest is shared)
    try:
        return _run_locked(input_dir, out_dir, images, cfg, jobs, retry_failed, progress, executor)
    finally:
        if lock is not None:
            os.close(lock)


def _run_locked(input_dir: Path, out_dir: Path, images: list[Path], cfg: FitConfig, jobs: int | None,
                retry_failed: bool, progress: BatchProgress | None, executor: ExecutorFactory | None) -> BatchResult:
    manifest = load_manifest(out_dir)
    folders = output_folders([p.relative_to(input_dir) for p in images], {k: r.out for k, r in manifest.items()})
    cfg_hash = config_hash(cfg)
    todo: list[tuple[str, Path, ImageRecord]] = []
    skipped: dict[str, ImageRecord] = {}
    for image in images:
        rel = image.relative_to(input_dir).as_posix()
        rec = ImageRecord("pending", file_hash(image), cfg_hash, folders[rel])
        if _is_finished(manifest.get(rel), rec.input_hash, cfg_hash, out_dir, retry_failed):
            skipped[rel] = manifest[rel]
        else:
            todo.append((rel, image, rec))
    log.info("batch: %d photos, %d to fit, %d already finished", len(images), len(todo), len(skipped))
    result = BatchResult({}, skipped, interrupted=False)

    def notify(rel: str, rec: ImageRecord) -> None:
        if progress is not None:
            progress(rel, rec)

    def record(rel: str, rec: ImageRecord, outcome: Outcome) -> None:
        rec.status, rec.seconds, rec.reason = outcome
        manifest[rel] = result.records[rel] = rec
        save_manifest(out_dir, manifest)
        notify(rel, rec)

    for rel, _, rec in todo:  # the progress learns the batch's size: each photo pending, running, then its status
        notify(rel, rec)
    if not todo:
        return result
    if executor is None:
        jobs = jobs or default_jobs(cfg)
        executor = PoolExecutor
        if jobs <= 1 or len(todo) <= 1:  # in this process: a Ctrl-C reaches the fit directly
            for rel, image, rec in todo:
                rec.status = "running"
                notify(rel, rec)
                outcome = fit_one(image, out_dir / rec.out, cfg)
                record(rel, rec, outcome)
                if outcome[0] == "interrupted":
                    result.interrupted = True
                    break
            return result
    with executor(cfg, jobs, len(todo)) as ex:
        result.interrupted = run_parallel(ex, todo, out_dir, cfg, record, notify)
    return result


def run_parallel(ex: Executor, todo: list[tuple[str, Path, ImageRecord]], out_dir: Path, cfg: FitConfig,
                 record: Callable[[str, ImageRecord, Outcome], None],
                 notify: Callable[[str, ImageRecord], None]) -> bool:
    """The fits of ``todo`` on ``ex``, at most ``ex.slots`` at once, each recorded as it finishes.
    Returns True if Ctrl-C stopped the batch: then the running fits are asked to checkpoint and are
    recorded "interrupted" (resumed by a rerun), and no new one is started."""
    pending = list(todo)
    running: dict[Any, tuple[str, ImageRecord]] = {}
    interrupted = False
    try:
        while pending or running:
            while pending and len(running) < ex.slots and not interrupted:
                rel, image, rec = pending.pop(0)
                running[ex.submit(rel, image, out_dir / rec.out, cfg)] = (rel, rec)
                rec.status = "running"
                notify(rel, rec)
            if not running:
                break
            for handle in ex.wait(list(running)):
                rel, rec = running.pop(handle)
                outcome = ex.outcome(handle)
                record(rel, rec, outcome)
                interrupted = interrupted or outcome[0] == "interrupted"
    except KeyboardInterrupt:
        interrupted = True
        ex.interrupt(list(running))
        try:
            while running:
                handle = next(iter(running))
                record(*running.pop(handle), ex.outcome(handle))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; what was running is redone by a rerun
            for rel, rec in running.values():
                record(rel, rec, ("interrupted", 0.0, INTERRUPTED))
    return interrupted


class PoolExecutor:
    """``jobs`` local worker processes, each with its share of the CPU threads and a GPU of its own if
    there are GPUs. A terminal's Ctrl-C reaches the workers too: each fit checkpoints and returns."""

    def __init__(self, cfg: FitConfig, jobs: int, n_fits: int) -> None:
        import torch

        self.ctx = get_context("spawn")
        self.gpu_ids = None
        if cfg.device != "cpu" and torch.cuda.is_available():
            self.gpu_ids = self.ctx.Queue()
            for k in range(jobs):
                self.gpu_ids.put(k % torch.cuda.device_count())
        self.slots = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def __enter__(self) -> "PoolExecutor":
        self.pool = ProcessPoolExecutor(self.slots, mp_context=self.ctx, initializer=_worker_init,
                                        initargs=(self.threads, self.gpu_ids))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, rel: str, image: Path, out: Path, cfg: FitConfig) -> Future:
        return self.pool.submit(fit_one, image, out, cfg)

    def wait(self, handles: list[Future]) -> list[Future]:
        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def outcome(self, handle: Future) -> Outcome:
        try:
            return handle.result()
        except BrokenProcessPool:  # a worker was killed (out of memory?): retried next run
            return "crashed", 0.0, "a worker process died (out of memory?); rerun to retry"

    def interrupt(self, handles: list[Future]) -> None:
        pass  # the workers had the terminal's SIGINT too; another would stop them without a checkpoint

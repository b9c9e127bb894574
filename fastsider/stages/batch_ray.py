"""``fastsider batch --ray``: the batch's fits as Ray tasks, one per photo, on a local Ray instance or
an existing cluster. Only the executor differs from the local batch: the manifest, skip-done,
``--retry-failed``, resume and Ctrl-C are :func:`fastsider.stages.batch.run_parallel`'s.

- Resources: one GPU per fit where the cluster has GPUs (and the config does not ask for the CPU),
  with the GPU nodes' CPUs shared out; else CPU threads shared out (``--jobs`` fits at once, or the
  smallest node's CPUs to each fit). Each task sets torch's threads to its CPU count.
- A worker that dies mid-fit (killed, out of memory) is retried by Ray up to :data:`MAX_RETRIES`
  times, resuming from the photo's checkpoint; then it is recorded "crashed" with the reason.
- Ctrl-C cancels the running tasks gracefully (Ray raises the interrupt in each: it checkpoints and
  returns "interrupted"), and a Ray instance this process started is shut down.
- The paths are passed as they are here (made absolute): on a cluster, the input and output folders
  must be on a filesystem every node sees at the same path.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsider.config import FitConfig
from fastsider.errors import FastsiderError, InputError
from fastsider.stages.batch import INTERRUPTED, Outcome, fit_one, worker_setup

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # attempts after a worker died; each resumes from the photo's last checkpoint
INSTALL_HINT = "pip install 'fastsider[ray]'"


def require_ray() -> None:
    """:class:`FastsiderError` (one line, exit 2) if Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise FastsiderError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class TaskPlan:
    cpus: int    # per fit (and its torch threads)
    gpus: int    # per fit: 0 or 1
    slots: int   # fits at once over the cluster


def plan_tasks(cluster: dict[str, float], nodes: list[dict[str, float]], jobs: int | None,
               cfg: FitConfig) -> TaskPlan:
    """Each fit's resources from the cluster's (``ray.cluster_resources()``, each alive node's).

    GPUs (unless ``device = "cpu"``): one per fit, with as many CPUs as the thinnest GPU node has per
    GPU; ``jobs`` caps the fits at once. CPUs only: ``jobs`` fits at once share the CPUs out; without
    ``jobs``, each fit gets as many CPUs as the smallest node has (a fit uses every core it gets).
    """
    node_cpus = [int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1] or [max(1, int(cluster.get("CPU", 1)))]
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
    if cfg.device != "cpu" and gpu_nodes:
        cpus = max(1, min(int(n.get("CPU", 0) // n["GPU"]) for n in gpu_nodes))
        gpus = sum(int(n["GPU"]) for n in gpu_nodes)
        return TaskPlan(cpus, 1, min(jobs or gpus, gpus))
    if cfg.device == "cuda":
        raise InputError("--device cuda: the Ray cluster has no GPUs; use --device auto or cpu")
    cpus = max(1, sum(node_cpus) // jobs) if jobs else min(node_cpus)
    while cpus > 1 and sum(c // cpus for c in node_cpus) < (jobs or 1):  # fewer, so that the nodes hold them
        cpus -= 1
    fit = sum(c // cpus for c in node_cpus)  # fits the nodes hold at once
    return TaskPlan(cpus, 0, max(1, min(jobs or fit, fit)))


def ray_fit(image: str, out: str, cfg: FitConfig, threads: int) -> Outcome:
    """One Ray task: the photo's fit with ``threads`` torch threads (resumed from its checkpoint if an
    earlier attempt was killed). Never raises; Ray's cancel is a Ctrl-C to it."""
    worker_setup(threads, "%(message)s")  # Ray prefixes each line with the task's name and pid
    return fit_one(Path(image), Path(out), cfg)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A head's host:port (or ray://host:port) that nothing answers at: one line now, where Ray itself
    would retry for minutes. "auto" and other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FastsiderError(f"--ray: nothing answers at {address} ({exc.strerror or exc}); is the cluster's "
                             "head running, and the port right?") from None


class RayExecutor:
    """The batch's executor on Ray: an ExecutorFactory once ``address`` and ``verbose`` are bound
    (functools.partial), entered only when there is work.

    ``address`` None or "" starts a local instance (``--jobs`` or all this machine's CPUs, no
    dashboard, no usage stats sent); else ``ray.init(address)`` ("auto", a head's host:port,
    "ray://head:10001"); either is shut down (disconnected) at the end. A Ray already initialized in
    this process is used as it is. ``verbose``: the workers' output comes to this terminal (else it
    stays in Ray's session logs)."""

    def __init__(self, cfg: FitConfig, jobs: int | None, n_fits: int, address: str | None = None,
                 verbose: bool = False) -> None:
        self.cfg, self.jobs = cfg, jobs
        self.address = address or None
        self.verbose = verbose
        self.started = False

    def __enter__(self) -> "RayExecutor":
        import ray

        if not ray.is_initialized():
            self._init(ray)
        try:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
            self.plan = plan_tasks(ray.cluster_resources(), nodes, self.jobs, self.cfg)
        except BaseException:
            self.__exit__()
            raise
        self.remote = ray.remote(num_cpus=self.plan.cpus, num_gpus=self.plan.gpus, max_retries=MAX_RETRIES,
                                 retry_exceptions=False)(ray_fit)
        self.slots = self.plan.slots
        where = f"cluster {self.address}" if self.address is not None else "local instance"
        log.info("ray: %s; each fit %d CPU%s%s, %d at once%s", where, self.plan.cpus, "s" if self.plan.cpus > 1 else "",
                 " + 1 GPU" if self.plan.gpus else "", self.slots,
                 "" if self.verbose else "; the workers' logs stay in Ray's session folder (-v shows them)")
        return self

    def _init(self, ray: Any) -> None:
        common = {"log_to_driver": self.verbose, "logging_level": logging.WARNING}
        try:
            if self.address is None:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
                ray.init(num_cpus=max(self.jobs or 0, os.cpu_count() or 1), include_dashboard=False, **common)
            else:  # the CLI has checked the address (check_reachable) before making any output
                ray.init(address=self.address, **common)
        except FastsiderError:
            raise
        except Exception as exc:  # an address with no cluster, a version mismatch, no room in /tmp
            what = "start a local Ray instance" if self.address is None else f"connect to Ray at {self.address}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FastsiderError(f"--ray: cannot {what}: {first}") from None
        self.started = True

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def submit(self, rel: str, image: Path, out: Path, cfg: FitConfig) -> Any:
        # the task's name is its worker's process title while it runs: "ray::fastsider fit <photo>"
        return self.remote.options(name=f"fastsider fit {rel}").remote(
            str(image.resolve()), str(out.resolve()), cfg, self.plan.cpus)

    def wait(self, handles: list[Any]) -> list[Any]:
        import ray

        done, _ = ray.wait(handles, num_returns=1)
        return done

    def outcome(self, handle: Any) -> Outcome:
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        try:
            return ray.get(handle)
        except TaskCancelledError:  # cancelled before it started
            return "interrupted", 0.0, INTERRUPTED
        except RayTaskError as exc:  # fit_one never raises: an error outside it (the worker's setup)
            return "failed", 0.0, f"internal error: {str(exc).strip().splitlines()[-1]}"
        except RayError as exc:  # the worker or its node died on every attempt
            return "crashed", 0.0, (f"the Ray worker died on all {MAX_RETRIES + 1} attempts ({type(exc).__name__}: "
                                    "killed, or out of memory?); rerun to retry")

    def interrupt(self, handles: list[Any]) -> None:
        import ray

        for handle in handles:  # a KeyboardInterrupt in each task: its fit checkpoints and returns
            ray.cancel(handle, force=False)

"""The optimization loop both stages share: Adam, lr schedule, divergence guard, checkpoints, interrupts.

A stage supplies ``loss_fn() -> {"loss": ..., other terms}``; this module owns everything that
makes long runs safe:
- divergence guard: a non-finite loss or gradient, or a loss ``explode_factor`` x above the recent
  median, rolls the networks and the optimizer back to the last good state (the RNG runs on, so
  the replayed steps draw new batches) and lowers the learning rate; after ``max_rollbacks`` it raises :class:`DivergenceError` with the last good
  state loaded, so the caller can still write its mesh;
- checkpoints every ``checkpoint_every`` steps and at the stage end, through a callback;
- Ctrl-C / SIGTERM: the step in flight finishes, a checkpoint is written, then KeyboardInterrupt.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import statistics
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from fastsider.config import RunConfig
from fastsider.errors import FastsiderError
from fastsider.stages.checkpoint import CheckpointError

log = logging.getLogger(__name__)

EXPLODE_WARMUP = 10      # steps of loss history before the explosion test applies
EXPLODE_HISTORY = 50     # recent good losses whose median is the reference

LossFn = Callable[[], dict[str, torch.Tensor]]
StepCallback = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[dict[str, Any]], None]


class DivergenceError(FastsiderError):
    """Optimization kept diverging after the allowed rollbacks; the model holds the last good state."""

    def __init__(self, message: str, stats: dict[str, float]):
        super().__init__(message)
        self.stats = stats


@dataclass(frozen=True)
class Schedule:
    """lr(step) = base lr * lr_scale * lr_decay ** progress; stops early after max_seconds (> 0).

    ``lr`` is the base lr of the parameter groups that do not carry their own ``base_lr``.

    progress runs from 0 to 1 over all the steps, or with ``decay_steps`` > 0 over the last that
    many (constant lr before them).
    """

    name: str
    iterations: int
    lr: float
    lr_decay: float = 1.0
    max_seconds: float = 0.0
    decay_steps: int = 0

    def lr_at(self, step: int, lr_scale: float, base_lr: float | None = None) -> float:
        span = self.decay_steps if 0 < self.decay_steps < self.iterations else self.iterations
        progress = max(step - (self.iterations - span), 0) / max(span, 1)
        return (self.lr if base_lr is None else base_lr) * lr_scale * self.lr_decay ** progress


@dataclass
class LoopState:
    step: int = 0           # completed steps
    lr_scale: float = 1.0   # lowered by each rollback
    rollbacks: int = 0
    seconds: float = 0.0    # optimization time spent, over all sessions of a resumed run


# --------------------------------------------------------------------------------------------
# interrupts


class _Interrupt:
    requested = False


def interrupt_requested() -> bool:
    return _Interrupt.requested


def raise_if_interrupted() -> None:
    if _Interrupt.requested:
        raise KeyboardInterrupt


@contextmanager
def graceful_interrupts() -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second SIGINT: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _Interrupt.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _Interrupt.requested = True
        log.warning("interrupted: stopping after this step with a checkpoint (Ctrl-C again to stop now)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _Interrupt.requested = False


@contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """On CPU, PyTorch's deterministic kernels for the scope, the previous mode restored after.

    The backward of a gather with index tensors (the height map's cells) accumulates with parallel
    atomic adds on CPU: their order, so the last bits of a gradient, follows thread timing, and a
    busy machine gave the same seed a mesh 1e-4 mm apart. The deterministic kernel adds serially.
    On CUDA this is left alone: grid_sample's backward, tcnn and nerfacc add with atomics there and
    have no deterministic kernels to ask for.
    """
    if device.type != "cpu":
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    # The public torch.use_deterministic_algorithms also sets TorchInductor's flag, and importing
    # Inductor for it costs 1.3 s a process; nothing here is compiled, so set only the kernels' flag.
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    # The mode also fills every new tensor with NaN (a debugging aid against reads of uninitialized
    # memory, which this code does not do): 28k fills, 15% of a stage-2 step on the example.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch._C._set_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


# --------------------------------------------------------------------------------------------
# the loop


def _capture(model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             state: LoopState) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()), "optim": copy.deepcopy(opt.state_dict()),
            "generator": gen.get_state().clone(), "loop": asdict(state)}


def _restore(saved: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
             gen: torch.Generator | None) -> LoopState:
    """Load a captured state (``gen`` None: keep the RNG where it is)."""
    model.load_state_dict(saved["model"])
    # Adam adopts same-device tensors without copying: copy, or later steps would edit ``saved``
    opt.load_state_dict(copy.deepcopy(saved["optim"]))
    if gen is not None:
        gen.set_state(saved["generator"])
    return LoopState(**saved["loop"])


def _is_bad(value: float, params: list[torch.Tensor], history: deque, run: RunConfig) -> str | None:
    """Why this step (loss ``value``, after backward) must not be applied, or None."""
    if not math.isfinite(value):
        return f"non-finite loss ({value})"
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf")).item()
    if not math.isfinite(grad_norm):
        return "non-finite gradient"
    if len(history) >= EXPLODE_WARMUP:
        median = statistics.median(history)
        if value > run.explode_factor * median:
            return f"loss exploded ({value:.4g} vs recent median {median:.4g})"
    return None


def optimize(model: torch.nn.Module, params: list[torch.Tensor] | list[dict[str, Any]], loss_fn: LossFn,
             schedule: Schedule,
             run: RunConfig, generator: torch.Generator, resume: dict[str, Any] | None = None,
             checkpoint: CheckpointFn | None = None, on_step: StepCallback | None = None,
             on_snapshot: Callable[[int], None] | None = None, snapshot_every: int = 0,
             before_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Run ``schedule.iterations`` Adam steps on ``loss_fn`` (resuming from a checkpoint state).

    Returns the last step's loss terms plus ``seconds``, ``iterations`` and ``rollbacks``.
    """
    # param groups may carry their own "base_lr" (else the schedule's); the schedule scales them all alike
    groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
    opt = torch.optim.Adam([{"base_lr": schedule.lr, **g} for g in groups], lr=schedule.lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    state = LoopState()
    if resume is not None:
        try:
            state = _restore(resume, model, opt, generator)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # a checkpoint of another model or version
            raise CheckpointError(f"{schedule.name}: the checkpoint does not fit this run ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); rerun without --resume") from None
        log.info("%s: resuming at step %d of %d", schedule.name, state.step, schedule.iterations)
    good = _capture(model, opt, generator, state)
    history: deque[float] = deque(maxlen=EXPLODE_HISTORY)
    stats: dict[str, float] = dict(resume.get("stats", {})) if resume else {}
    t_session = time.perf_counter()
    seconds_before = state.seconds

    def spent() -> float:  # optimization seconds over all sessions of a resumed run
        return seconds_before + time.perf_counter() - t_session

    def save() -> None:
        state.seconds = spent()
        if checkpoint is not None:
            checkpoint({**_capture(model, opt, generator, state), "stats": stats})

    while state.step < schedule.iterations and not (schedule.max_seconds > 0 and spent() >= schedule.max_seconds):
        if interrupt_requested():
            save()
            raise KeyboardInterrupt
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(state.step, state.lr_scale, group["base_lr"])
        if before_step is not None:
            before_step(state.step)
        terms = loss_fn()
        opt.zero_grad(set_to_none=True)
        value = terms["loss"].item()
        if math.isfinite(value):
            terms["loss"].backward()
        problem = _is_bad(value, params, history, run)
        if problem is not None:
            state = _rollback(problem, state, good, model, opt, schedule, run, stats)
            history.clear()
            continue
        opt.step()
        state.step += 1
        history.append(value)
        stats = {k: v.item() for k, v in terms.items()}
        if on_step is not None:
            on_step(state.step - 1, stats)
        if on_snapshot is not None and snapshot_every and state.step % snapshot_every == 0:
            on_snapshot(state.step)
        if state.step % run.guard_every == 0:
            good = _capture(model, opt, generator, state)
        if state.step % run.checkpoint_every == 0 or state.step == schedule.iterations:
            save()
    if state.step < schedule.iterations:
        log.info("%s: time budget of %.0f s reached after %d of %d steps", schedule.name, schedule.max_seconds,
                 state.step, schedule.iterations)
        save()
    state.seconds = spent()
    return {**stats, "seconds": state.seconds, "iterations": state.step, "rollbacks": state.rollbacks}


def _rollback(problem: str, state: LoopState, good: dict[str, Any], model: torch.nn.Module,
              opt: torch.optim.Optimizer, schedule: Schedule, run: RunConfig, stats: dict[str, float]) -> LoopState:
    """Load the last good state; the rollback count and the lowered lr carry on from ``state``.
    The RNG is not rewound, so the replayed steps draw new batches (the same batch could fail again)."""
    restored = _restore(good, model, opt, None)
    restored.rollbacks = state.rollbacks + 1
    restored.lr_scale = state.lr_scale * run.rollback_lr_factor
    if restored.rollbacks > run.max_rollbacks:
        raise DivergenceError(f"{schedule.name} diverged at step {state.step}: {problem}; gave up after "
                              f"{run.max_rollbacks} rollbacks (last good step {restored.step})", stats)
    log.warning("%s: %s at step %d; rolled back to step %d with lr x%.3g", schedule.name, problem,
                state.step, restored.step, restored.lr_scale)
    return restored

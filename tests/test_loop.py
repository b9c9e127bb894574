"""The one optimisation loop (fastsider.stages.loop) on a toy least-squares problem: a bad step rolled
back, persistent divergence stopped at the last good state; the learning-rate schedule; the
deterministic-kernels mode of CPU fits and its restoration."""

from __future__ import annotations

import pytest
import torch

from fastsider.config import RunConfig
from fastsider.stages.loop import DivergenceError, Schedule, deterministic_algorithms, optimize


def _toy_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    return model, x, y, torch.Generator().manual_seed(seed)


def _loss_fn(model, x, y, gen, poison: dict[int, float]):
    """Batch MSE; on call number k in ``poison`` the loss is multiplied by poison[k] (NaN, 1e6 ...)."""
    calls = {"n": 0}

    def fn():
        idx = torch.randint(len(x), (32,), generator=gen)
        loss = ((model(x[idx])[:, 0] - y[idx]) ** 2).mean()
        factor = poison.get(calls["n"], 1.0)
        calls["n"] += 1
        return {"loss": loss * factor}
    return fn


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 1e6])
def test_a_bad_step_is_rolled_back_and_training_finishes(poison):
    run = RunConfig(guard_every=5, max_rollbacks=2)
    model, x, y, gen = _toy_problem()
    stats = optimize(model, list(model.parameters()), _loss_fn(model, x, y, gen, {23: poison}),
                     Schedule("toy", 600, 0.05), run, gen)
    assert stats["rollbacks"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the problem is still solved: weights recover the true ones
    assert torch.allclose(model.weight[0], torch.tensor([1.0, -2.0, 0.5, 3.0]), atol=0.05)


def test_persistent_divergence_stops_with_the_last_good_state():
    run = RunConfig(guard_every=5, max_rollbacks=2)
    model, x, y, gen = _toy_problem()
    saved = {}

    def remember(step):  # the guard's last good state is the one at the last multiple of 5
        if step % 5 == 0:
            saved[step] = [p.detach().clone() for p in model.parameters()]
    fn = _loss_fn(model, x, y, gen, {k: float("nan") for k in range(12, 10_000)})
    with pytest.raises(DivergenceError, match="gave up after 2 rollbacks"):
        optimize(model, list(model.parameters()), fn, Schedule("toy", 100, 0.05), run, gen,
                 on_snapshot=remember, snapshot_every=1)
    for p, q in zip(model.parameters(), saved[10]):
        assert torch.equal(p, q)


@pytest.mark.parametrize("decay_steps", [0, 200])
def test_schedule_decays_to_lr_times_decay_over_its_last_steps(decay_steps):
    s = Schedule("s", 600, 2.0, lr_decay=0.1, decay_steps=decay_steps)
    assert s.lr_at(0, 1.0) == pytest.approx(2.0)
    assert s.lr_at(600, 1.0) == pytest.approx(0.2)
    assert s.lr_at(600, 0.5) == pytest.approx(0.1)
    if decay_steps:
        assert s.lr_at(400, 1.0) == pytest.approx(2.0)
        assert s.lr_at(500, 1.0) == pytest.approx(2.0 * 0.1 ** 0.5)
    else:
        assert s.lr_at(300, 1.0) == pytest.approx(2.0 * 0.1 ** 0.5)


@pytest.mark.parametrize("before", [(False, False), (True, False), (False, True)])
def test_cpu_fits_run_deterministic_kernels_and_restore_the_mode(before):
    """A gather's backward adds with atomics across threads on CPU unless deterministic mode is on:
    a loaded machine then gave the same seed different meshes. The mode must not leak out. Inside,
    new tensors are not NaN-filled (15% of a stage-2 step)."""
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with deterministic_algorithms(torch.device("cpu")):
                assert torch.are_deterministic_algorithms_enabled()
                assert not torch.utils.deterministic.fill_uninitialized_memory
                raise RuntimeError("inside")
        assert (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled()) == before
        assert torch.utils.deterministic.fill_uninitialized_memory == fill
        with deterministic_algorithms(torch.device("meta")):  # not CPU: left as it was
            assert torch.are_deterministic_algorithms_enabled() == before[0]
    finally:
        torch.use_deterministic_algorithms(False)

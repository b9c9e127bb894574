"""The height map's priors (fastsider.nn.priors): total variation, log sparsity, the groove prior,
the Laplacian energy, and the debiasing weight that lifts them on the details found."""

from __future__ import annotations

import math

import pytest
import torch

from fastsider.nn.priors import debias_weight, laplacian_energy, log_sparsity, raised_cost, total_variation


def test_total_variation_of_a_ramp_and_of_a_fold_of_any_width():
    rows, cols = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    assert total_variation(0.25 * cols - 0.5 * rows).item() == pytest.approx(0.75)  # |slopes| per cell
    # a groove across the map, 0.8 deep, a plateau between two ramps: its cost is twice its depth
    # per row of differences whatever its width (the L1 on h grows with the width)
    for width in (2, 6, 12):
        groove = -0.8 * ((cols - 16.0).abs() <= width).double()
        assert total_variation(groove).item() == pytest.approx(2 * 0.8 / 32, rel=1e-6)


def test_log_sparsity_is_the_l1_for_small_heights_and_a_log_for_deep_folds():
    s = 0.025
    tiny = torch.full((8, 8), 1e-5, dtype=torch.float64)
    assert log_sparsity(tiny, s).item() == pytest.approx(1e-5, rel=1e-3)          # the L1 near zero
    assert log_sparsity(-tiny, s).item() == log_sparsity(tiny, s).item()           # either sign
    fold = torch.zeros(8, 8, dtype=torch.float64)
    fold[3] = -0.5                                                                 # one row, 0.5 mm deep
    assert log_sparsity(fold, s).item() == pytest.approx(s * math.log(21.0) / 8, rel=1e-9)
    # the same volume spread as a shallow sheet over the map costs 3x the deep fold: the L1 would
    # price them the same
    sheet = torch.full((8, 8), -0.5 / 8, dtype=torch.float64)
    assert log_sparsity(sheet, s).item() > 3.0 * log_sparsity(fold, s).item()
    assert fold.abs().mean().item() == pytest.approx(sheet.abs().mean().item())


def test_raised_cost_prices_ridges_above_the_start_and_not_grooves():
    s, start = 0.01, 0.05
    h = torch.tensor([[-0.4, -0.02, 0.0, 0.03], [0.05, 0.06, 0.3, -1.0]], dtype=torch.float64)
    expected = sum(s * math.log1p((v - start) / s) for v in (0.06, 0.3)) / h.numel()
    assert raised_cost(h, s, start).item() == pytest.approx(expected, rel=1e-12)
    assert raised_cost(-h.abs(), s, start).item() == 0.0                       # grooves are free
    w = torch.zeros_like(h)
    w[1, 2] = 1.0                                                               # a debiased cell pays nothing
    assert raised_cost(h, s, start, 1.0 - w).item() == pytest.approx(s * math.log1p(0.01 / s) / h.numel())
    # its gradient in h against central differences
    x = h.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(raised_cost(x, s, start), x)
    eps = 1e-7
    for i, j in ((1, 1), (1, 2), (0, 0)):
        d = torch.zeros_like(h)
        d[i, j] = eps
        fd = (raised_cost(h + d, s, start) - raised_cost(h - d, s, start)).item() / (2 * eps)
        assert g[i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-12)


def test_the_groove_prior_breaks_a_sign_blind_data_term_towards_the_groove():
    # a data term that sees only the fold's depth, not its sign (frontal light: both walls darken)
    s, depth = 0.01, 0.3
    def total(h: torch.Tensor, raised: float) -> float:
        data = ((h**2 - depth**2) ** 2).sum()
        return (data + 0.4 * log_sparsity(h, s) + raised * raised_cost(h, s, 0.05)).item()
    groove = torch.full((1, 1), -depth, dtype=torch.float64)
    ridge = -groove
    assert total(groove, 0.0) == total(ridge, 0.0)       # without it: a tie
    assert total(groove, 0.4) < total(ridge, 0.4)        # with it: the groove


def test_debias_weight_lifts_the_priors_on_the_details_found_and_only_there():
    h = torch.zeros(16, 16, dtype=torch.float64)
    h[5, 6] = -0.3   # a detail (|h| above the threshold)
    h[12, 12] = 0.05  # noise below it
    w = debias_weight(h, threshold=0.12, grow_cells=2)
    expected = torch.ones(16, 16, dtype=torch.float64)
    expected[3:8, 4:9] = 0.0  # the detail grown by 2 cells each way
    assert torch.equal(w, expected)
    assert torch.equal(debias_weight(h, 0.12, 0), (h.abs() <= 0.12).double())
    # weighted priors: a fold under weight 0 costs nothing, a difference takes the smaller weight
    fold = torch.zeros(8, 8, dtype=torch.float64)
    fold[3] = -0.5
    lifted = torch.ones(8, 8, dtype=torch.float64)
    lifted[3] = 0.0
    assert log_sparsity(fold, 0.01, lifted).item() == 0.0
    assert total_variation(fold, lifted).item() == 0.0
    assert total_variation(fold, torch.ones(8, 8, dtype=torch.float64)).item() == pytest.approx(total_variation(fold).item())


def test_debiasing_gives_back_depth_the_priors_shrink():
    """Denoise a known groove under the stage's priors: lifting them on the groove at the end gets
    its full depth back, and the flat cells stay as quiet as they were."""
    rows = torch.arange(32, dtype=torch.float64)[:, None].expand(32, 32)
    truth = -0.4 * torch.exp(-0.5 * ((rows - 16.0) / 1.5) ** 2)
    noisy = truth + 0.01 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fit(debias: bool) -> torch.Tensor:
        h = torch.zeros(32, 32, dtype=torch.float64, requires_grad=True)
        weight = torch.ones(32, 32, dtype=torch.float64)
        opt = torch.optim.Adam([h], lr=0.01)
        for step in range(600):
            if debias and step == 400:
                weight = debias_weight(h, 0.12, 2)
            loss = ((h - noisy) ** 2).mean() + 0.3 * log_sparsity(h, 0.01, weight) + 0.3 * total_variation(h, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return h.detach()

    kept, lifted = fit(False), fit(True)
    groove = truth.abs() > 0.05
    depth = lambda h: float((h[groove] * truth[groove]).sum() / (truth[groove] ** 2).sum())  # noqa: E731
    assert depth(kept) < 0.8                      # the priors shrink the groove (measured 0.70)
    assert depth(lifted) == pytest.approx(1.0, abs=0.05)  # measured 1.00
    far = (rows - 16.0).abs() > 8
    noise = lambda h: float((h[far] - truth[far]).abs().mean())  # noqa: E731
    assert noise(lifted) < 1.05 * noise(kept) < 0.002  # the flat cells stay held (measured 0.8 um both)


def test_laplacian_energy_is_zero_on_planes_and_exact_on_a_parabola():
    r = torch.arange(16, dtype=torch.float64)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    assert laplacian_energy(3.0 * cols - rows + 2.0).item() == pytest.approx(0.0, abs=1e-20)
    assert laplacian_energy(rows**2).item() == pytest.approx(4.0)  # 5-point Laplacian of r^2 is 2

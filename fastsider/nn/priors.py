"""Priors on a height map [R, R] (mm): the anchor to the coarse surface, smoothness, noise, and debiasing.

Pure functions of the map's values (and per-cell weights); stage 2 weighs and adds them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def total_variation(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute difference between neighbouring cells of a [R, R] map, rows plus columns (its
    units per cell): the noise prior. A fold costs its depth x its length whatever its width, as its
    shading gives; a speck of freckle-sized noise costs its rim, far more than its area (the L1).

    ``weight`` [R, R]: per-cell factors; a difference takes the smaller of its two cells'.
    """
    d_rows, d_cols = (values[1:, :] - values[:-1, :]).abs(), (values[:, 1:] - values[:, :-1]).abs()
    if weight is not None:
        d_rows = d_rows * torch.minimum(weight[1:, :], weight[:-1, :])
        d_cols = d_cols * torch.minimum(weight[:, 1:], weight[:, :-1])
    return d_rows.mean() + d_cols.mean()


def debias_weight(values: Tensor, threshold: float, grow_cells: int) -> Tensor:
    """[R, R] prior weights for the end of stage 2: 0 on the details found so far (|h| > ``threshold``,
    grown by ``grow_cells`` cells, a square), 1 elsewhere.

    Sparsity and TV priors shrink every detail they keep by a roughly constant amount (soft
    thresholding); lifting them where the detail is, as the relaxed lasso does, gives the depth back
    while the noise elsewhere stays held (synthetic tuning cases: the wrinkles' h error -24% -> -33%
    against the coarse input).
    """
    found = (values.detach().abs() > threshold).to(values.dtype)[None, None]
    if grow_cells > 0:
        found = torch.nn.functional.max_pool2d(found, 2 * grow_cells + 1, stride=1, padding=grow_cells)
    return 1.0 - found[0, 0]


def log_sparsity(values: Tensor, scale: float, weight: Tensor | None = None) -> Tensor:
    """Mean of scale * log(1 + |h| / scale) over a [R, R] map (its units): the anchor to the coarse
    surface. Below ``scale`` it is the L1 (the paper's SDF term on a height map), above it grows as
    the log: a wrinkle is sparse, and a deep fold costs little more than a shallow one, while the
    wide shallow sheets by which h would copy albedo it cannot tell from shading cost their area.

    ``weight`` [R, R]: per-cell factors.
    """
    cost = scale * torch.log1p(values.abs() / scale)
    return (cost if weight is None else weight * cost).mean()


def raised_cost(values: Tensor, scale: float, start: float, weight: Tensor | None = None) -> Tensor:
    """Mean of scale * log(1 + max(h - start, 0) / scale) over a [R, R] map (its units): what skin
    raised above the coarse surface by more than ``start`` costs beyond the log prior. Wrinkles and
    folds are grooves; under light from near the camera a groove and a ridge of the same profile
    shade alike (both walls turn from the light), and this prior picks the groove."""
    return log_sparsity((values - start).clamp_min(0.0), scale, weight)


def laplacian_energy(values: Tensor) -> Tensor:
    """mean squared 5-point Laplacian of a [R, R] map (its units squared): the smoothness prior."""
    lap = (values[1:-1, :-2] + values[1:-1, 2:] + values[:-2, 1:-1] + values[2:, 1:-1] - 4.0 * values[1:-1, 1:-1])
    return (lap**2).mean()

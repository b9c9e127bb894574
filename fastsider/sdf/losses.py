"""SIDER's loss terms as pure functions (returned as a named dict by the stages)."""

from __future__ import annotations

import torch
from torch import Tensor

MM_PER_M = 1000.0


def sdf_l1(pred: Tensor, target: Tensor, unit_mm: float) -> Tensor:
    """mean |f(x) - SDF_GT(x)| in metres (pred, target [n_pts] in unit-box units).

    The paper weighs this term x100 in FLAME's units, metres; measuring it in metres here keeps
    its balance against the colour term independent of our box size.
    """
    return (pred - target).abs().mean() * (unit_mm / MM_PER_M)


def eikonal(gradient: Tensor) -> Tensor:
    """E[(|grad f| - 1)^2] over gradient [n_pts, 3]; zero for an exact SDF."""
    return ((gradient.norm(dim=-1) - 1.0) ** 2).mean()


def color_l1(pred: Tensor, target: Tensor) -> Tensor:
    """mean |c - c_gt| over rgb [n_rays, 3]."""
    return (pred - target).abs().mean()


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB of colours in [0, 1]."""
    mse = torch.mean((pred.detach() - target) ** 2).clamp_min(1e-10)
    return float(-10.0 * torch.log10(mse))

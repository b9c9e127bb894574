"""The coarse SDF as a dense lattice, interpolated trilinearly (``model.sdf = "lattice"``).

The geometry is then exact from the start, with no stage-1 steps (a tiny MLP alone fits a face
to ~0.06 mm, ten times the coarse mesh's own error); a residual geometry MLP on it starts at zero.

The lattice covers the normalized box [-1, 1]^3 with ``resolution`` samples per axis (corners on
the box faces). Exact distances are computed only next to the surface, cheaper stand-ins farther
away (``build_sdf_lattice``).

Where x needs a gradient, interpolation is written out (8 gathers) instead of ``grid_sample``, whose
backward has no derivative of its own: implicit differentiation needs the gradient of the normal at
the hit point. Without gradients (sphere tracing, meshing) ``grid_sample`` does it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

COARSE_LATTICE = 64   # samples per axis of the stand-in lattice far from the surface
EXACT_CELLS = 3.0     # lattice samples within this many cells of the surface get the exact SDF
CHUNK = 1 << 18       # points per target-SDF call


class SdfLattice(torch.nn.Module):
    """Trilinear interpolation of SDF samples on a regular lattice over [-1, 1]^3.

    Args:
        values: SDF samples, index order (x, y, z), [R, R, R]. Not saved in checkpoints (a
            deterministic function of the inputs, rebuilt on every run).
    """

    def __init__(self, values: Tensor):
        super().__init__()
        r = values.shape[0]
        if values.ndim != 3 or values.shape != (r, r, r) or r < 2:
            raise ValueError(f"values: expected [R, R, R] with R >= 2, got {tuple(values.shape)}")
        self.register_buffer("values", values.float().contiguous(), persistent=False)

    @property
    def resolution(self) -> int:
        return self.values.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """Points [n_pts, 3] in the box (clamped to it) -> sdf [n_pts]; differentiable w.r.t. x."""
        if not (torch.is_grad_enabled() and x.requires_grad):  # tracing: the fused kernel is ~3x faster
            grid = x.clamp(-1.0, 1.0).flip(-1).to(self.values.dtype).reshape(1, -1, 1, 1, 3)  # (z, y, x) = (W, H, D)
            return F.grid_sample(self.values[None, None], grid, align_corners=True).reshape(-1).to(x.dtype)
        r = self.resolution
        u = ((x.clamp(-1.0, 1.0) + 1.0) * (0.5 * (r - 1))).to(self.values.dtype)  # lattice coordinates
        i0 = u.detach().floor().clamp(0, r - 2).long()
        w = u - i0  # [n_pts, 3] in [0, 1]; carries the gradient
        corners = _CORNERS.to(x.device)                                       # [8, 3] of 0/1
        ijk = i0[:, None, :] + corners                                        # [n_pts, 8, 3]
        values = self.values.reshape(-1)[(ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2]]
        weights = torch.where(corners.bool(), w[:, None, :], 1.0 - w[:, None, :]).prod(dim=-1)
        return (weights * values).sum(dim=-1).to(x.dtype)


_CORNERS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])


def lattice_points(resolution: int, flat_index: np.ndarray | None = None) -> np.ndarray:
    """Positions [n, 3] over [-1, 1]^3 of lattice samples (all, or those of ``flat_index``; order x, y, z)."""
    if flat_index is None:
        flat_index = np.arange(resolution**3)
    ijk = np.stack(np.unravel_index(flat_index, (resolution,) * 3), axis=-1)
    return ijk * (2.0 / (resolution - 1)) - 1.0


def build_sdf_lattice(target_sdf: Callable[[np.ndarray], np.ndarray], resolution: int,
                      device: torch.device | str = "cpu") -> SdfLattice:
    """Sample ``target_sdf`` (points [n, 3] -> [n], normalized units) on a resolution^3 lattice.

    Exact within ``EXACT_CELLS`` lattice cells of the surface, where the interpolated values make
    the hit points and the normals; elsewhere a COARSE_LATTICE^3 lattice, upsampled, stands in (the
    sphere tracer's long steps, off by up to ~0.1 mm on a face, more past the mesh border).
    """
    coarse = torch.tensor(_chunked(target_sdf, lattice_points(COARSE_LATTICE)), dtype=torch.float32)
    coarse = coarse.reshape(1, 1, COARSE_LATTICE, COARSE_LATTICE, COARSE_LATTICE)
    flat = F.interpolate(coarse, size=(resolution,) * 3, mode="trilinear", align_corners=True).reshape(-1).numpy().copy()
    # the stand-in can be off by ~ a coarse cell: take every sample it puts that close
    reach = EXACT_CELLS * 2.0 / (resolution - 1) + 2.0 / (COARSE_LATTICE - 1) * np.sqrt(3.0)
    near = np.flatnonzero(np.abs(flat) < reach)
    flat[near] = _chunked(target_sdf, lattice_points(resolution, near))
    return SdfLattice(torch.from_numpy(flat.reshape((resolution,) * 3))).to(device)


def _chunked(fn: Callable[[np.ndarray], np.ndarray], points: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(points[i : i + CHUNK]) for i in range(0, len(points), CHUNK)] or [np.zeros(0)])

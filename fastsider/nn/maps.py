"""Maps over the photo's pixels: detail as a height map, albedo as a coarse colour map.

One photo constrains one depth per pixel, so the detail stage may as well optimize exactly that: a
displacement h (mm, towards the camera) on a map over the working crop, read at the projection of
x and subtracted from the stage-1 SDF. Unlike an MLP on a frequency encoding it has no preferred
axes (the MLP's residual grows axis-aligned stripes under a photometric loss), its resolution is
the image's, and a smoothness prior on it is a plain image Laplacian.

The subtraction shifts the zero level set by h along the SDF gradient, i.e. a displacement along
the surface normal, exact for |grad f| = 1 and an h that varies slowly over h's own size.
Bilinear interpolation is written out (4 gathers) so that the normal has a derivative of its own
(implicit differentiation, eikonal term); h is zero outside the map.

The albedo map is the same projection with a few cells per side: albedo that cannot vary faster
than its cells cannot explain a wrinkle's shading, which is then left to h (the frequency split
that separates skin blotches from folds).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastsider.camera import Camera, Normalization


def bilinear(values: Tensor, g: Tensor) -> Tensor:
    """[C, R, R] grid read at (col, row) coordinates g [n, 2] -> [n, C], zero outside; differentiable
    in both, twice in g (the height map's normals are differentiated again)."""
    r = values.shape[-1]
    i0 = g.detach().floor()
    w = g - i0                                              # [n, 2], carries d/dg
    i0 = i0.long()
    out = torch.zeros(g.shape[0], values.shape[0], dtype=values.dtype, device=g.device)
    for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
        col, row = i0[:, 0] + dc, i0[:, 1] + dr
        inside = (col >= 0) & (col < r) & (row >= 0) & (row < r)
        v = values[:, row.clamp(0, r - 1), col.clamp(0, r - 1)].T * inside[:, None]
        wc = w[:, 0] if dc else 1.0 - w[:, 0]
        wr = w[:, 1] if dr else 1.0 - w[:, 1]
        out = out + (wc * wr)[:, None] * v
    return out


def bilinear_border(values: Tensor, g: Tensor) -> Tensor:
    """[C, R, R] grid read bilinearly at (col, row) coordinates g [n, 2] -> [n, C], the nearest edge
    value outside; differentiable in the values only. One fused ``grid_sample`` (4x faster on CPU
    than 4 gathers, whose backward adds with atomics) where no second derivative in g is needed."""
    xy = (g / (values.shape[-1] - 1) * 2.0 - 1.0).to(values.dtype)
    out = F.grid_sample(values[None], xy[None, None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].T


def _bspline_weights(u: Tensor) -> tuple[Tensor, ...]:
    """The uniform cubic B-spline's 4 tap weights at fractions u (taps at -1, 0, +1, +2 cells)."""
    return ((1 - u) ** 3 / 6, (3 * u**3 - 6 * u**2 + 4) / 6, (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6, u**3 / 6)


def cubic_bspline(values: Tensor, g: Tensor) -> Tensor:
    """[C, R, R] control grid read at (col, row) coordinates g [n, 2] -> [n, C] with the uniform
    cubic B-spline (4 x 4 taps, the edge control value repeated outside); differentiable in the values.

    A smoothing spline, not an interpolating one: it reproduces constant and linear grids exactly
    and is C2 everywhere, so unlike bilinear cells it leaves no kinks along the cell lines for a
    photometric fit to explain with something else. The albedo map reads it through its table
    (:func:`bspline_matrix`); this direct read at any point is the definition the table is tested against.
    """
    r = values.shape[-1]
    g = g.clamp(0.0, r - 1.0)
    i0 = g.detach().floor()
    t = g - i0
    i0 = i0.long()
    w_col, w_row = _bspline_weights(t[:, 0]), _bspline_weights(t[:, 1])
    out = torch.zeros(g.shape[0], values.shape[0], dtype=values.dtype, device=g.device)
    for a in range(4):
        col = (i0[:, 0] + a - 1).clamp(0, r - 1)
        for b in range(4):
            row = (i0[:, 1] + b - 1).clamp(0, r - 1)
            out = out + (w_col[a] * w_row[b])[:, None] * values[:, row, col].T
    return out


def bspline_matrix(coords: Tensor, r: int) -> Tensor:
    """[m, R]: row i holds the weights the uniform cubic B-spline over R control values (the edge
    value repeated outside) gives each of them at coordinate coords[i]. On a regular lattice the 2-D
    spline is separable, M V M^T: matrix products instead of 16 gathers a sample, whose backward
    adds with atomics on CPU."""
    c = coords.clamp(0.0, r - 1.0)
    i0 = c.floor()
    taps = _bspline_weights(c - i0)
    m = torch.zeros(c.shape[0], r, dtype=coords.dtype, device=coords.device)
    for a, w in enumerate(taps):
        m.index_put_((torch.arange(c.shape[0], device=c.device), (i0.long() + a - 1).clamp(0, r - 1)), w,
                     accumulate=True)
    return m


class ImageMap(torch.nn.Module):
    """A [C, R, R] parameter map spanning the working crop of ``camera``, read at projected points.

    Args:
        camera: the working-crop camera (camera frame = the mm frame of ``norm``).
        norm: the unit box of the networks.
        resolution: samples per side; the crop's size gives one sample per pixel.
        init: [C] initial value of every cell.
    """

    def __init__(self, camera: Camera, norm: Normalization, resolution: int, init: Tensor):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"image map resolution must be >= 2, got {resolution}")
        if camera.width != camera.height:
            raise ValueError(f"the working crop is square; got {camera.width}x{camera.height}")
        self.values = torch.nn.Parameter(init.float().view(-1, 1, 1).repeat(1, resolution, resolution))
        # the map seen as an image: its sample centres spread evenly over the crop's pixel extent
        s = resolution / camera.width
        self.map_camera = camera.transformed(s, 0.5 * s - 0.5, 0.5 * s - 0.5, resolution, resolution)
        self.centre = tuple(float(c) for c in np.asarray(norm.centre))
        self.half_size = float(norm.half_size)

    @property
    def resolution(self) -> int:
        return self.values.shape[-1]

    def map_coordinates(self, x: Tensor) -> Tensor:
        """Unit-box points [n, 3] -> (col, row) map coordinates [n, 2] of their projection."""
        p = x * self.half_size + torch.tensor(self.centre, dtype=x.dtype, device=x.device)  # mm, camera frame
        z = p[:, 2].clamp_min(1e-6)
        c = self.map_camera
        return torch.stack([c.fx * p[:, 0] / z + c.cx, c.fy * p[:, 1] / z + c.cy], dim=-1)


class BilinearReads(NamedTuple):
    """A height map's bilinear read at fixed points, as weights on its cells: h = sum_k w_k v[i_k] and
    grad_x h = sum_k c_k v[i_k] (unit-box units; zero weights for corners outside the map). Stage 2
    reads the map at the same rays every step: the weights once, instead of a projection, 4 gathers
    and a double backward through them each step (most of a step's time on CPU)."""

    index: Tensor     # [n, 4] flat cell indices (row * R + col)
    weight: Tensor    # [n, 4]
    gradient: Tensor  # [n, 4, 3]

    def subset(self, idx: Tensor) -> "BilinearReads":
        return BilinearReads(self.index[idx], self.weight[idx], self.gradient[idx])


class HeightMap(ImageMap):
    """h (mm) on a [R, R] map over the working crop, zero outside: ``values`` [1, R, R] plus the
    ``coarse`` levels upsampled onto it (``height_map``); every read of h sees the sum.

    ``prior_weight`` [R, R] scales the sparsity and TV priors per cell (ones until stage 2 debiases;
    a buffer, so checkpoints keep it).
    """

    def __init__(self, camera: Camera, norm: Normalization, resolution: int, levels: int = 1):
        super().__init__(camera, norm, resolution, torch.zeros(1))
        self.register_buffer("prior_weight", torch.ones(resolution, resolution))
        # levels > 1: h = values + coarser grids (R/2, R/4, ...) over the same crop, each upsampled to
        # the next (bicubic). A per-cell step moves h's low frequencies by one cell's worth at a time; a
        # coarse grid's step moves a whole patch, so the flat skin settles in far fewer steps
        sizes = [max(2, -(-resolution // 2**k)) for k in range(1, levels)]  # R/2^k rounded up
        self.coarse = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(1, r, r)) for r in sizes)

    def zero_(self) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()

    def height_map(self) -> Tensor:
        """The map [1, R, R]: the cells plus the coarser levels."""
        grids = [self.values, *self.coarse]  # finest first
        v = grids[-1]
        for finer in reversed(grids[:-1]):  # coarsest to finest: upsample, add the next level
            v = F.interpolate(v[None], size=finer.shape[-2:], mode="bicubic", align_corners=False)[0] + finer
        return v

    def height_mm(self) -> Tensor:
        """The map [R, R] (row, col) in mm."""
        return self.height_map()[0]

    def forward(self, x: Tensor) -> Tensor:
        """Unit-box points [n, 3] -> h [n] in unit-box units; differentiable w.r.t. x and the values."""
        return bilinear(self.height_map(), self.map_coordinates(x))[:, 0].to(x.dtype) / self.half_size

    def reads_at(self, x: Tensor) -> BilinearReads:
        """The fixed weights of ``forward`` and of its gradient in x at unit-box points [n, 3]."""
        r = self.resolution
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            g = self.map_coordinates(xr)
            # each point's projection depends on that point alone: one backward per coordinate
            jac = torch.stack([torch.autograd.grad(g[:, i].sum(), xr, retain_graph=i == 0)[0] for i in range(2)], 1)
        g, jac = g.detach(), jac.detach() / self.half_size  # [n, 2], [n, 2, 3]; h is read in unit-box units
        i0 = g.floor()
        wc, wr = (g - i0).unbind(-1)
        i0 = i0.long()
        index, weight, gradient = [], [], []
        for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
            col, row = i0[:, 0] + dc, i0[:, 1] + dr
            inside = ((col >= 0) & (col < r) & (row >= 0) & (row < r)).to(x.dtype)
            fc, fr = (wc if dc else 1.0 - wc), (wr if dr else 1.0 - wr)  # the corner's weight fc * fr
            d_col, d_row = (1.0 if dc else -1.0) * fr, (1.0 if dr else -1.0) * fc
            index.append(row.clamp(0, r - 1) * r + col.clamp(0, r - 1))
            weight.append(fc * fr * inside / self.half_size)
            gradient.append((d_col[:, None] * jac[:, 0] + d_row[:, None] * jac[:, 1]) * inside[:, None])
        return BilinearReads(torch.stack(index, 1), torch.stack(weight, 1).to(x.dtype),
                             torch.stack(gradient, 1).to(x.dtype))

    def read(self, reads: BilinearReads, grid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """h [n] and grad_x h [n, 3] at the points of ``reads``; differentiable w.r.t. the values.
        ``grid``: the map as ``height_map`` gave it, when the caller composed it already this step."""
        grid = self.height_map() if grid is None else grid
        # index_select: its backward is an index_add, where advanced indexing's sorts for a deterministic sum
        v = grid.reshape(-1).index_select(0, reads.index.view(-1)).view(reads.index.shape).to(reads.weight.dtype)
        return (v * reads.weight).sum(-1), torch.einsum("nk,nkd->nd", v, reads.gradient)


SPLINE_TABLE_STEPS = 4  # samples per albedo cell of the tabulated spline


class AlbedoMap(ImageMap):
    """RGB albedo = exp(values) on a coarse [R, R] map over the working crop (log: positive, and
    multiplicative changes cost the same in dark and bright skin), read as a cubic B-spline; the
    edge value outside. Bilinear cells left a periodic residual that the height map copied as
    noise (25% more noise outside the wrinkles at the same wrinkle depth, synthetic case 0)."""

    def __init__(self, camera: Camera, norm: Normalization, resolution: int, init_rgb: Tensor):
        super().__init__(camera, norm, resolution, torch.log(init_rgb.clamp(1e-3, 1.0)))

    def forward(self, x: Tensor) -> Tensor:
        """Unit-box points [n, 3] -> albedo [n, 3] (no derivative w.r.t. x is needed: it is not geometry)."""
        g = self.map_coordinates(x.detach()) * SPLINE_TABLE_STEPS
        return torch.exp(bilinear_border(self.spline_table(), g)).to(x.dtype)

    def spline_table(self) -> Tensor:
        """The spline tabulated SPLINE_TABLE_STEPS samples per cell, [C, F, F]: read bilinearly (one
        grid_sample a ray instead of 16 gathers), it differs from the spline by O(cell / steps)^2."""
        r, k = self.resolution, SPLINE_TABLE_STEPS
        at = torch.arange(k * (r - 1) + 1, dtype=self.values.dtype, device=self.values.device) / k
        m = bspline_matrix(at, r)  # rows and columns sample alike
        return m @ self.values @ m.T

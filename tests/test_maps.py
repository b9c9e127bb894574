"""The maps over the working crop (fastsider.nn.maps): the height map's projection, interpolation and
derivatives, the cubic B-spline and its table, and the albedo map."""

from __future__ import annotations

import numpy as np
import torch

from fastsider.camera import project
from fastsider.nn.maps import HeightMap
from synthetic_scenes import CAMERA, NORM, SIZE


def points_in_view(n: int, seed: int = 0) -> torch.Tensor:
    """Unit-box points whose projections fall well inside the crop."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.8, 0.8, 1.6], dtype=torch.float64)
    return p


def test_map_coordinates_are_the_camera_projection():
    hm = HeightMap(CAMERA, NORM, SIZE).double()
    x = points_in_view(50)
    uv = project(CAMERA, NORM.to_mm(x.numpy()))
    assert np.allclose(hm.map_coordinates(x).detach().numpy(), uv, atol=1e-9)
    half = HeightMap(CAMERA, NORM, SIZE // 2).double()  # half resolution: pixel centres 2k, 2k+1 -> k
    g = half.map_coordinates(x).detach().numpy()
    assert np.allclose(g, (uv + 0.5) / 2.0 - 0.5, atol=1e-9)


def test_bilinear_reproduces_a_plane_in_pixels_and_its_gradient():
    hm = HeightMap(CAMERA, NORM, SIZE).double()
    rows, cols = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64),
                                indexing="ij")
    with torch.no_grad():
        hm.values.copy_(0.02 * cols - 0.03 * rows + 0.5)  # mm
    x = points_in_view(200).requires_grad_(True)
    h = hm(x)
    uv = hm.map_coordinates(x)
    expected = (0.02 * uv[:, 0] - 0.03 * uv[:, 1] + 0.5) / NORM.half_size
    assert torch.allclose(h, expected, atol=1e-12)
    (grad,) = torch.autograd.grad(h.sum(), x)
    eps = 1e-6
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = eps
        fd = (hm(x.detach() + step) - hm(x.detach() - step)) / (2 * eps)
        assert torch.allclose(grad[:, axis], fd, atol=1e-7)


def test_zero_outside_the_grid():
    hm = HeightMap(CAMERA, NORM, SIZE).double()
    with torch.no_grad():
        hm.values.fill_(1.0)
    far_left = torch.tensor([[-0.99, 0.0, -0.9]], dtype=torch.float64)  # projects left of the crop
    assert hm.map_coordinates(far_left)[0, 0] < -1.0 and hm(far_left).item() == 0.0
    assert hm(points_in_view(10)).allclose(torch.full((10,), 1.0 / NORM.half_size, dtype=torch.float64))


def test_fixed_reads_give_the_maps_value_and_its_finite_difference_gradient_and_move_with_the_map():
    hm = HeightMap(CAMERA, NORM, SIZE // 2).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        hm.values.copy_(torch.rand(hm.values.shape, generator=g, dtype=torch.float64))
    x = torch.cat([points_in_view(300), torch.tensor([[-0.99, 0.0, -0.9], [0.3, -0.99, -0.9]], dtype=torch.float64)])
    reads = hm.reads_at(x)
    h, grad = hm.read(reads)
    assert torch.allclose(h, hm(x), atol=1e-12) and h[-2:].abs().max() == 0.0  # zero off the map
    eps = 1e-7  # within one cell, where the bilinear read is smooth
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = eps
        fd = (hm(x + step) - hm(x - step)) / (2 * eps)
        assert torch.allclose(grad[:, axis], fd, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the weights hold for any map: read again after the map changed
        hm.values.mul_(-2.0).add_(0.5)
    h2, grad2 = hm.read(reads)
    assert torch.allclose(h2, hm(x), atol=1e-12)
    assert torch.allclose(grad2[:-2], -2.0 * grad[:-2], rtol=1e-9, atol=1e-9)


def test_cubic_bspline_reproduces_linear_grids_and_has_a_continuous_slope():
    from fastsider.nn.maps import cubic_bspline

    r = 10
    rows, cols = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64),
                                indexing="ij")
    plane = torch.stack([0.3 + 0.2 * cols - 0.1 * rows, torch.full_like(cols, 2.0)])  # [2, R, R]
    g = 1.0 + 7.0 * torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = cubic_bspline(plane, g)  # 1 cell inside the border: no clamped taps
    assert torch.allclose(out[:, 0], 0.3 + 0.2 * g[:, 0] - 0.1 * g[:, 1], atol=1e-12)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 2.0), atol=1e-12)
    # a single spike: value and slope agree from both sides of a cell line (bilinear's slope jumps)
    spike = torch.zeros(1, r, r, dtype=torch.float64)
    spike[0, 5, 5] = 1.0
    eps = 1e-6
    g = torch.tensor([[5.0 - eps, 5.3], [5.0 + eps, 5.3], [5.0 - 3 * eps, 5.3], [5.0 + 3 * eps, 5.3]],
                     dtype=torch.float64)
    v = cubic_bspline(spike, g)[:, 0]
    slope_left, slope_right = (v[0] - v[2]) / (2 * eps), (v[3] - v[1]) / (2 * eps)
    assert abs(v[0] - v[1]) < 1e-5 and abs(slope_left - slope_right) < 1e-4
    assert abs(slope_left) < 1e-4  # the spline peaks over its control value


def test_albedo_grid_reads_its_tabulated_spline_within_a_small_error():
    from fastsider.nn.maps import SPLINE_TABLE_STEPS, AlbedoMap, bilinear_border, cubic_bspline

    grid = AlbedoMap(CAMERA, NORM, 8, torch.tensor([0.6, 0.4, 0.3])).double()
    with torch.no_grad():  # a smooth log-albedo: 5% waves over the grid
        rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        grid.values += 0.05 * torch.sin(0.9 * cols + 0.4 * rows).double()
    g = 7.0 * torch.rand(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = cubic_bspline(grid.values, g)
    table = bilinear_border(grid.spline_table(), g * SPLINE_TABLE_STEPS)
    assert (table - exact).abs().max() < 1e-3


def test_border_read_is_bilinear_inside_and_the_nearest_edge_value_outside():
    from fastsider.nn.maps import bilinear, bilinear_border

    gen = torch.Generator().manual_seed(4)
    values = torch.rand(2, 5, 7, dtype=torch.float64, generator=gen)[:, :, :5].contiguous()  # [C, R, R]
    inside = 4.0 * torch.rand(200, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(bilinear_border(values, inside), bilinear(values, inside), atol=1e-12, rtol=0)
    outside = torch.tensor([[-3.0, 2.0], [9.0, 2.0], [2.0, -0.5], [2.5, 40.0], [-1.0, -1.0]], dtype=torch.float64)
    clamped = bilinear(values, outside.clamp(0.0, 4.0))
    torch.testing.assert_close(bilinear_border(values, outside), clamped, atol=1e-12, rtol=0)
    torch.testing.assert_close(clamped[0], values[:, 2, 0])  # (col -3, row 2): the left edge's value


def test_separable_spline_table_is_the_spline_at_its_lattice_with_the_same_gradient():
    """M V M^T must equal the 16-tap spline read at every table sample, clamped edges included
    (the lattice's 0 and R-1 rows use them), and give the control values the same gradient."""
    from fastsider.nn.maps import SPLINE_TABLE_STEPS, AlbedoMap, cubic_bspline

    r, k = 6, SPLINE_TABLE_STEPS
    grid = AlbedoMap(CAMERA, NORM, r, torch.tensor([0.6, 0.4, 0.3])).double()
    with torch.no_grad():  # no symmetry between rows and columns, so a transposed table would show
        grid.values.copy_(torch.rand(3, r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    at = torch.arange(k * (r - 1) + 1, dtype=torch.float64) / k
    rows, cols = torch.meshgrid(at, at, indexing="ij")
    exact = cubic_bspline(grid.values, torch.stack([cols.reshape(-1), rows.reshape(-1)], -1))  # [n, C]
    table = grid.spline_table()
    assert table.shape == (3, len(at), len(at))
    torch.testing.assert_close(table.reshape(3, -1).T, exact, atol=1e-12, rtol=0)
    probe = torch.rand(table.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g_table, = torch.autograd.grad((table * probe).sum(), grid.values)
    g_exact, = torch.autograd.grad((exact.T.reshape(table.shape) * probe).sum(), grid.values)
    torch.testing.assert_close(g_table, g_exact, atol=1e-12, rtol=0)


def test_albedo_map_starts_at_its_colour_and_holds_the_edge_outside():
    from fastsider.nn.maps import AlbedoMap

    grid = AlbedoMap(CAMERA, NORM, 8, torch.tensor([0.6, 0.4, 0.3])).double()
    assert torch.allclose(grid(points_in_view(20)), torch.tensor([0.6, 0.4, 0.3], dtype=torch.float64), atol=1e-6)
    with torch.no_grad():
        grid.values[:, :, :2] = 0.0  # the two left columns (the spline's taps at the edge): albedo exp(0) = 1
    far_left = torch.tensor([[-0.99, 0.0, -0.9]], dtype=torch.float64)
    assert torch.allclose(grid(far_left), torch.ones(1, 3, dtype=torch.float64))


def _slope_fit(hm: HeightMap, target: torch.Tensor, steps: int, lr: float = 0.03) -> float:
    """RMS misfit (up to a constant) after ``steps`` Adam steps of h's slopes against the target's, the way
    shading constrains h: a Poisson problem, whose wide modes a per-cell step reaches slowly."""
    def slopes(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[1:, :-1] - h[:-1, :-1], h[:-1, 1:] - h[:-1, :-1]
    opt = torch.optim.Adam(hm.parameters(), lr=lr)
    t_rows, t_cols = slopes(target)
    for _ in range(steps):
        opt.zero_grad()
        d_rows, d_cols = slopes(hm.height_mm())
        (((d_rows - t_rows) ** 2).mean() + ((d_cols - t_cols) ** 2).mean()).backward()
        opt.step()
    off = hm.height_mm().detach() - target
    return float((off - off.mean()).pow(2).mean().sqrt())


def test_coarse_levels_add_smooth_grids_that_reach_a_wide_bump_sooner_and_leave_fine_detail_to_the_cells():
    r = 64
    flat, pyramid = HeightMap(CAMERA, NORM, r).double(), HeightMap(CAMERA, NORM, r, levels=4).double()
    assert len(flat.coarse) == 0 and flat.height_map() is flat.values
    assert [p.shape[-1] for p in pyramid.coarse] == [32, 16, 8]
    with torch.no_grad():  # a constant coarse grid is that constant everywhere on the map (partition of unity)
        pyramid.coarse[1].fill_(0.3)
    assert torch.allclose(pyramid.height_mm(), torch.full((r, r), 0.3, dtype=torch.float64), atol=1e-12)
    x = points_in_view(50)  # every read of h sees the sum
    assert torch.allclose(pyramid(x), pyramid.read(pyramid.reads_at(x))[0], atol=1e-12)
    assert torch.allclose(pyramid(x), torch.full((50,), 0.3 / NORM.half_size, dtype=torch.float64), atol=1e-12)
    pyramid.zero_()
    assert pyramid.height_mm().abs().max() == 0.0

    rows, cols = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64), indexing="ij")
    bump = torch.exp(-((rows - 30.0) ** 2 + (cols - 34.0) ** 2) / (2 * 10.0**2))  # 1 mm high, 10 cells wide
    checker = 0.05 * (-1.0) ** (rows + cols)                                      # one cell per sign
    wide = [_slope_fit(HeightMap(CAMERA, NORM, r, levels=n).double(), bump, 50) for n in (1, 4)]
    assert wide[1] < 0.25 * wide[0]
    fine = [_slope_fit(HeightMap(CAMERA, NORM, r, levels=n).double(), checker, 100) for n in (1, 4)]
    assert max(fine) < 0.05 * 0.05  # both find the checkerboard to 5% of its amplitude

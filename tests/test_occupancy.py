"""The occupancy grid (fastsider.sdf.occupancy): its occupancy rule, its ray segments by hand, tracing
that skips empty cells and matches plain tracing, and its backends."""

from __future__ import annotations

import pytest
import torch

from fastsider.sdf import _nerfacc
from fastsider.sdf.occupancy import OccupancyGrid, make_occupancy_grid
from fastsider.sdf.trace import ray_aabb_intersect, sphere_trace
from synthetic_scenes import CENTRE, GRAZE, RADIUS, TRACE, camera_rays, sphere_depth, sphere_sdf


def test_ray_segments_hand_grid():
    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[1, 2, 2] = True  # x in [-0.5, 0], y in [0, 0.5], z in [0, 0.5]
    grid = OccupancyGrid(occupied)
    origins = torch.tensor([[-0.25, 0.25, -3.0], [0.75, 0.75, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    box = ray_aabb_intersect(origins, dirs)
    seg = grid.ray_segments(origins, dirs, box.t_near, box.t_far)
    # samples every h/2 = 0.25; the cell's samples are z = 0.125, 0.375 (t = 3.125, 3.375);
    # intervals [3.0, 3.5], padded by one spacing -> [2.75, 3.75]. Ray 2 sees no occupied cell.
    assert seg.valid.tolist() == [True, False]
    assert seg.t_start[0].item() == 2.75 and seg.t_end[0].item() == 3.75
    assert grid.occupied_fraction() == 1 / 64


def test_grid_occupancy_rule(device):
    """band = 0: exactly the cells with |f(centre)| <= half diagonal, so every cell the
    surface passes through (1-Lipschitz f) is occupied."""
    torch.manual_seed(0)
    sdf = sphere_sdf(CENTRE, RADIUS)
    grid = OccupancyGrid.from_sdf(sdf, resolution=32, band=0.0, device=device)
    h = 2.0 / 32
    surface = torch.randn(20000, 3, device=device)
    surface = surface / surface.norm(dim=-1, keepdim=True) * RADIUS + surface.new_tensor(CENTRE)
    assert grid._lookup(surface).all()
    axis = -1 + (torch.arange(32, device=device) + 0.5) * h
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    expect = sdf(centres.view(-1, 3)).abs().view(32, 32, 32) <= 3**0.5 / 2 * h
    assert torch.equal(grid.occupied, expect)  # also pins the (x, y, z) index order


def test_grid_skipping_matches_plain_tracing(device):
    origins, dirs = camera_rays(device, half_fov=0.4)
    sdf = sphere_sdf(CENTRE, RADIUS)
    # band 0.05 >= h / 4 = 0.0078: every crossing is inside the segment (from_sdf docstring)
    grid = OccupancyGrid.from_sdf(sdf, resolution=64, band=0.05, device=device)
    assert 0.0 < grid.occupied_fraction() < 0.1
    box = ray_aabb_intersect(origins, dirs)
    seg = grid.ray_segments(origins, dirs, box.t_near, box.t_far)
    plain = sphere_trace(sdf, origins, dirs, box.t_near, box.t_far, **TRACE)
    skip = sphere_trace(sdf, origins, dirs, seg.t_start, seg.t_end, **TRACE)

    _, closest = sphere_depth(origins, dirs, CENTRE, RADIUS)
    clear = (closest - RADIUS).abs() > GRAZE
    assert torch.equal(skip.hit[clear], plain.hit[clear])
    assert torch.equal(seg.valid[plain.hit & clear], torch.ones_like(seg.valid[plain.hit & clear]))
    both = plain.hit & skip.hit & clear
    # both converge to the same root within hit_eps / cos; 1e-4 as for closed form
    assert (skip.t[both] - plain.t[both]).abs().max() < 1e-4
    seg_len = torch.where(seg.valid, seg.t_end - seg.t_start, 0.0)[box.valid].mean()
    box_len = (box.t_far - box.t_near)[box.valid].mean()
    # the sphere fills ~1/4 of the view: most box rays skip everything
    assert seg_len < 0.5 * box_len, (seg_len, box_len)
    # the skipped segment starts right at the surface: no ray starts behind its hit
    assert (seg.t_start[both] <= plain.t[both] + 1e-6).all()


def test_make_occupancy_grid_backends():
    sdf = sphere_sdf(CENTRE, RADIUS)
    assert make_occupancy_grid(sdf, 8, 0.1, backend="torch").backend == "torch"
    auto = make_occupancy_grid(sdf, 8, 0.1, backend="auto", device="cpu")
    assert auto.backend == "torch"  # nerfacc is CUDA-only
    with pytest.raises(RuntimeError, match="nerfacc"):
        make_occupancy_grid(sdf, 8, 0.1, backend="nerfacc", device="cpu")
    with pytest.raises(RuntimeError, match="nerfacc"):
        o = torch.zeros(1, 3)
        _nerfacc.first_last_occupied(
            auto.occupied, o, o, o[:, 0], o[:, 0], o[:, 0] == 0, 0.1, (-1.0, 1.0)
        )

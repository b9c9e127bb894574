"""The occupancy grid (fastsider.sdf.occupancy): its occupancy rule, its ray segments by hand, tracing
that skips empty cells and matches plain tracing, and its backends."""

from __future__ import annotations

import math

import pytest
import torch

from fastsider.sdf import _nerfacc
from fastsider.sdf.occupancy import BOX_DIAGONAL, SAMPLES_PER_CELL, OccupancyGrid, make_occupancy_grid
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


def _reference_lookup(occupied, points):
    """The original lookup: floor((p + 1) / h), out of [0, R) per axis -> False."""
    r = occupied.shape[0]
    idx = torch.floor((points - -1.0) / (2.0 / r)).long()
    inside = ((idx >= 0) & (idx < r)).all(dim=-1)
    idx = idx.clamp(0, r - 1)
    return occupied.view(-1)[(idx[..., 0] * r + idx[..., 1]) * r + idx[..., 2]] & inside


def _reference_segments(grid, origins, dirs, t_near, t_far):
    """The original ray_segments: every sample of the box diagonal looked up, 64 at a time."""
    box = ray_aabb_intersect(origins, dirs)
    t0, t1 = torch.maximum(t_near, box.t_near), torch.minimum(t_far, box.t_far)
    step = grid.cell_size / SAMPLES_PER_CELL
    n_samples = math.ceil(BOX_DIAGONAL / step) + 1
    first = torch.full((origins.shape[0],), n_samples, dtype=torch.long)
    last = torch.full((origins.shape[0],), -1, dtype=torch.long)
    for b in range(0, n_samples, 64):
        i = torch.arange(b, min(b + 64, n_samples))
        ts = t0[:, None] + (i.to(t0.dtype) + 0.5) * step
        pts = origins[:, None, :] + ts[..., None] * dirs[:, None, :]
        occ = _reference_lookup(grid.occupied, pts) & (ts <= t1[:, None])
        first = torch.minimum(first, torch.where(occ, i, n_samples).amin(dim=1))
        last = torch.maximum(last, torch.where(occ, i, -1).amax(dim=1))
    valid = (last >= 0) & box.valid & (t0 < t1)
    t_start = torch.maximum(t0 + first.to(t0.dtype) * step - step, t0)
    t_end = torch.minimum(t0 + (last + 1).to(t0.dtype) * step + step, t1)
    return torch.where(valid, t_start, t_near), torch.where(valid, t_end, t_near), valid


def _random_rays(gen, n, r):
    """Rays from outside and inside the box, some aimed at cell corners (grazing), some axis-aligned
    along cell planes, a few non-unit, with random t_near / t_far clipping."""
    h = 2.0 / r
    corner = lambda m: -1.0 + torch.randint(0, r + 1, (m, 3), generator=gen) * h
    far = torch.randn(n, 3, generator=gen)
    origins = torch.cat([far / far.norm(dim=-1, keepdim=True) * 4.0, torch.rand(n, 3, generator=gen) * 2 - 1])
    target = torch.cat([corner(n), torch.rand(n, 3, generator=gen) * 3 - 1.5])
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    axis = torch.eye(3)[torch.randint(0, 3, (n,), generator=gen)] * torch.sign(torch.randn(n, 1, generator=gen))
    on_planes = torch.where(axis != 0, -3.0 * axis, corner(n))  # enters a face along cell edges
    origins, dirs = torch.cat([origins, on_planes]), torch.cat([dirs, axis])
    dirs[: n // 8] *= 0.5 + torch.rand(n // 8, 1, generator=gen) * 1.5
    m = origins.shape[0]
    box = ray_aabb_intersect(origins, dirs)
    t_near = torch.where(torch.rand(m, generator=gen) < 0.3, box.t_near + torch.rand(m, generator=gen), box.t_near)
    t_far = torch.where(torch.rand(m, generator=gen) < 0.3, t_near + torch.rand(m, generator=gen) * 2, box.t_far)
    return origins, dirs, t_near, t_far


@pytest.mark.parametrize("r, density", [(4, 0.1), (7, 0.02), (16, 0.002), (33, 0.05), (64, 0.3)])
def test_ray_segments_match_full_sampling(r, density):
    """Skipping blocks the summed-area test rules out gives the full sampling's answer, bit for bit."""
    gen = torch.Generator().manual_seed(r)
    grid = OccupancyGrid(torch.rand(r, r, r, generator=gen) < density)
    rays = _random_rays(gen, 1500, r)
    seg = grid.ray_segments(*rays)
    ref = _reference_segments(grid, *rays)
    assert 0 < seg.valid.sum() < seg.valid.numel()
    for got, want in zip(seg, ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize("r", [1, 5, 64, 255])  # 255: the padded flat index needs float64
def test_contains_matches_reference_lookup(r):
    gen = torch.Generator().manual_seed(r)
    occupied = torch.rand(r, r, r, generator=gen) < 0.4
    grid = OccupancyGrid(occupied)
    h = 2.0 / r
    points = torch.cat([
        torch.rand(20000, 3, generator=gen) * 3 - 1.5,
        -1.0 + torch.randint(-2, r + 3, (20000, 3), generator=gen) * h,  # on cell planes, in and out
        torch.tensor([[1e30, 0, 0], [-1e30, 0.5, 0.5], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]),
    ])
    assert torch.equal(grid.contains(points), _reference_lookup(occupied, points))
    assert torch.equal(grid.contains(points.double()), _reference_lookup(occupied, points.double()))
    batch = points[:40000].view(4000, 10, 3)  # any leading shape
    assert torch.equal(grid.contains(batch), _reference_lookup(occupied, batch))

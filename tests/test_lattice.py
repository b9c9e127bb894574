"""The coarse-SDF lattice (model.sdf = "lattice") against an analytic sphere, and the residual
geometry MLP built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from fastsider.camera import Normalization
from fastsider.config import CoarseStageConfig, GeometryMLPConfig
from fastsider.nn.fields import Appearance, Geometry, GeometryMLP, SiderModel
from fastsider.nn.shading import SphericalHarmonicsShading
from fastsider.sdf.lattice import EXACT_CELLS, SdfLattice, build_sdf_lattice, lattice_levels, lattice_points
from fastsider.sdf.shell import ShellSDF
from fastsider.sdf.trace import ray_aabb_intersect, sphere_trace
from fastsider.stages.coarse_sdf import PointPool, fit_coarse_sdf, residual_targets

RADIUS = 0.5
RESOLUTION = 96


def sphere(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=1) - RADIUS


@pytest.fixture(scope="module")
def lattice() -> SdfLattice:
    return build_sdf_lattice(sphere, RESOLUTION)


def near_sphere_points(n: int, spread: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    r = RADIUS + spread * (2.0 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1.0)
    return d / d.norm(dim=1, keepdim=True) * r


def test_lattice_points_span_the_box():
    pts = lattice_points(5)
    assert pts.shape == (125, 3) and pts.min() == -1.0 and pts.max() == 1.0
    np.testing.assert_allclose(lattice_points(5, np.array([0, 124, 7])), pts[[0, 124, 7]])


def icosphere_sdf(x: np.ndarray) -> np.ndarray:
    return _ICOSPHERE.sdf(x)


def sheet_sdf(x: np.ndarray) -> np.ndarray:
    return _SHEET.sdf(x)


def _wavy_sheet(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """An open height field z = 0.15 sin(4x) cos(3y) over [-0.7, 0.7]^2 (its signed distance jumps past the border)."""
    u = np.linspace(-0.7, 0.7, n)
    x, y = np.meshgrid(u, u, indexing="ij")
    v = np.stack([x, y, 0.15 * np.sin(4 * x) * np.cos(3 * y)], -1).reshape(-1, 3)
    i = np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]
    a, b, c, d = i.ravel(), i.ravel() + n, i.ravel() + n + 1, i.ravel() + 1
    return v, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


_UNIT = Normalization(centre=np.zeros(3), half_size=1.0)
_ico = trimesh.creation.icosphere(subdivisions=3, radius=0.55)
_ICOSPHERE = ShellSDF(_ico.vertices + 0.05, _ico.faces, 0.0, _UNIT, "signed")  # closed: a true SDF
_SHEET = ShellSDF(*_wavy_sheet(), 0.0, _UNIT, "signed")


@pytest.mark.parametrize("fn, resolution", [(sphere, 96), (icosphere_sdf, 57), (sheet_sdf, 40), (sheet_sdf, 50)])
def test_lattice_is_exact_wherever_the_true_sdf_is_small(fn, resolution):
    """Every sample whose true |sdf| < EXACT_CELLS cells holds the exact value, whatever the level sizes."""
    values = build_sdf_lattice(fn, resolution).values.numpy().reshape(-1)
    truth = fn(lattice_points(resolution)).astype(np.float32)
    band = np.abs(truth) < EXACT_CELLS * 2.0 / (resolution - 1)
    assert band.sum() > 100
    np.testing.assert_array_equal(values[band], truth[band])


@pytest.mark.parametrize("resolution", [40, 57, 96])
def test_lattice_is_exact_at_the_apexes_of_cones(resolution):
    """The worst case of the 1-Lipschitz argument: |f| = T' + distance to random lattice samples, T' just
    under EXACT_CELLS cells. The apexes need the full reach (0.45 instead of 0.5 diagonals misses ~15%)
    and the thresholds growing level by level (a constant threshold misses some)."""
    apexes = np.random.default_rng(0).choice(resolution**3, 300, replace=False)
    tree, offset = cKDTree(lattice_points(resolution, apexes)), 0.999 * EXACT_CELLS * 2.0 / (resolution - 1)
    values = build_sdf_lattice(lambda x: offset + tree.query(x)[0], resolution).values.numpy().reshape(-1)
    np.testing.assert_array_equal(values[apexes], np.float32(offset))


@pytest.mark.parametrize("fn, resolution", [(sphere, 96), (icosphere_sdf, 57)])
def test_far_samples_are_within_the_bound_and_keep_the_sign(fn, resolution):
    """A true SDF: each upsampling adds at most half a coarser-cell diagonal; no spurious zero crossings."""
    values = build_sdf_lattice(fn, resolution).values.numpy().reshape(-1)
    truth = fn(lattice_points(resolution))
    bound = sum(np.sqrt(3.0) / (r - 1) for r in lattice_levels(resolution)[1:])
    assert np.abs(values - truth).max() <= bound + 1e-5
    far = np.abs(truth) >= EXACT_CELLS * 2.0 / (resolution - 1)
    assert (np.sign(values[far]) == np.sign(truth[far])).all()


def test_multilevel_band_needs_far_fewer_sdf_queries():
    """Against the former scheme (64^3 exact everywhere, then one band at the finest level)."""
    resolution, n = 256, []
    build_sdf_lattice(lambda x: (n.append(len(x)), sphere(x))[1], resolution)
    coarse = torch.tensor(sphere(lattice_points(64)), dtype=torch.float32).reshape(1, 1, 64, 64, 64)
    up = F.interpolate(coarse, size=(resolution,) * 3, mode="trilinear", align_corners=True)
    reach = EXACT_CELLS * 2.0 / (resolution - 1) + 2.0 / 63 * np.sqrt(3.0)
    old = 64**3 + int((up.abs() < reach).sum())
    assert sum(n) < 0.6 * old


def test_lattice_values_and_normals_near_the_surface(lattice):
    """Within the exact band: values to the trilinear error of a sphere, normals within a degree."""
    cell = 2.0 / (RESOLUTION - 1)
    x = near_sphere_points(20000, EXACT_CELLS * cell * 0.8).float().requires_grad_(True)
    f = lattice(x)
    exact = x.detach().norm(dim=1) - RADIUS
    # trilinear error of |x| - R: ~ h^2 / (8 R) per axis = 2.3e-4 here; the data is exact
    assert (f.detach() - exact).abs().max() < 1e-3
    (grad,) = torch.autograd.grad(f.sum(), x)
    n_true = x.detach() / x.detach().norm(dim=1, keepdim=True)
    cos = (grad / grad.norm(dim=1, keepdim=True) * n_true).sum(1).clamp(-1, 1)
    assert torch.rad2deg(torch.acos(cos)).mean() < 1.0
    assert (grad.norm(dim=1) - 1.0).abs().mean() < 0.02  # eikonal


def test_no_grad_path_equals_differentiable_path(lattice):
    x = near_sphere_points(5000, 0.3).float()
    with torch.no_grad():
        fast = lattice(x)
    slow = lattice(x.clone().requires_grad_(True)).detach()
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


def test_lattice_has_a_hessian_for_implicit_differentiation(lattice):
    x = near_sphere_points(100, 0.01).float().requires_grad_(True)
    (grad,) = torch.autograd.grad(lattice(x).sum(), x, create_graph=True)
    (hess_row,) = torch.autograd.grad(grad[:, 0].sum(), x)
    assert torch.isfinite(hess_row).all() and hess_row.abs().sum() > 0


def test_sphere_tracer_hits_the_lattice_sphere(lattice):
    """Rays from z = -2 towards the origin: the hit depth of the lattice is the analytic one."""
    n = 64
    xy = torch.stack(torch.meshgrid(torch.linspace(-0.3, 0.3, 8), torch.linspace(-0.3, 0.3, 8), indexing="ij"), -1)
    origins = torch.cat([xy.reshape(n, 2), torch.full((n, 1), -2.0)], 1)
    dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(n, 3)
    box = ray_aabb_intersect(origins, dirs)
    res = sphere_trace(lattice, origins, dirs, box.t_near, box.t_far, max_steps=64, hit_eps=1e-5, secant_steps=8)
    assert res.hit.all()
    z_true = -torch.sqrt(RADIUS**2 - (origins[:, :2] ** 2).sum(1))
    assert (res.points[:, 2] - z_true).abs().max() < 1e-3


def test_residual_net_starts_as_the_base_and_learns(lattice):
    """f == base at the start, stage 1 is skipped, and the residual still receives gradients."""
    mlp = GeometryMLP(GeometryMLPConfig(), "torch")
    with torch.no_grad():  # as fastsider.model does for a torch residual
        mlp.net.layers[-1].weight[0].zero_()
        mlp.net.layers[-1].bias[0].zero_()
    albedo = lambda p: torch.ones_like(p)  # noqa: E731, stage 1 does not render
    model = SiderModel(Geometry(lattice, mlp, None), Appearance(None, SphericalHarmonicsShading(), albedo),
                       "torch", "autograd", 1e-3)
    x = near_sphere_points(4096, 0.1).float()
    torch.testing.assert_close(model.sdf(x).detach(), lattice(x), atol=0, rtol=0)

    pool = residual_targets(PointPool(x, torch.zeros(len(x))), model.geometry.base)
    stats = fit_coarse_sdf(model, pool, CoarseStageConfig(iterations=50), 100.0, torch.Generator().manual_seed(0))
    assert stats["iterations"] == 0
    torch.testing.assert_close(model.sdf(x).detach(), lattice(x), atol=0, rtol=0)

    # a target 0.01 inside the sphere everywhere: the residual has to move the surface
    target = pool.sdf + 0.01
    opt = torch.optim.Adam(model.geometry.parameters(), lr=1e-3)
    for _ in range(100):
        opt.zero_grad()
        (model.sdf(x) - target).abs().mean().backward()
        opt.step()
    assert (model.sdf(x).detach() - target).abs().mean() < 0.003

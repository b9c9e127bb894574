"""Sphere tracing (fastsider.sdf.trace) and IDR reattachment against closed forms: a sphere, a plane,
a thin shell, an over-estimating SDF, the box intersection and the implicit derivative of a hit."""

from __future__ import annotations

import pytest
import torch

from fastsider.sdf.trace import MIN_COS, ray_aabb_intersect, reattach_hits, sphere_trace
from synthetic_scenes import CENTRE, GRAZE, RADIUS, TRACE, camera_rays, sphere_depth, sphere_sdf

SHELL = 0.02  # shell thickness eps, as SDF_GT = dist - eps/2


def shell_sdf(centre, radius, eps, scale=1.0):
    def f(x):
        return scale * (((x - x.new_tensor(centre)).norm(dim=-1) - radius).abs() - eps / 2)
    return f


def box_trace(sdf, origins, dirs, **kw):
    box = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    return sphere_trace(sdf, origins, dirs, box.t_near, box.t_far, **{**TRACE, **kw})


def test_ray_aabb_intersect_hand_values():
    s = 2.0**0.5
    origins = torch.tensor(
        [[0, 0, -3], [0, 0, 0], [0, 0, -3], [2, 0, -3], [-3, -3, 0]], dtype=torch.float32
    )
    dirs = torch.tensor(
        [[0, 0, 1], [1, 0, 0], [0, 0, -1], [0, 0, 1], [1 / s, 1 / s, 0]], dtype=torch.float32
    )
    t_near, t_far, valid = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    # front face z=-1 at t=2, back at t=4 | inside: t_near clamped to 0, exit x=1 at t=1 |
    # box behind the origin | x=2 outside the x slab with d_x = 0 (0/0 guarded) |
    # diagonal: enters x=y=-1 at t=2*sqrt2, leaves x=y=1 at t=4*sqrt2
    assert valid.tolist() == [True, True, False, False, True]
    expect_near = torch.tensor([2.0, 0.0, 0.0, 0.0, 2 * s])
    expect_far = torch.tensor([4.0, 1.0, 0.0, 0.0, 4 * s])
    # float32 slab arithmetic on O(1) numbers: a few ulps
    torch.testing.assert_close(t_near, expect_near, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(t_far, expect_far, atol=1e-6, rtol=1e-6)
    # non-cubic box given as tensors: z in [0, 3] from z=-1 -> t in [1, 4]
    hits = ray_aabb_intersect(
        torch.tensor([[0.5, 1.0, -1.0]]), torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 3.0]),
    )
    assert hits.t_near.tolist() == [1.0] and hits.t_far.tolist() == [4.0]
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        ray_aabb_intersect(origins, dirs[:, :2])


def test_sphere_depth_and_misses(device):
    origins, dirs = camera_rays(device)
    res = box_trace(sphere_sdf(CENTRE, RADIUS), origins, dirs)
    t_cf, closest = sphere_depth(origins, dirs, CENTRE, RADIUS)
    clear = (closest - RADIUS).abs() > GRAZE
    expect_hit = closest < RADIUS
    assert 0.1 < expect_hit.float().mean() < 0.9  # the view sees both hits and misses
    assert torch.equal(res.hit[clear], expect_hit[clear])
    ok = expect_hit & clear
    # hit_eps 1e-5 over cos(incidence) >= 0.2 outside the graze band: <= 5e-5 in depth
    assert (res.t[ok] - t_cf[ok]).abs().max() < 1e-4
    torch.testing.assert_close(res.points, origins + res.t[:, None] * dirs)


def test_plane_depth(device):
    origins, dirs = camera_rays(device, half_fov=0.45)
    normal = torch.tensor([0.1, -0.2, -1.0], device=device)
    normal = normal / normal.norm()
    offset = -0.1  # f = n.x - offset, positive on the camera side

    res = box_trace(lambda x: x @ normal - offset, origins, dirs)
    t_cf = (offset - origins @ normal) / (dirs @ normal)
    box = ray_aabb_intersect(origins, dirs)
    expect_hit = box.valid & (t_cf >= box.t_near) & (t_cf <= box.t_far)
    # rays whose plane hit is within 1e-3 of a box face are ambiguous at float32 / hit_eps
    clear = ((t_cf - box.t_near).abs() > 1e-3) & ((t_cf - box.t_far).abs() > 1e-3)
    assert expect_hit.any() and (~expect_hit).any()
    assert torch.equal(res.hit[clear], expect_hit[clear])
    ok = expect_hit & clear
    # plane at ~15 deg incidence: depth error <= hit_eps / cos ~ 1e-5
    assert (res.t[ok] - t_cf[ok]).abs().max() < 1e-4


def test_thin_shell_hits_outer_sheet(device):
    origins, dirs = camera_rays(device)
    res = box_trace(shell_sdf(CENTRE, RADIUS, SHELL), origins, dirs)
    t_outer, closest = sphere_depth(origins, dirs, CENTRE, RADIUS + SHELL / 2)
    t_inner, _ = sphere_depth(origins, dirs, CENTRE, RADIUS - SHELL / 2)
    ok = closest < RADIUS - SHELL / 2 - GRAZE  # crosses both sheets, away from the rim
    assert ok.sum() > 100 and res.hit[ok].all()
    # same hit_eps / cos bound as the solid sphere
    assert (res.t[ok] - t_outer[ok]).abs().max() < 1e-4
    assert (res.t[ok] < t_inner[ok] - SHELL / 4).all()  # not the inner sheet


def test_trace_edge_cases():
    """Empty segment -> miss at t_near; start inside -> hit at t_near; miss t = min |f| sample."""
    sdf = sphere_sdf((0.0, 0.0, 0.0), 0.5)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.1], [0.7, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    t_near = torch.tensor([2.5, 0.0, 2.0])
    t_far = torch.tensor([2.5, 1.0, 4.0])  # ray 0: empty segment
    res = sphere_trace(sdf, origins, dirs, t_near, t_far, **TRACE)
    assert res.hit.tolist() == [False, True, False]
    assert res.t[:2].tolist() == [2.5, 0.0]
    # ray 2 passes 0.2 from the sphere; the march samples z = -1, -0.28, -0.026, 0.17, ...
    # with f = 0.72, 0.254, 0.2005, 0.22, ...: the best is z = -0.026 (f within 1e-3 of 0.2)
    assert abs(res.points[2, 2].item() + 0.026) < 1e-3
    assert abs(sdf(res.points[2:]).item() - 0.2) < 1e-3


def test_overshooting_sdf_is_refined(device):
    """f = 1.8 * (|x - c| - r) over-estimates distance: steps jump past the surface."""
    origins, dirs = camera_rays(device)
    sdf = sphere_sdf(CENTRE, RADIUS, scale=1.8)
    t_cf, closest = sphere_depth(origins, dirs, CENTRE, RADIUS)
    clear = (closest - RADIUS).abs() > GRAZE
    expect_hit = closest < RADIUS
    res = box_trace(sdf, origins, dirs)
    assert not res.hit[~expect_hit & clear].any()
    # near the rim a step can jump the whole (short) chord: those become misses, the rest hit
    assert res.hit[expect_hit & clear].float().mean() > 0.9
    ok = res.hit & expect_hit & clear
    # the secant bracket converges to ~float32 precision; 1e-4 as for the exact sphere
    assert (res.t[ok] - t_cf[ok]).abs().max() < 1e-4
    # without refinement (one interpolation of the overshoot bracket) it is much worse,
    # i.e. the march really overshoots and the refinement is what makes it accurate
    coarse = box_trace(sdf, origins, dirs, secant_steps=0)
    assert (coarse.t[ok] - t_cf[ok]).abs().max() > 1e-2
    # the scan (box segments ~2.1 long / 255: spacing ~0.008) is far finer than any chord
    # outside the graze band (>= 2 sqrt(r^2 - (r - GRAZE)^2) ~ 0.28): it recovers the rim
    scanned = box_trace(sdf, origins, dirs, check_samples=256)
    assert torch.equal(scanned.hit[clear], expect_hit[clear])
    ok = expect_hit & clear
    assert (scanned.t[ok] - t_cf[ok]).abs().max() < 1e-4


def test_overshoot_through_thin_shell_caught_by_scan(device):
    """A 1.8x shell SDF jumps clean over the 0.02-thick front sheet; the scan finds it."""
    origins, dirs = camera_rays(device)
    sdf = shell_sdf(CENTRE, RADIUS, SHELL, scale=1.8)
    t_outer, closest = sphere_depth(origins, dirs, CENTRE, RADIUS + SHELL / 2)
    ok = closest < RADIUS - SHELL / 2 - GRAZE
    plain = box_trace(sdf, origins, dirs)
    assert ((plain.t[ok] - t_outer[ok]).abs() > 0.1).float().mean() > 0.5  # wrong sheet
    # box segments ~2.1 long / 255: spacing ~0.008 < the 0.02 shell thickness along the ray
    res = box_trace(sdf, origins, dirs, check_samples=256)
    assert res.hit[ok].all()
    assert (res.t[ok] - t_outer[ok]).abs().max() < 1e-4


def test_reattach_gradient_matches_finite_differences(device):
    """d(hit)/dr for f = |x - c| - r: autograd through reattach_hits vs re-tracing at r +- dr."""
    dtype = torch.float64  # FD of traced points needs trace error << dr
    origins, dirs = camera_rays(device, n=8, half_fov=0.08, dtype=dtype)  # all hit the sphere
    centre = torch.tensor(CENTRE, dtype=dtype, device=device)
    kw = dict(max_steps=200, hit_eps=1e-12, secant_steps=8)

    def trace(r):
        f = lambda x: (x - centre).norm(dim=-1) - r
        box = ray_aabb_intersect(origins, dirs)
        return sphere_trace(f, origins, dirs, box.t_near, box.t_far, **kw)

    r = torch.full((origins.shape[0],), RADIUS, dtype=dtype, device=device, requires_grad=True)
    x0 = trace(RADIUS).points
    assert trace(RADIUS).hit.all()
    xg = x0.clone().requires_grad_(True)
    normals = torch.autograd.grad(((xg - centre).norm(dim=-1)).sum(), xg)[0]
    sdf = (x0 - centre).norm(dim=-1) - r  # graph to r only
    x = reattach_hits(sdf, normals, dirs, x0)
    assert torch.equal(x, x0)  # forward is x0 bit for bit
    grad = torch.stack([torch.autograd.grad(x[:, k].sum(), r, retain_graph=True)[0]
                        for k in range(3)], -1)  # [n_rays, 3], ray i only depends on r_i
    dr = 1e-4
    fd = (trace(RADIUS + dr).points - trace(RADIUS - dr).points) / (2 * dr)
    # central FD: O(dr^2 * |x'''|) ~ 1e-8 plus trace error 1e-12 / dr; 1e-6 leaves margin
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-6)


def test_reattach_gradcheck_float64():
    """gradcheck w.r.t. the sdf value: plane f = n.x + s with the exact root as x0(s)."""
    torch.manual_seed(0)
    n_rays = 4
    origins = torch.randn(n_rays, 3, dtype=torch.float64) - torch.tensor([0, 0, 3.0])
    dirs = torch.randn(n_rays, 3, dtype=torch.float64) * 0.2 + torch.tensor([0, 0, 1.0])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    normal = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    normal = normal.expand(n_rays, 3)
    s = torch.randn(n_rays, dtype=torch.float64, requires_grad=True)

    def hit_point(s):
        with torch.no_grad():  # the root finder: exact, detached
            t0 = -((normal * origins).sum(-1) + s) / (normal * dirs).sum(-1)
            x0 = origins + t0[:, None] * dirs
        sdf = (normal * x0).sum(-1) + s  # f(x0; s), zero in value
        return reattach_hits(sdf, normal, dirs, x0)

    # the forward moves only through x0(s), the backward only through reattach_hits:
    # they agree iff reattach_hits gives the implicit-function derivative
    assert torch.autograd.gradcheck(hit_point, (s,), eps=1e-6, atol=1e-7)


def test_reattach_grazing_clamp_keeps_sign():
    x0 = torch.zeros(3, 3)
    dirs = torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3)
    normals = torch.tensor([[0.0, 1.0, 0.0], [1e-9, 1.0, 0.0], [-1e-9, 1.0, 0.0]])  # n.d 0, +-1e-9
    s = torch.zeros(3, requires_grad=True)
    x = reattach_hits(s + 0.0, normals, dirs, x0)
    g = torch.stack([torch.autograd.grad(x[i, 0], s, retain_graph=True)[0][i] for i in range(3)])
    # dx/ds = -d_x / clamp(n.d) = -+1 / MIN_COS exactly (float32 of 1e3); n.d = 0 counts as +
    torch.testing.assert_close(g, torch.tensor([-1.0, -1.0, 1.0]) / MIN_COS)
    with pytest.raises(ValueError, match=r"got \[3, 2\]"):
        reattach_hits(s, normals[:, :2], dirs, x0)


def test_shadow_rays_hit_as_the_closed_form():
    """Rays from points around a sphere, from t = 0 to the box (shadow rays): a hit iff the ray's line
    meets the sphere in front of the origin inside the box; a step budget too short finds fewer."""
    g = torch.Generator().manual_seed(3)
    c, r = torch.tensor([0.1, -0.05, 0.2]), 0.4
    sdf = sphere_sdf(c.tolist(), r)
    dirs = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    radial = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    origins = c + radial * (r + 0.05 + 0.3 * torch.rand(4000, 1, generator=g))
    t_far = ray_aabb_intersect(origins, dirs, -1.0, 1.0).t_far

    def hits(steps):
        return sphere_trace(sdf, origins, dirs, torch.zeros_like(t_far), t_far, max_steps=steps, hit_eps=1e-5,
                            secant_steps=0).hit

    oc = origins - c
    b = (oc * dirs).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    t0 = -b - disc.clamp_min(0).sqrt()
    truth = (disc > 0) & (t0 > 0) & (t0 <= t_far)
    grazing = disc.abs() < 1e-3  # the march cannot tell a tangent line within eps
    assert truth.sum() > 500 and (~truth).sum() > 500
    assert torch.equal(hits(200)[~grazing], truth[~grazing])
    short = hits(3)
    assert not (short & ~truth).any() and short.sum() < truth.sum() - 100

"""The image-space height map of the detail stage (model.geometry.detail = "height_map"): projection,
interpolation, its derivatives, its effect on the SDF, and the smoothness prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsider.camera import Camera, project
from fastsider.config import ConfigError, load_config
from fastsider.nn.fields import SiderModel
from fastsider.nn.height_map import HeightMap, laplacian_energy
from fastsider.sdf.shell import Normalization
from fastsider.sdf.trace import ray_aabb_intersect, sphere_trace

SIZE = 64
CAMERA = Camera(SIZE, SIZE, fx=320.0, fy=320.0, cx=(SIZE - 1) / 2, cy=(SIZE - 1) / 2)
NORM = Normalization(centre=np.array([0.0, 0.0, 600.0]), half_size=60.0)  # a 120 mm box 600 mm away


def points_in_view(n: int, seed: int = 0) -> torch.Tensor:
    """Unit-box points whose projections fall well inside the crop."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([0.8, 0.8, 1.6], dtype=torch.float64)
    return p


def test_grid_coordinates_are_the_camera_projection():
    hm = HeightMap(CAMERA, NORM, SIZE).double()
    x = points_in_view(50)
    uv = project(CAMERA, NORM.to_mm(x.numpy()))
    assert np.allclose(hm.grid_coordinates(x).detach().numpy(), uv, atol=1e-9)
    half = HeightMap(CAMERA, NORM, SIZE // 2).double()  # half resolution: pixel centres 2k, 2k+1 -> k
    g = half.grid_coordinates(x).detach().numpy()
    assert np.allclose(g, (uv + 0.5) / 2.0 - 0.5, atol=1e-9)


def test_bilinear_reproduces_a_plane_in_pixels_and_its_gradient():
    hm = HeightMap(CAMERA, NORM, SIZE).double()
    rows, cols = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64),
                                indexing="ij")
    with torch.no_grad():
        hm.values.copy_(0.02 * cols - 0.03 * rows + 0.5)  # mm
    x = points_in_view(200).requires_grad_(True)
    h = hm(x)
    uv = hm.grid_coordinates(x)
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
    assert hm.grid_coordinates(far_left)[0, 0] < -1.0 and hm(far_left).item() == 0.0
    assert hm(points_in_view(10)).allclose(torch.full((10,), 1.0 / NORM.half_size, dtype=torch.float64))


def test_laplacian_energy_is_zero_on_planes_and_exact_on_a_parabola():
    r = torch.arange(16, dtype=torch.float64)
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    assert laplacian_energy(3.0 * cols - rows + 2.0).item() == pytest.approx(0.0, abs=1e-20)
    assert laplacian_energy(rows**2).item() == pytest.approx(4.0)  # 5-point Laplacian of r^2 is 2


def test_a_constant_height_moves_the_traced_surface_towards_the_camera():
    """f = plane(z = 600 mm) - h: a constant h = 0.8 mm moves every hit 0.8 mm closer, to tracer precision."""
    cfg = load_config(None, ["model.geometry.detail=height_map"])
    model = SiderModel(cfg.model, "torch").double()
    with torch.no_grad():
        last = model.geometry.mlp.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
    plane_z = 0.0  # unit box: z = 600 mm
    model.geometry.set_base(lambda x: plane_z - x[:, 2])  # positive in front of the plane, |grad| = 1
    model.geometry.set_height(HeightMap(CAMERA, NORM, SIZE).double())
    with torch.no_grad():
        model.geometry.height.values.fill_(0.8)
    pix = torch.tensor([[10.0, 20.0], [32.0, 32.0], [50.0, 5.0]], dtype=torch.float64)
    dirs = torch.stack([(pix[:, 0] - CAMERA.cx) / CAMERA.fx, (pix[:, 1] - CAMERA.cy) / CAMERA.fy,
                        torch.ones(3, dtype=torch.float64)], 1)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    origins = -torch.tensor(NORM.centre, dtype=torch.float64) / NORM.half_size * torch.ones(3, 1, dtype=torch.float64)
    box = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    hit = sphere_trace(model.sdf, origins, dirs, box.t_near, box.t_far, max_steps=64, hit_eps=1e-7, secant_steps=8)
    assert bool(hit.hit.all())
    z_mm = NORM.to_mm(hit.points.numpy())[:, 2]
    assert np.allclose(z_mm, 600.0 - 0.8, atol=1e-3)


def test_height_map_needs_the_signed_target():
    with pytest.raises(ConfigError, match="signed"):
        load_config(None, ["model.geometry.detail=height_map", "shell.target=shell"])


def test_feature_mask_covers_eyes_brows_lips_and_not_the_skin(example_files):
    from fastsider.face.landmarks import load_landmarks
    from fastsider.face.regions import BROW_UPPER, EYE_LOOP, LIPS_OUTER, feature_mask

    _, lmk_path = example_files
    lmk = load_landmarks(lmk_path)
    h, w = 512, 512
    mask = feature_mask(lmk, (h, w), grow_px=0)

    def at(i: int) -> bool:  # the pixel under landmark i
        return bool(mask[int(round(lmk[i, 1])), int(round(lmk[i, 0]))])

    centres = [lmk[list(EYE_LOOP[s])].mean(0) for s in ("right", "left")] + [lmk[list(LIPS_OUTER)].mean(0)]
    assert all(mask[int(c[1]), int(c[0])] for c in centres)
    brow_mid = [lmk[[BROW_UPPER[s][2], 52 if s == "right" else 282]].mean(0) for s in ("right", "left")]
    assert all(mask[int(p[1]), int(p[0])] for p in brow_mid)
    nose_tip, cheek_right, cheek_left, forehead = 1, 50, 280, 151
    assert not any(at(i) for i in (nose_tip, cheek_right, cheek_left, forehead))
    grown = feature_mask(lmk, (h, w), grow_px=3)
    assert grown.sum() > mask.sum() and (grown | mask).sum() == grown.sum()


def test_fit_with_height_map_end_to_end(tmp_path, example_files):
    import json

    from fastsider.cli import main
    from fit_helpers import fit_argv

    photo, lmk = example_files
    out = tmp_path / "hm" / "mesh.ply"
    argv = fit_argv(photo, lmk, out, "model.geometry.base=coarse_grid", "model.geometry.base_resolution=64",
                    "model.geometry.detail=height_map", "model.rendering.shading=albedo_sh",
                    "stage2.skip_features=true", "stage2.height_lr=0.05")
    assert main(argv) == 0
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["config"]["model"]["geometry"]["detail"] == "height_map"
    assert summary["stage1"]["iterations"] == 0  # the lattice base is exact: no stage-1 steps
    assert summary["stage2"]["iterations"] == 4 and summary["stage2"]["smoothness"] > 0.0  # h moved off zero

"""Stage 2 (fastsider.stages.detail) on a rendered bump on a dome, starting from the dome: the paper's
MLP detail and the fast preset's height map both move the traced surface towards the bump."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsider.camera import Normalization
from fastsider.config import load_config
from fastsider.model import build_model
from fastsider.pictures import raycast_mesh
from fastsider.render import face_rays
from fastsider.sdf.occupancy import make_occupancy_grid
from fastsider.sdf.shell import ShellSDF
from fastsider.stages.coarse_sdf import fit_coarse_sdf, residual_targets, sample_point_pool
from fastsider.stages.detail import fit_details
from synthetic_scenes import bump_depth_error_mm, bump_scene

DEVICE = torch.device("cpu")


def _bump_problem(cfg, sc, image: np.ndarray, pool_points: int):
    """What both stages start from, as fit builds it: the unit box around the coarse dome, its SDF
    target, an SDF point pool (before the residual targets of a lattice), the coarse face mask and
    the face rays of ``image`` through the occupancy grid."""
    norm = Normalization.around(sc.coarse_mesh.vertices, cfg.shell.box_margin)
    shell = ShellSDF(sc.coarse_mesh.vertices, sc.coarse_mesh.faces, cfg.shell.thickness_mm, norm, cfg.shell.target)
    stds = tuple(s / norm.half_size for s in cfg.sdf_pool.near_std_mm)
    pool = sample_point_pool(shell, pool_points, stds, 0.1, np.random.default_rng(0), DEVICE)
    mask = raycast_mesh(sc.coarse_mesh.vertices, sc.coarse_mesh.faces, sc.camera).mask
    grid = make_occupancy_grid(shell, cfg.trace.grid_resolution, cfg.trace.grid_band_mm / norm.half_size)
    return norm, shell, pool, mask, face_rays(sc.camera, norm, mask, image, grid, DEVICE)


@pytest.mark.slow  # ~40 s
def test_detail_stage_recovers_part_of_a_known_bump():
    """Render a 4 mm bump on a dome, start from the dome: stage 2 must move the surface towards it."""
    # the paper's path: a plain MLP fitted in stage 1 and optimized in stage 2 with the rendering MLP
    # (the test below has the fast preset's height map). A weak prior and a high lr let 300 CPU-cheap
    # steps move the surface (the paper's weight 100 / lr 1e-4 barely move it here). The rendering MLP
    # sees the normal only (the paper's Fig. 4 ablation): given x and v too, it can paint the bump's
    # shading as colour, and stage 2 ended anywhere from 0.57x to 1.36x the start error over seeds
    # 0-2 and 1 or 2 threads (2026-12-05); with n alone the normal is the only way to the colour.
    cfg = load_config(None, ["model.sdf=mlp", "model.detail=mlp", "model.shading=mlp",
                             "model.rendering_mlp.use_position=false", "model.rendering_mlp.use_view=false",
                             "stage1.iterations=300", "stage1.batch_points=4096", "stage2.iterations=300",
                             "stage2.mlp.rays_per_batch=1024", "stage2.sdf_points_per_batch=2048",
                             "stage2.sdf_weight=3.0", "stage2.mlp.lr=1e-3", "stage2.appearance_lr=1e-3",
                             "stage2.skip_features=false"])
    sc = bump_scene()
    norm, shell, pool, _, rays = _bump_problem(cfg, sc, sc.image, 24 * cfg.stage1.batch_points)
    model = build_model(cfg.model, DEVICE, shell.sdf)
    pool = residual_targets(pool, model.geometry.base)  # as fit does (unchanged without a lattice)
    gen = torch.Generator().manual_seed(0)
    fit_coarse_sdf(model, pool, cfg.stage1, norm.half_size, gen)

    before = bump_depth_error_mm(model, rays, norm, cfg.trace, sc)  # through the tracer
    stats = fit_details(model, rays, pool, cfg.stage2, cfg.trace, norm.half_size, gen)
    after = bump_depth_error_mm(model, rays, norm, cfg.trace, sc)
    print(f"bump region depth error: {before:.3f} mm -> {after:.3f} mm, PSNR {stats['psnr']:.1f} dB")
    assert before > 1.0  # the flat start really misses the bump (a third of its height or more)
    # measured 2.47 -> 0.92 mm (seeds 1, 2: 0.29x, 0.38x the start error); a stage that ignores the
    # image stays at 2.47. (On a flat patch the shading makes a dent under the mirrored light as
    # likely as the bump; the dome pins the light.)
    assert after < 0.6 * before


def test_height_map_stage_recovers_a_known_bump_under_an_albedo_blotch():
    """A 1.5 mm bump on a dome, photographed with a smooth brightness blotch in the albedo; stage 2
    starts from the dome with a height map and an 8x8 albedo grid. The traced surface must move
    towards the bump: the blotch goes to the albedo, the bump's shading to the geometry."""
    cfg = load_config(None, ["model.lattice.resolution=96", "model.height_map.resolution=0",
                             "model.albedo_map.resolution=8", "stage2.iterations=300"])
    sc = bump_scene(size_px=96, bump_mm=1.5, sigma_mm=5.0)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    blotch = 1.0 + 0.08 * np.sin(2 * np.pi * (0.7 * xx + 0.4 * yy))  # a ~80 mm wave of brightness
    image = (sc.image * blotch[..., None]).astype(np.float32)
    norm, shell, pool, mask, rays = _bump_problem(cfg, sc, image, 8 * 4096)
    model = build_model(cfg.model, DEVICE, shell.sdf, sc.camera, norm, torch.tensor(image[mask]))
    pool = residual_targets(pool, model.geometry.base)

    before = bump_depth_error_mm(model, rays, norm, cfg.trace, sc)  # through the tracer
    stats = fit_details(model, rays, pool, cfg.stage2, cfg.trace, norm.half_size, torch.Generator().manual_seed(0))
    after = bump_depth_error_mm(model, rays, norm, cfg.trace, sc)
    print(f"bump region depth error: {before:.3f} mm -> {after:.3f} mm, PSNR {stats['psnr']:.1f} dB")
    assert before > 0.7
    assert after < 0.65 * before  # measured 0.92 -> 0.34 mm (0.49 without debiasing); ignoring the image stays at 0.92

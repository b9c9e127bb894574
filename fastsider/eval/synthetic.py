"""Synthetic faces whose fine geometry is known: the ground truth of ``fastsider bench``.

A case is built in five steps, all seeded (``make_case(seed)`` is byte-reproducible):

1. **Base**: a smooth face surface in the camera frame (mm). By default the embedded coarse
   model (``face.default_model``) on the example photo's landmarks (cached in
   ``eval/data/example_landmarks.npy``, so no detector runs), scaled by a few % per head axis
   and turned by a few degrees per seed.
2. **Fine base**: Loop-subdivided ``loop_levels`` times, then red-green refined (edge midpoints)
   near the details until every edge there is shorter than ``max_edge_mm``.
3. **Details**: displacement along the base vertex normals,
   ``d(x) = sum_i depth_i * envelope_i(s) * g(r / sigma_i)``, with r the distance to detail i's
   curve on the surface, s the arc length along it, ``sigma = FWHM / 2.3548`` and g a Gaussian cut
   to zero at ``CUTOFF_SIGMAS``. Grooves (negative depth): forehead lines, crow's feet,
   nasolabial folds; bumps (positive): moles. Labels 1..4 mark where ``|d| >= LABEL_MIN_MM``.
4. **Coarse mesh**: the base at ``coarse_loop_levels`` (within ~0.02 mm of the fine base), plus an
   optional smooth fitting error of ``coarse_error_mm``.
5. **Photo**: the GT mesh ray-cast (Embree) with ``supersample^2`` jittered rays per pixel,
   interpolated vertex normals, Lambertian skin (tone, blotches, freckles, lips, brows, eyes) under
   a directional light in a frontal cone + ambient + weak Blinn-Phong, over a smooth gradient, plus
   Gaussian noise.

The case is consistent with the user-mesh path: ``fastsider fit case/image.png --coarse
case/coarse.ply --camera case/camera.json`` (identity ``world_to_camera``).

The steps live in their own modules: the base and its meshing in ``eval.synthetic_base`` (1, 2, 4),
the details in ``eval.synthetic_details`` (3), the photo in ``eval.synthetic_photo`` (5), the
settings in ``eval.synthetic_params``; this module assembles and writes cases.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from fastsider.camera import Camera
from fastsider.eval.synthetic_base import FaceBase, example_base, loop_subdivide, refine_near, synthetic_camera
from fastsider.eval.synthetic_details import REGIONS, Detail, displacement_field, near_details, plan_details
from fastsider.eval.synthetic_params import SyntheticParams
from fastsider.eval.synthetic_photo import (background_colours, backdrop_image, light_direction, render_photo,
                                            skin_albedo, waves)
from fastsider.face.default_model import orient_towards_camera
from fastsider.face.landmarks import N_MESH_LANDMARKS, NOW_LANDMARK_IDS
from fastsider.io import OutputStage, save_image, save_json, save_mesh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticCase:
    seed: int
    params: SyntheticParams
    image: np.ndarray           # [H, W, 3] uint8
    camera: Camera
    gt_vertices: np.ndarray     # [n_verts, 3] mm, float32-exact (as written to gt.ply)
    gt_faces: np.ndarray        # [n_faces, 3]
    base_vertices: np.ndarray   # [n_verts, 3] the GT before details (same faces)
    labels: np.ndarray          # [n_verts] uint8, REGIONS codes
    displacement: np.ndarray    # [n_verts] mm along the base normal: gt = base + d * n
    albedo: np.ndarray          # [n_verts, 3] in [0, 1], what the photo was rendered with
    coarse_vertices: np.ndarray  # [n_coarse, 3] mm, float32-exact
    coarse_faces: np.ndarray     # [n_coarse_faces, 3]
    landmarks7: np.ndarray      # [7, 3] NoW landmarks on the GT (ids NOW_LANDMARK_IDS)
    details: tuple[Detail, ...]
    light_dir: np.ndarray       # [3] unit, towards the light, camera frame
    background: np.ndarray      # [2, 3] top and bottom colours of the backdrop gradient
    info: dict = field(default_factory=dict)  # counts and timings, for logs


# --------------------------------------------------------------------------------------------
# cases


def _coarse_error(vertices: np.ndarray, faces: np.ndarray, params: SyntheticParams,
                  rng: np.random.Generator) -> np.ndarray:
    """The coarse mesh's vertices plus a smooth error along the normals peaking at coarse_error_mm."""
    if params.coarse_error_mm <= 0.0:
        return vertices
    e = waves(vertices, rng, params.coarse_error_wavelength_mm, 4)
    e *= params.coarse_error_mm / max(np.abs(e).max(), 1e-12)
    return vertices + e[:, None] * trimesh.Trimesh(vertices, faces, process=False).vertex_normals


def _photo(gt: np.ndarray, faces: np.ndarray, albedo: np.ndarray, cam: Camera, params: SyntheticParams,
           r_scene: np.random.Generator, r_render: np.random.Generator):
    """(photo, light direction, backdrop colours, scene description) with ``params.renderer``."""
    if params.renderer == "simple":
        light, background = light_direction(r_scene, params), background_colours(r_scene)
        return render_photo(gt, faces, albedo, cam, light, background, params, r_render), light, background, {}
    if params.renderer != "cycles":
        raise ValueError(f"unknown renderer {params.renderer!r}; known: 'simple', 'cycles'")
    from fastsider.eval.cycles import cycles_photo, draw_scene, scene_json

    background, scene = background_colours(r_scene), draw_scene(r_scene)
    image = cycles_photo(gt, faces, albedo, cam, backdrop_image(cam, background, params), scene,
                         params.cycles_samples, r_render)
    return image, scene.key_dir, background, scene_json(scene)


def _landmark_vertices(base: FaceBase, vertices: np.ndarray) -> np.ndarray:
    """Vertex ids [468] of the landmarks on a subdivision of the base (Loop keeps the first ids)."""
    if np.allclose(base.vertices[:N_MESH_LANDMARKS], base.landmarks):
        return np.arange(N_MESH_LANDMARKS)
    return cKDTree(vertices).query(base.landmarks)[1]


def _f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 (what PLY stores), kept as float64, so memory and files agree."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def make_case(seed: int, params: SyntheticParams = SyntheticParams(), base: FaceBase | None = None) -> SyntheticCase:
    """One synthetic case. Same seed and params -> identical arrays and a byte-identical image.

    Args:
        seed: drives the base variation (``example_base``), details, appearance, light and noise.
        base: a smooth face in ``synthetic_camera(params)``'s frame; default ``example_base(seed, params)``.
    """
    if params.loop_levels < params.coarse_loop_levels:
        raise ValueError(f"loop_levels ({params.loop_levels}) must be >= "
                         f"coarse_loop_levels ({params.coarse_loop_levels})")
    t0 = time.perf_counter()
    r_details, r_albedo, r_scene, r_render, r_coarse = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0]).spawn(5))
    base = example_base(seed, params) if base is None else base
    cam = synthetic_camera(params)
    faces = orient_towards_camera(base.vertices, base.faces)  # outward normals: grooves go into the skin
    coarse_v, coarse_f = loop_subdivide(base.vertices, faces, params.coarse_loop_levels)
    fine_v, fine_f = loop_subdivide(coarse_v, coarse_f, params.loop_levels - params.coarse_loop_levels)
    fine = trimesh.Trimesh(fine_v, fine_f, process=False)
    lmk_ids = _landmark_vertices(base, fine_v)
    details = plan_details(fine, fine_v[lmk_ids], params, r_details)
    near = near_details(fine_v, details, margin=params.max_edge_mm)
    v, f, n = refine_near(fine_v, fine_f, fine.vertex_normals, near, params.max_edge_mm)
    disp, labels = displacement_field(v, details)
    gt = _f32(v + disp[:, None] * n)
    albedo = skin_albedo(v, f, v[lmk_ids], params, r_albedo)
    image, light, background, scene = _photo(gt, f, albedo, cam, params, r_scene, r_render)
    coarse_v = _f32(_coarse_error(coarse_v, coarse_f, params, r_coarse))
    info = {"gt_vertices": len(gt), "gt_faces": len(f), "coarse_vertices": len(coarse_v),
            "seconds": round(time.perf_counter() - t0, 2), "scene": scene}
    log.info("synthetic case %d: %d details, %d GT vertices, %.1f s", seed, len(details), len(gt), info["seconds"])
    return SyntheticCase(seed, params, image, cam, gt, f, v, labels, disp, albedo, coarse_v, np.asarray(coarse_f),
                         gt[lmk_ids[list(NOW_LANDMARK_IDS)]], tuple(details), light, background, info)


CASE_FILES = ("image.png", "gt.ply", "base.ply", "coarse.ply", "camera.json", "gt_labels.npy", "gt_displacement.npy",
              "landmarks7.txt", "case.json")


def write_case(case: SyntheticCase, folder: str | Path) -> list[Path]:
    """Write CASE_FILES into ``folder`` (all or nothing). Returns their paths.

    gt_labels.npy: [n_gt] uint8 REGIONS codes; gt_displacement.npy: [n_gt] float32 mm along the
    base normal (gt = base + d * n); landmarks7.txt: 7 rows x y z (mm, camera frame, NoW order).
    """
    with OutputStage(folder) as stage:
        save_image(stage.path("image.png"), case.image)
        save_mesh(stage.path("gt.ply"), case.gt_vertices, case.gt_faces)
        save_mesh(stage.path("base.ply"), case.base_vertices, case.gt_faces)  # the GT before its details
        save_mesh(stage.path("coarse.ply"), case.coarse_vertices, case.coarse_faces)
        save_json(stage.path("camera.json"), case.camera.to_json_dict())
        np.save(stage.path("gt_labels.npy"), case.labels)
        np.save(stage.path("gt_displacement.npy"), case.displacement.astype(np.float32))
        np.savetxt(stage.path("landmarks7.txt"), case.landmarks7, fmt="%.4f")
        save_json(stage.path("case.json"), {
            "seed": case.seed, "units": "mm", "frame": "camera (OpenCV: x right, y down, z forward)",
            "params": dataclasses.asdict(case.params), "labels": REGIONS,
            "landmarks7_ids": list(NOW_LANDMARK_IDS), "light_dir": case.light_dir, "background": case.background,
            "scene": case.info.get("scene", {}),
            "n_gt_vertices": len(case.gt_vertices), "n_coarse_vertices": len(case.coarse_vertices),
            "details": [d.to_json_dict() for d in case.details],
        })
        return stage.commit()


def generate_cases(out_dir: str | Path, n: int, seed: int = 0,
                   params: SyntheticParams = SyntheticParams()) -> list[Path]:
    """Cases ``out_dir/case_000 ...`` with seeds seed, seed + 1, ...; returns the case folders."""
    folders = []
    for i in range(n):
        folder = Path(out_dir) / f"case_{i:03d}"
        write_case(make_case(seed + i, params), folder)
        folders.append(folder)
    return folders

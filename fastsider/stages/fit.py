"""The ``fit`` job: prepare -> stage 1 (coarse SDF) -> stage 2 (details) -> mesh + pictures + summary."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh

from fastsider import __version__
from fastsider.camera import Normalization, pixel_rays, world_to_camera_points
from fastsider.config import FitConfig, TraceConfig, to_dict
from fastsider.errors import FastsiderError, InputError
from fastsider.face.landmarks import detect_landmarks
from fastsider.face.pigment import pigment_mask
from fastsider.face.regions import feature_mask
from fastsider.io import OutputStage, save_image, save_json, save_mesh
from fastsider.model import build_model
from fastsider.nn.fields import SiderModel
from fastsider.pictures import SurfaceImage, depth_picture, normal_map, overlay, raycast_mesh, raycast_views
from fastsider.render import RayBundle, face_rays, render_views
from fastsider.sdf.mesh import Coarse, drop_small_pieces, extract_face_mesh
from fastsider.sdf.occupancy import OccupancyGrid, make_occupancy_grid
from fastsider.sdf.shell import ShellSDF, to_mid_surface
from fastsider.stages.checkpoint import CHECKPOINT_NAME, CheckpointStore, config_hash, inputs_hash
from fastsider.stages.coarse_sdf import fit_coarse_sdf, sample_point_pool
from fastsider.stages.detail import fit_details
from fastsider.stages.export import photo_view, write_coarse_outputs, write_now_landmarks
from fastsider.stages.loop import DivergenceError, deterministic_algorithms, graceful_interrupts, raise_if_interrupted
from fastsider.stages.prepare import CoarseInputs, Prepared, prepare
from fastsider.stages.topology import detailed_topology, write_topology_outputs

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
PARTIAL_DIR = ".fastsider-partial"  # staged outputs + checkpoint of an unfinished run
CHECKPOINT_DIR = "checkpoint"       # the OutputStage private folder holding it

# (stage name, step, total steps, stats) -> None; the CLI draws progress bars with it
ProgressFn = Callable[[str, int, int, dict[str, float]], None]


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise FastsiderError("--device cuda requested but CUDA is not available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class FitState:
    """What the stages share: the prepared input, the normalized box, the target and the model."""

    prep: Prepared
    norm: Normalization
    shell: ShellSDF
    model: SiderModel
    grid: OccupancyGrid | None   # empty-space skipping for tracing (None: plain tracing, the paper)
    mesh_band: OccupancyGrid     # where marching cubes evaluates the SDF (always the coarse band)
    face_mask: np.ndarray   # [S, S] bool, pixels the coarse face covers
    ray_mask: np.ndarray    # [S, S] bool, the face pixels stage 2's photometric loss uses
    mm_per_px: float        # a crop pixel's footprint on the face (median depth / focal length)
    device: torch.device


def build_state(prep: Prepared, cfg: FitConfig, device: torch.device) -> FitState:
    c = prep.coarse
    norm = Normalization.around(c.vertices, cfg.shell.box_margin)
    shell = ShellSDF(c.vertices, c.faces, cfg.shell.thickness_mm, norm, cfg.shell.target)
    face_mask = raycast_mesh(c.vertices, c.faces, c.camera).mask
    colors = torch.tensor(prep.image[face_mask], dtype=torch.float32, device=device)
    model = build_model(cfg.model, device, shell.sdf, c.camera, norm, colors)
    # the coarse SDF's lattice, exact near the surface, answers the band's cells in milliseconds where
    # the mesh's distance takes seconds (262k cell centres, mostly far from it)
    coarse_sdf = model.geometry.base if model.geometry.base is not None else shell
    band = make_occupancy_grid(coarse_sdf, cfg.trace.grid_resolution, cfg.trace.grid_band_mm / norm.half_size,
                               device=device)
    grid = band if cfg.trace.use_occupancy_grid else None
    ray_mask = face_mask & ~features_in_crop(prep, c.camera.height) if cfg.stage2.skip_features else face_mask
    mm_per_px = float(np.median(world_to_camera_points(c.camera, c.vertices)[:, 2])) / c.camera.fx
    if cfg.stage2.skip_pigment:
        spots = pigment_mask(prep.image, ray_mask, mm_per_px, cfg.stage2.pigment_threshold)
        log.info("stage 2: %d pigment-spot pixels of %d left out of the photometric loss", spots.sum(), ray_mask.sum())
        ray_mask = ray_mask & ~spots
    return FitState(prep, norm, shell, model, grid, band, face_mask, ray_mask, mm_per_px, device)


FEATURE_GROW_PX = 2  # landmark polygons grown by this much (working-crop pixels) before masking


def features_in_crop(prep: Prepared, size: int) -> np.ndarray:
    """[S, S] bool: the brows, eyes and lips of the working crop, from the photo's landmarks (detected
    here when a user mesh came without them; none found: an empty mask, with a warning)."""
    lmk = prep.landmarks_px
    if lmk is None:
        try:
            lmk = detect_landmarks(prep.photo, source="the photo")
        except InputError as exc:
            log.warning("stage2.skip_features: %s; the photometric loss keeps brows, eyes and lips", exc)
            return np.zeros((size, size), dtype=bool)
    return feature_mask(prep.crop.to_crop(lmk[:, :2]), (size, size), FEATURE_GROW_PX)


def checkpoint_file(out_dir: str | Path) -> Path:
    """Where an unfinished run in ``out_dir`` keeps its checkpoint (OutputStage.private_dir)."""
    return Path(out_dir) / PARTIAL_DIR / f".{CHECKPOINT_DIR}" / CHECKPOINT_NAME


def fit_input_files(image: str | Path | None, inputs: CoarseInputs) -> list[tuple[str, Path | None]]:
    """The files a run depends on, for the checkpoint fingerprint (the example photo has none)."""
    named = [("image", Path(image) if image is not None else None), ("landmarks", inputs.landmarks),
             ("flame", inputs.flame), ("flame_embedding", inputs.flame_embedding), ("mesh", inputs.mesh),
             ("camera", inputs.camera)]
    return [(n, p) for n, p in named if p is not None or n == "image"]


def run_fit(image: str | Path | None, cfg: FitConfig, inputs: CoarseInputs, out_dir: Path,
            mesh_name: str = "mesh.ply", progress: ProgressFn | None = None, resume: bool = False) -> dict[str, Any]:
    """The whole job; all outputs appear in ``out_dir`` only if it succeeds. Returns the summary.

    Checkpoints go to a hidden folder in ``out_dir``; ``resume`` continues from the last one. If a
    stage diverges beyond its rollbacks, the last good state's outputs are written (summary
    ``diverged``) and the :class:`DivergenceError` is raised after that.
    """
    laps = Laps()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    # without a checkpoint there is nothing to resume: staged files of a killed run are dropped
    has_checkpoint = checkpoint_file(out_dir).is_file()
    if resume and not has_checkpoint:
        log.info("no checkpoint in %s: starting from the beginning", out_dir)
    resume = resume and has_checkpoint
    with graceful_interrupts(), deterministic_algorithms(device), \
            OutputStage(out_dir, partial=PARTIAL_DIR, resume=resume, expect=(mesh_name,)) as out:
        prep = prepare(image, cfg, inputs)  # first: it gives bad inputs their one-line errors
        store = CheckpointStore(out.private_dir(CHECKPOINT_DIR), config_hash(cfg, device.type),
                                inputs_hash(fit_input_files(image, inputs)))
        saved = store.load() if resume else None
        laps.lap("prepare", {k: v for k, v in prep.seconds.items() if k != "prepare"})
        st = build_state(prep, cfg, device)
        if saved is not None:
            store.check_model(saved, st.model)
        pool = sample_point_pool(st.shell, cfg.sdf_pool.size, tuple(s / st.norm.half_size for s in cfg.sdf_pool.near_std_mm),
                                 cfg.sdf_pool.uniform_fraction, rng, device, st.model.geometry.base)
        laps.lap("setup")
        raise_if_interrupted()
        s1, s2, rays, diverged = _run_stages(st, cfg, pool, store, saved, out, progress, laps)

        raise_if_interrupted()
        outputs = write_fit_outputs(out, st, cfg, mesh_name)
        laps.lap("outputs", outputs.pop("seconds"))
        summary = make_summary(cfg, st, s1, s2, laps.seconds(), outputs, len(rays.pixels))
        summary["seconds_parts"] = laps.parts
        summary["resumed_from"] = f"{saved['stage']} step {saved['loop']['step']}" if saved else None
        summary["diverged"] = str(diverged) if diverged else None
        save_json(out.path("summary.json"), summary)
        raise_if_interrupted()  # a Ctrl-C while writing: stop resumable rather than half-report success
        out.commit()
    if diverged is not None:
        raise DivergenceError(f"{diverged}; the last good state was written to {out_dir / mesh_name}",
                              diverged.stats)
    return summary


class Laps:
    """Wall time of a job's consecutive parts: each ``lap`` takes the time since the one before, so the
    parts add up to the total by construction; ``parts`` holds each one's own breakdown where given."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}
        self.parts: dict[str, dict[str, Any]] = {}

    def lap(self, name: str, parts: dict[str, Any] | None = None) -> float:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now
        if parts:
            self.parts[name] = parts
        log.info("%s done: %.1f s", name, self.laps[name])
        return self.laps[name]

    def seconds(self) -> dict[str, float]:
        """Every lap, and ``total``: their sum, the wall time from the start to the last lap."""
        return {**self.laps, "total": self.last - self.start}


def _run_stages(st: FitState, cfg: FitConfig, pool, store: CheckpointStore, saved: dict | None,
                out: OutputStage, progress: ProgressFn | None, laps: Laps | None = None):
    """Stage 1 then stage 2, each resumed from ``saved`` when it is that stage's checkpoint; ``laps``
    takes each stage's wall time (the loop's own seconds are in the stage's stats)."""
    laps = laps if laps is not None else Laps()
    gen = torch.Generator(device=st.device).manual_seed(cfg.seed)
    stage = saved["stage"] if saved else None
    rays = face_rays(st.prep.coarse.camera, st.norm, st.ray_mask, st.prep.image, st.grid, st.device)
    s1 = saved["stage1_result"] if stage == "stage2" else None
    try:
        if s1 is None:
            s1 = fit_coarse_sdf(st.model, pool, cfg.stage1, st.norm.half_size, gen,
                                _stage_progress(progress, "stage 1 (coarse SDF)", cfg.stage1.iterations),
                                run=cfg.run, resume=saved if stage == "stage1" else None,
                                checkpoint=lambda state: store.save({"stage": "stage1", **state}))
        laps.lap("stage1")
        log.info("stage 2 (details): %d steps on %d face rays", cfg.stage2.iterations, len(rays.pixels))
        s2 = fit_details(st.model, rays, pool, cfg.stage2, cfg.trace, st.norm.half_size, gen,
                         _stage_progress(progress, "stage 2 (details)", cfg.stage2.iterations),
                         lambda step: _write_snapshot(out, st, cfg, step), run=cfg.run,
                         resume=saved if stage == "stage2" else None,
                         checkpoint=lambda state: store.save({"stage": "stage2", "stage1_result": s1, **state}),
                         mm_per_px=st.mm_per_px)
        laps.lap("stage2")
    except DivergenceError as exc:
        log.error("%s", exc)
        failed = {**exc.stats, "diverged": True}
        laps.lap("stage1" if s1 is None else "stage2")
        if s1 is None:
            return {**failed, "seconds": 0.0}, {}, rays, exc
        return s1, failed, rays, exc
    return s1, s2, rays, None


def _stage_progress(progress: ProgressFn | None, name: str, total: int):
    if progress is None:
        return None
    return lambda step, stats: progress(name, step + 1, total, stats)


def full_view_rays(st: FitState, cfg: FitConfig) -> RayBundle:
    return face_rays(st.prep.coarse.camera, st.norm, st.face_mask, st.prep.image, st.grid, st.device, erode=0)


VIEW_SEARCH_MM = 1.5   # pictures trace the model this far either side of the mesh's hit ...
VIEW_TRACE_STEPS = 32  # ... in this many steps (the example: 0.4% of the face pixels lost at 24, 4.5% at 12)


def mesh_view_rays(st: FitState, surf: SurfaceImage) -> RayBundle:
    """The working crop's rays that hit the mesh (``surf``: its picture in the working crop, mm, camera
    frame), each searching the model's surface within VIEW_SEARCH_MM of that hit instead of across the
    occupancy grid's band."""
    cam = st.prep.coarse.camera
    v, u = np.nonzero(surf.mask)
    pixels = torch.tensor(np.stack([u, v], 1), dtype=torch.float32, device=st.device)
    origins_mm, dirs = pixel_rays(cam, pixels)
    t_hit = torch.tensor(surf.depth[v, u], dtype=torch.float32, device=st.device) / dirs[:, 2] / st.norm.half_size
    reach = VIEW_SEARCH_MM / st.norm.half_size
    colors = torch.tensor(st.prep.image[v, u], dtype=torch.float32, device=st.device)
    return RayBundle(pixels, st.norm.rays_to_unit(origins_mm, dirs), dirs, (t_hit - reach).clamp(min=0.0),
                     t_hit + reach, colors)


def view_images(st: FitState, trace: TraceConfig, rays: RayBundle) -> dict[str, np.ndarray]:
    """Detailed normals, z-depth (mm) and rendered colour images of the working crop."""
    r = render_views(st.model, rays, trace)
    size = st.prep.coarse.camera.width
    pix = rays.pixels[r.hit].long().cpu().numpy()
    mask = np.zeros((size, size), dtype=bool)
    mask[pix[:, 1], pix[:, 0]] = True
    normals = np.zeros((size, size, 3))
    normals[pix[:, 1], pix[:, 0]] = r.normals.cpu().numpy()
    depth = np.zeros((size, size))
    points_mm = to_mid_surface(st.norm.to_mm(r.points.cpu().numpy()), r.normals.cpu().numpy(),
                               st.shell.surface_offset_mm)
    depth[pix[:, 1], pix[:, 0]] = points_mm[:, 2]
    render = np.ones_like(st.prep.image)
    render[pix[:, 1], pix[:, 0]] = r.rgb.cpu().numpy()
    return {"mask": mask, "normals": normals, "depth": depth, "render": render}


def _write_snapshot(out: OutputStage, st: FitState, cfg: FitConfig, step: int) -> None:
    views = view_images(st, cfg.trace, full_view_rays(st, cfg))
    pic = np.concatenate([normal_map(views["normals"], views["mask"]), views["render"]], axis=1)
    save_image(out.path(f"{SNAPSHOT_DIR}/step_{step:05d}.png", replace=True), pic)  # a rollback may redo a step


def write_fit_outputs(out: OutputStage, st: FitState, cfg: FitConfig, mesh_name: str) -> dict[str, Any]:
    """Every file of a fit but summary.json; returns their figures, with ``seconds`` by part."""
    prep, t, seconds = st.prep, time.perf_counter(), {}
    write_coarse_outputs(out, prep, "coarse.ply", overlay_name="coarse_overlay.png")
    seconds["coarse"], t = time.perf_counter() - t, time.perf_counter()
    topo = (detailed_topology(st, cfg.export, with_atlas=cfg.export.topology)
            if cfg.export.topology or cfg.mesh.method == "topology" else None)
    topology, baked = None, None
    if cfg.export.topology:
        topology, baked = write_topology_outputs(out, st, cfg.export, topo, Path(mesh_name).stem)
        seconds["topology"], t = time.perf_counter() - t, time.perf_counter()
        log.info("topology mesh: %d vertices (%d subdivision levels of the coarse %d), %d texel maps, %.1f s",
                 topology["vertices"], topology["subdivision_levels"], topology["coarse_vertices"],
                 topology["texture_size"], seconds["topology"])
    if cfg.mesh.method == "topology":  # mesh.obj's vertices where it was written
        verts, faces, pieces = (baked if baked is not None else topo.vertices), topo.sub.faces, {}
    else:
        verts, faces, pieces = marching_cubes_mesh(st, cfg)
    if len(faces) == 0:
        raise FastsiderError("the detailed surface came out empty (no zero level set in the face region)")
    if not np.all(np.isfinite(verts)):
        raise FastsiderError("the detailed surface has non-finite vertices; not writing it")
    save_mesh(out.path(mesh_name), verts, faces)
    seconds["mesh"], t = time.perf_counter() - t, time.perf_counter()
    if len(prep.coarse.landmark_ids):
        write_now_landmarks(out, "landmarks7.txt", prep.coarse.landmarks_3d, prep.coarse.landmark_ids)
    photo, cam = photo_view(prep)
    crop_surf, photo_surf = raycast_views(verts, faces, [prep.coarse.camera, cam])
    views = view_images(st, replace(cfg.trace, max_steps=VIEW_TRACE_STEPS), mesh_view_rays(st, crop_surf))
    save_image(out.path("normals.png"), normal_map(views["normals"], views["mask"]))
    np.save(out.path("depth.npy"), views["depth"].astype(np.float32))
    save_image(out.path("depth.png"), depth_picture(views["depth"], views["mask"]))
    save_image(out.path("render.png"), views["render"])
    save_image(out.path("overlay.png"), overlay(photo, photo_surf))
    seconds["pictures"] = time.perf_counter() - t
    return {"mesh_method": cfg.mesh.method, "mesh_vertices": int(len(verts)), "mesh_faces": int(len(faces)),
            **pieces, "coarse_vertices": int(len(prep.coarse.vertices)), "topology": topology, "seconds": seconds}


def marching_cubes_mesh(st: FitState, cfg: FitConfig) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """mesh.ply by marching cubes of the SDF in the coarse band: vertices (mm, on the surface the shell
    was built around), faces, and how many pieces it kept and dropped."""
    # only a height map bounds the detail: a residual MLP trained in stage 2 may cross zero anywhere
    base, band = st.model.geometry.base, cfg.mesh.detail_band_mm / st.norm.half_size
    bounded = base is not None and cfg.model.detail == "height_map" and band > 0
    coarse = Coarse(base, band) if bounded else None
    verts, faces = extract_face_mesh(st.model.sdf, st.norm, st.mesh_band, cfg.mesh.resolution, st.prep.coarse.camera,
                                     st.face_mask, st.device, cfg.mesh.chunk_points, coarse)
    if len(faces) == 0:
        return verts, faces, {}
    verts, faces, n_pieces, n_dropped = drop_small_pieces(verts, faces, cfg.mesh.min_piece_fraction)
    normals = trimesh.Trimesh(verts, faces, process=False).vertex_normals
    verts = to_mid_surface(verts, normals, st.shell.surface_offset_mm)
    return verts, faces, {"mesh_pieces": n_pieces - n_dropped, "mesh_pieces_dropped": n_dropped}


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and CUDA's max allocated on a GPU), MB."""
    import resource

    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # Linux: KiB
    if device.type == "cuda":
        peak["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def make_summary(cfg: FitConfig, st: FitState, s1: dict, s2: dict, seconds: dict, outputs: dict,
                 n_face_rays: int) -> dict[str, Any]:
    return {
        "fastsider": __version__,
        "config": to_dict(cfg),
        "device": str(st.device),
        "implementation": {"networks": st.model.backend, "normals": st.model.normal_mode,
                           "occupancy_grid": st.grid.backend if st.grid is not None else "none"},
        "coarse_source": st.prep.coarse.source,
        "landmark_reprojection_px": st.prep.reprojection_px,
        "normalization": st.norm.to_json_dict(),
        "face_rays": n_face_rays,
        "seconds": seconds,
        "stage1": s1,
        "stage2": s2,
        "light": st.model.appearance.light.summary() if st.model.appearance.light is not None else None,
        "outputs": outputs,
        "peak_memory_mb": peak_memory_mb(st.device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }

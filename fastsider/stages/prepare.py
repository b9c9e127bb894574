"""Stage 0: photo -> working crop + camera + coarse face mesh (default model, FLAME, or user mesh)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastsider.camera import Camera, project, world_to_camera_points
from fastsider.config import FitConfig
from fastsider.errors import InputError
from fastsider.face.default_model import build_default_coarse, orient_towards_camera
from fastsider.face.landmarks import detect_landmarks, face_box_size, load_landmarks
from fastsider.face.types import CoarseFace
from fastsider.face.user_mesh import COARSE_UNITS, check_face_extent, check_surface
from fastsider.io import (
    EXAMPLE_NAME,
    CropTransform,
    apply_crop,
    load_example,
    load_image,
    load_mesh,
    regular_file,
    square_crop_around,
)

log = logging.getLogger(__name__)

MAX_FACE_TO_PHOTO = 2.0  # a user mesh's projected box may be at most this many times the photo's longer side


@dataclass(frozen=True)
class CoarseInputs:
    """Where the coarse geometry comes from (all optional: default is detect + embedded model)."""

    landmarks: Path | None = None        # user landmarks instead of MediaPipe
    flame: Path | None = None            # user's FLAME model file
    flame_embedding: Path | None = None  # MediaPipe landmark embedding for FLAME (.npz)
    mesh: Path | None = None             # user's coarse mesh ...
    camera: Path | None = None           # ... and its camera.json
    mesh_units: str = "mm"               # the mesh's units (and world_to_camera's translation): mm, cm, m

    def files(self) -> list[tuple[str, Path]]:
        """The input files given, with what each is (for messages)."""
        named = [("landmark file", self.landmarks), ("FLAME file", self.flame),
                 ("FLAME landmark embedding", self.flame_embedding), ("mesh", self.mesh), ("camera file", self.camera)]
        return [(what, p) for what, p in named if p is not None]


@dataclass(frozen=True)
class Prepared:
    photo: np.ndarray               # [H, W, 3] uint8, the input photo
    image: np.ndarray               # [S, S, 3] float in [0, 1], the working crop
    crop: CropTransform             # input pixels -> crop pixels
    camera: Camera                  # camera of the input photo (camera.json)
    coarse: CoarseFace              # in the working-crop camera frame
    landmarks_px: np.ndarray | None  # [478, 3] in input pixels, None for a user mesh
    reprojection_px: float | None   # mean landmark reprojection error of the coarse fit, input px
    seconds: dict[str, float] = field(default_factory=dict)


def working_camera(cfg_focal_factor: float, size: int) -> Camera:
    """The pinhole camera of the square working crop (principal point at its centre)."""
    f = cfg_focal_factor * size
    c = (size - 1) / 2.0
    return Camera(width=size, height=size, fx=f, fy=f, cx=c, cy=c)


def crop_to_input_camera(cam: Camera, crop: CropTransform, width: int, height: int) -> Camera:
    return cam.transformed(1.0 / crop.scale, -crop.offset_x / crop.scale, -crop.offset_y / crop.scale, width, height)


def prepare(image: str | Path | None, cfg: FitConfig, inputs: CoarseInputs = CoarseInputs()) -> Prepared:
    """Load the photo (None: the embedded example) and build the coarse face the neural stages start from."""
    t0 = time.perf_counter()
    if (inputs.mesh is None) != (inputs.camera is None):
        raise InputError("--coarse and --camera go together: give both or neither")
    if inputs.mesh_units not in COARSE_UNITS:
        raise InputError(f"--coarse-units {inputs.mesh_units!r}: choose from {', '.join(COARSE_UNITS)}")
    for what, path in inputs.files():  # regular files only (a FIFO would block), all checked before any work
        regular_file(path, what)
    photo = load_image(image, cfg.image) if image is not None else load_example()
    name = Path(image).name if image is not None else EXAMPLE_NAME
    if inputs.mesh is not None:
        prep = _prepare_user_mesh(photo, cfg, inputs)
    else:
        prep = _prepare_from_landmarks(photo, name, cfg, inputs)
    prep.seconds["prepare"] = time.perf_counter() - t0
    return prep


def _prepare_from_landmarks(photo: np.ndarray, name: str, cfg: FitConfig, inputs: CoarseInputs) -> Prepared:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    lmk = load_landmarks(inputs.landmarks) if inputs.landmarks else detect_landmarks(photo, source=name)
    seconds["landmarks"] = time.perf_counter() - t
    box = face_box_size(lmk)
    if box < cfg.image.min_face_px:
        raise InputError(f"face in {name} is too small ({box:.0f} px); need at least {cfg.image.min_face_px} px")
    size = cfg.image.resolution
    crop = square_crop_around(lmk[:, :2], cfg.image.crop_margin, size)
    image = apply_crop(photo, crop)
    lmk_crop = np.concatenate([crop.to_crop(lmk[:, :2]), lmk[:, 2:] * crop.scale], axis=1)

    t = time.perf_counter()
    if inputs.flame is not None:
        coarse = _fit_flame(lmk_crop, cfg, inputs, size)
    else:
        coarse = build_default_coarse(lmk_crop, working_camera(cfg.default_model.focal_factor, size), cfg.default_model)
    seconds["coarse_fit"] = time.perf_counter() - t

    reproj = project(coarse.camera, coarse.landmarks_3d)
    err_px = np.linalg.norm(reproj - lmk_crop[coarse.landmark_ids, :2], axis=1).mean() / crop.scale
    cam_in = crop_to_input_camera(coarse.camera, crop, photo.shape[1], photo.shape[0])
    return Prepared(photo, image, crop, cam_in, coarse, lmk, float(err_px), seconds)


def _fit_flame(lmk_crop: np.ndarray, cfg: FitConfig, inputs: CoarseInputs, size: int) -> CoarseFace:
    from fastsider.face.flame import load_flame, load_landmark_embedding
    from fastsider.face.flame_fit import fit_flame

    model = load_flame(inputs.flame)
    embedding = load_landmark_embedding(inputs.flame_embedding) if inputs.flame_embedding else None
    camera = working_camera(cfg.flame.focal_factor, size)
    # the embedded model's 3-D landmarks anchor the derived embedding when the user has none
    init = build_default_coarse(lmk_crop, camera, cfg.default_model)
    init_points = np.full((lmk_crop.shape[0], 3), np.nan)  # NaN rows (irises) are left out
    init_points[init.landmark_ids] = init.landmarks_3d
    fit = fit_flame(model, lmk_crop, camera, cfg.flame, embedding=embedding,
                    init_points=init_points, seed=cfg.seed)
    log.info("FLAME fit: landmark reprojection %.2f px (working crop)", fit.reprojection_px)
    return fit.coarse


def _prepare_user_mesh(photo: np.ndarray, cfg: FitConfig, inputs: CoarseInputs) -> Prepared:
    """The user's mesh and camera, checked before any heavy work: units, size, surface, and a
    projection that lands on the photo."""
    cam_in = Camera.load(inputs.camera)
    h, w = photo.shape[:2]
    if (cam_in.width, cam_in.height) != (w, h):
        raise InputError(f"camera {inputs.camera} is for a {cam_in.width}x{cam_in.height} image, the photo is {w}x{h}")
    mesh = load_mesh(inputs.mesh)
    verts = world_to_camera_points(cam_in, np.asarray(mesh.vertices, dtype=float)) * COARSE_UNITS[inputs.mesh_units]
    check_face_extent(verts, inputs.mesh, inputs.mesh_units)
    check_surface(mesh, inputs.mesh)
    if np.any(verts[:, 2] <= 0):
        raise InputError(f"mesh {inputs.mesh} is not entirely in front of the camera (z <= 0 after world_to_camera)")
    cam_in = Camera(cam_in.width, cam_in.height, cam_in.fx, cam_in.fy, cam_in.cx, cam_in.cy)  # now identity
    px = project(cam_in, verts)
    _check_projection(px, inputs, w, h, cfg.image.min_face_px)
    size = cfg.image.resolution
    crop = square_crop_around(px, cfg.image.crop_margin, size)
    cam_crop = cam_in.transformed(crop.scale, crop.offset_x, crop.offset_y, size, size)
    faces = orient_towards_camera(verts, np.asarray(mesh.faces))
    coarse = CoarseFace(verts, faces, cam_crop, np.zeros((0, 3)), np.zeros(0, dtype=int), "mesh")
    return Prepared(photo, apply_crop(photo, crop), crop, cam_in, coarse, None, None, {})


def _check_projection(px: np.ndarray, inputs: CoarseInputs, w: int, h: int, min_face_px: int) -> None:
    """The mesh's image (pixels [n_verts, 2]) must be a face on the photo: its box centred inside it and
    no more than MAX_FACE_TO_PHOTO times its longer side (else the camera or the units are off)."""
    box, centre = face_box_size(px), (px.min(axis=0) + px.max(axis=0)) / 2.0
    where = f"mesh {inputs.mesh} seen by camera {inputs.camera}"
    if not np.all(np.isfinite(px)) or box > MAX_FACE_TO_PHOTO * max(w, h) or not (
            0 <= centre[0] <= w and 0 <= centre[1] <= h):
        raise InputError(f"{where} is a {box:.4g} px box centred at ({centre[0]:.4g}, {centre[1]:.4g}), not on the "
                         f"{w}x{h} photo: check fx, fy, cx, cy and the mesh's units")
    if box < min_face_px:
        raise InputError(f"{where} covers too few pixels ({box:.0f}) of the photo; need at least {min_face_px}")

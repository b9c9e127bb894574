"""Writing a job's files: meshes, camera.json, landmarks, pictures (into an OutputStage)."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from fastsider.camera import Camera
from fastsider.face.landmarks import NOW_LANDMARK_IDS
from fastsider.io import OutputStage, save_image, save_json, save_mesh
from fastsider.pictures import normal_map, overlay, raycast_views
from fastsider.stages.prepare import Prepared

OVERLAY_MAX_SIDE = 1024  # overlays of large photos are drawn on a downscaled copy


def photo_view(prep: Prepared) -> tuple[np.ndarray, Camera]:
    """The input photo (downscaled if large) as float [H, W, 3] and its camera."""
    h, w = prep.photo.shape[:2]
    s = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
    photo = prep.photo.astype(np.float64) / 255.0
    if s == 1.0:
        return photo, prep.camera
    hs, ws = round(h * s), round(w * s)
    small = resize(photo, (hs, ws), anti_aliasing=True)
    return small, prep.camera.transformed(s, 0.5 * s - 0.5, 0.5 * s - 0.5, ws, hs)


def write_coarse_outputs(out: OutputStage, prep: Prepared, mesh_name: str = "coarse.ply",
                         overlay_name: str = "overlay.png") -> None:
    """coarse mesh, camera.json, landmarks, the working crop, coarse normals and overlay.png."""
    c = prep.coarse
    save_mesh(out.path(mesh_name), c.vertices, c.faces)
    save_json(out.path("camera.json"), prep.camera.to_json_dict())
    save_json(out.path("crop.json"), prep.crop.to_json_dict())
    if prep.landmarks_px is not None:
        np.save(out.path("landmarks.npy"), prep.landmarks_px)
    if len(c.landmark_ids):
        write_now_landmarks(out, "coarse_landmarks7.txt", c.landmarks_3d, c.landmark_ids)
    save_image(out.path("input_crop.png"), prep.image)
    photo, cam = photo_view(prep)
    surf, photo_surf = raycast_views(c.vertices, c.faces, [c.camera, cam])
    save_image(out.path("coarse_normals.png"), normal_map(surf.normals, surf.mask))
    save_image(out.path(overlay_name), overlay(photo, photo_surf))


def write_now_landmarks(out: OutputStage, name: str, points: np.ndarray, ids: np.ndarray) -> None:
    """NoW's seven 3-D landmarks (mm, camera frame), one 'x y z' line each, where the mesh has them."""
    lookup = {int(i): p for i, p in zip(ids, points)}
    if all(i in lookup for i in NOW_LANDMARK_IDS):
        np.savetxt(out.path(name), np.array([lookup[i] for i in NOW_LANDMARK_IDS]), fmt="%.4f")

"""The one output type of every coarse path (embedded default, FLAME fit, user mesh)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastsider.camera import Camera


@dataclass(frozen=True)
class CoarseFace:
    """A coarse face surface in the camera frame of the working crop, in mm."""

    vertices: np.ndarray       # [n_verts, 3] mm, camera frame (OpenCV axes)
    faces: np.ndarray          # [n_faces, 3] int, triangles, outward normals face the camera
    camera: Camera             # camera of the working crop (resolution x resolution)
    landmarks_3d: np.ndarray   # [n_lmk, 3] mm, mesh points matching the detected landmarks
    landmark_ids: np.ndarray   # [n_lmk] int, MediaPipe indices of those landmarks
    source: str                # "default" | "flame" | "mesh"

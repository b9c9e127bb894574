"""Face landmarks: MediaPipe face mesh (478 points, offline) or the user's own file.

Landmark array convention: ``[478, 3]`` float, MediaPipe order; x, y in pixels of the input
image, z relative depth in the same pixel units (MediaPipe's normalized z times image width),
smaller z = closer to the camera.

A user file may be ``.npy`` (array ``[478, 2|3]``) or ``.json`` (``{"landmarks": [[x, y, z], ...]}``
or a bare list). With only x, y the default coarse model is flat in depth, so give z when you can.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from fastsider.errors import InputError
from fastsider.io import silenced_fd

log = logging.getLogger(__name__)

N_LANDMARKS = 478
N_MESH_LANDMARKS = 468           # the face-mesh vertices; 468..477 are the two irises
RIGHT_IRIS_CENTRE = 468          # subject's right eye (image left)
LEFT_IRIS_CENTRE = 473
# NoW's seven landmarks in MediaPipe indices: eye corners (outer, inner) x2, subnasale (2, the
# bottom of the nose, as in NoW's annotation and crop centre), mouth corners
NOW_LANDMARK_IDS = (33, 133, 362, 263, 2, 61, 291)
MAX_FACES = 8          # faces the face mesh looks for in one photo
WINDOW_PER_FACE = 2.5  # side of the window the face mesh gets around a detected face, in face-box sides


def detect_landmarks(rgb: np.ndarray, source: str = "image") -> np.ndarray:
    """MediaPipe face mesh on an 8-bit RGB image ``[H, W, 3]`` -> landmarks ``[478, 3]``.

    Several faces: the largest is used and a log line says so. The face mesh's own detector sees the
    photo shrunk to a square of 128 px, where the faces of a wide group photo vanish: when it finds
    none, the full-range face detector looks for faces and the face mesh runs on a square around
    the largest one. No face: :class:`InputError`.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced_fd(2):  # MediaPipe's C++ side (absl, TFLite) warns on fd 2 whatever the environment says
        import mediapipe as mp  # heavy import: only when detection is needed

        faces = _face_mesh(mp, rgb, (0, 0))
        if not faces:
            for rows, cols in _face_windows(mp, rgb):
                faces += _face_mesh(mp, rgb[rows, cols], (cols.start, rows.start))
    if not faces:
        raise InputError(f"no face found in {source}")
    areas = [np.prod(a[:, :2].max(0) - a[:, :2].min(0)) for a in faces]
    if len(faces) > 1:
        log.info("found %d faces in %s; using the largest", len(faces), source)
    return faces[int(np.argmax(areas))]


def _face_mesh(mp, rgb: np.ndarray, offset: tuple[int, int]) -> list[np.ndarray]:
    """Every face MediaPipe's face mesh finds in ``rgb`` (a window of the photo at ``offset``, x, y),
    as [478, 3] landmarks in the photo's pixels."""
    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True, min_detection_confidence=0.5
    ) as face_mesh:
        result = face_mesh.process(np.ascontiguousarray(rgb))
    return [np.array([[p.x * w + offset[0], p.y * h + offset[1], p.z * w] for p in f.landmark])
            for f in result.multi_face_landmarks or []]


def _face_windows(mp, rgb: np.ndarray) -> list[tuple[slice, slice]]:
    """(rows, columns) of a square window around each face the full-range detector finds, largest first."""
    h, w = rgb.shape[:2]
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        result = detector.process(np.ascontiguousarray(rgb))
    windows = []
    for d in result.detections or []:
        b = d.location_data.relative_bounding_box
        side = max(b.width * w, b.height * h)
        cx, cy = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h
        half = side * WINDOW_PER_FACE / 2
        x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
        windows.append((side, (slice(y0, min(int(cy + half), h)), slice(x0, min(int(cx + half), w)))))
    return [win for _, win in sorted(windows, key=lambda sw: -sw[0])[:MAX_FACES]]


def load_landmarks(path: str | Path) -> np.ndarray:
    """Read a user landmark file (.npy or .json, see module doc) -> ``[478, 3]``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"landmark file not found: {p}")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".json":
            data = json.loads(p.read_text())
            arr = np.asarray(data["landmarks"] if isinstance(data, dict) else data, dtype=float)
        else:
            raise InputError(f"landmark file {p} must be .npy or .json")
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise InputError(f"cannot read landmark file {p}: {exc}") from None
    arr = np.asarray(arr, dtype=float)
    if arr.ndim != 2 or arr.shape[0] != N_LANDMARKS or arr.shape[1] not in (2, 3):
        raise InputError(f"landmark file {p}: expected [{N_LANDMARKS}, 2 or 3] MediaPipe landmarks, got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"landmark file {p} has non-finite values")
    if arr.shape[1] == 2:
        log.warning("landmark file %s has no z column: the default coarse model will be flat in depth", p)
        arr = np.concatenate([arr, np.zeros((N_LANDMARKS, 1))], axis=1)
    return arr


def face_box_size(landmarks: np.ndarray) -> float:
    """Side of the landmarks' bounding box in pixels (the larger of width and height)."""
    return float((landmarks[:, :2].max(0) - landmarks[:, :2].min(0)).max())

"""Named MediaPipe face-mesh regions, and the image mask of the non-skin features (brows, eyes, lips).

Stage 2 keeps its photometric rays off those features: their colour is albedo (hair, sclera, lip
tint), not shading, and a shading-based detail stage would carve it into the surface.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.draw import polygon

# MediaPipe face-mesh indices (subject's right = image left)
TOP, CHIN, FOREHEAD = 10, 152, 151
EYE_OUTER = {"right": 33, "left": 263}
NOSE_WING = {"right": 129, "left": 358}
MOUTH_CORNER = {"right": 61, "left": 291}
BROW_UPPER = {"right": (70, 63, 105, 66, 107), "left": (300, 293, 334, 296, 336)}
BROW_LOWER = {"right": (46, 53, 52, 65, 55), "left": (276, 283, 282, 295, 285)}
EYE_LOOP = {"right": (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
            "left": (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)}
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


def feature_polygons() -> list[tuple[int, ...]]:
    """Closed landmark loops of the non-skin features: both brows, both eyes, the lips."""
    brows = [BROW_UPPER[s] + BROW_LOWER[s][::-1] for s in ("right", "left")]
    return brows + [EYE_LOOP["right"], EYE_LOOP["left"], LIPS_OUTER]


def feature_mask(landmarks_px: np.ndarray, shape: tuple[int, int], grow_px: int) -> np.ndarray:
    """[H, W] bool, True inside the brow, eye and lip polygons of 2-D landmarks [>=468, >=2] (x, y
    pixels), grown by ``grow_px`` pixels (landmarks are a few pixels off; the border is feature too)."""
    mask = np.zeros(shape, dtype=bool)
    for loop in feature_polygons():
        pts = landmarks_px[list(loop), :2]
        rr, cc = polygon(pts[:, 1], pts[:, 0], shape)
        mask[rr, cc] = True
    return binary_dilation(mask, iterations=grow_px) if grow_px > 0 else mask

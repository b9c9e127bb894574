"""Pigment spots (freckles, moles) found by their colour, to keep them out of the photometric loss.

Shading under white light scales R, G and B alike: in log-RGB it moves along the grey axis and
leaves the chromaticity (log-RGB minus its mean over the channels) alone. Melanin absorbs blue more
than red, so a pigment spot also shifts the chromaticity towards red; a specular highlight adds
white and shifts it towards blue, the other way. A spot darker than its surroundings by pigment is
albedo that the height map, which only makes shading, would carve into the surface as a dent.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter

# the median absolute deviation times this is a Gaussian's standard deviation: 1 / Phi^-1(3/4)
MAD_TO_STD = 1.482602218505602
# chromaticity shift of a melanin spot, unit length (zero sum: no grey part): blue falls, red rises
MELANIN_CHROMA = np.array([1.0, 0.0, -1.0]) / np.sqrt(2.0)
SPOT_MM = 0.5         # smoothing of the chromaticity: the scale of a freckle's radius
BACKGROUND_MM = 3.0   # what is subtracted: the skin's own tone and its blotches


def masked_blur(values: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of ``values`` [H, W, C] over the pixels of ``mask`` [H, W] only (normalized
    convolution: the background beyond the face does not bleed in)."""
    weight = gaussian_filter(mask.astype(np.float64), sigma_px)
    blurred = np.stack([gaussian_filter(np.where(mask, values[..., k], 0.0), sigma_px)
                        for k in range(values.shape[-1])], axis=-1)
    return blurred / np.maximum(weight, 1e-6)[..., None]


def pigment_score(image: np.ndarray, mask: np.ndarray, mm_per_px: float) -> np.ndarray:
    """Melanin-like chromaticity shift of each pixel against its surroundings, in robust standard
    deviations of that shift over ``mask`` [H, W] (0 outside it). ``image`` [H, W, 3] in [0, 1]."""
    log_rgb = np.log(np.clip(np.asarray(image, dtype=np.float64), 1.0 / 255.0, None))
    chroma = log_rgb - log_rgb.mean(axis=-1, keepdims=True)
    local = masked_blur(chroma, mask, SPOT_MM / mm_per_px) - masked_blur(chroma, mask, BACKGROUND_MM / mm_per_px)
    shift = local @ MELANIN_CHROMA
    inside = shift[mask]
    if inside.size == 0:
        return np.zeros(mask.shape)
    # numpy, not scipy.stats (0.3 s of every fit's start-up to import)
    centre = np.median(inside)
    spread = MAD_TO_STD * np.median(np.abs(inside - centre))  # the standard deviation, were it Gaussian
    return np.where(mask, (shift - centre) / max(spread, 1e-9), 0.0)


def pigment_mask(image: np.ndarray, mask: np.ndarray, mm_per_px: float, threshold: float,
                 grow_mm: float = 1.0) -> np.ndarray:
    """[H, W] bool: pixels of ``mask`` whose pigment score exceeds ``threshold`` robust standard
    deviations, grown by ``grow_mm`` (a freckle's rim is pigment too, below the threshold)."""
    spots = mask & (pigment_score(image, mask, mm_per_px) > threshold)
    grow_px = int(round(grow_mm / mm_per_px))
    return (binary_dilation(spots, iterations=grow_px) & mask) if grow_px > 0 else spots

"""Pigment spots (fastsider.face.pigment) are found by their colour shift; shading (grey) and
highlights (white) are not."""

import numpy as np

from fastsider.face.pigment import pigment_mask, pigment_score

MM_PER_PX = 0.4
SIZE = 200


def _gauss(yy, xx, cy, cx, sigma_px):
    return np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma_px ** 2)


def _skin(seed: int, spot: bool, highlight: bool):
    """Skin tone with smooth blotches, a groove's grey shading dipole along x = 60, and optionally
    a brown spot at (100, 140) and a white highlight at (150, 60); noise, 8 bits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(float)
    tone = np.array([0.8, 0.6, 0.5])
    blotch = 1.0 + 0.06 * np.sin(2 * np.pi * xx / 60.0) * np.cos(2 * np.pi * yy / 90.0)
    albedo = tone * blotch[..., None]
    if spot:
        albedo = albedo * (1.0 - 0.2 * _gauss(yy, xx, 100, 140, 2.0)[..., None] * np.array([0.8, 1.0, 1.2]))
    # a groove lit from the side: one wall darker, the other brighter (grey: shading scales RGB alike)
    u = (xx - 60.0) / 3.0
    shading = 0.7 + 0.25 * u * np.exp(-0.5 * u ** 2)
    image = albedo * shading[..., None]
    if highlight:
        image = image + 0.1 * _gauss(yy, xx, 150, 60, 2.0)[..., None]
    image = image + rng.normal(0.0, 0.004, image.shape)
    return np.round(np.clip(image, 0, 1) * 255) / 255


def test_brown_spot_is_found_and_grey_shading_and_white_highlight_are_not():
    image = _skin(0, spot=True, highlight=True)
    face = np.ones((SIZE, SIZE), bool)
    score = pigment_score(image, face, MM_PER_PX)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    far = (_gauss(yy, xx, 100, 140, 2.0) < 1e-3) & (np.abs(xx - 60) > 15)
    noise = np.abs(score[far]).mean()
    assert score[100, 140] > 10.0
    # the groove's shading (grey) and the highlight (white) score like noise, the highlight below it
    assert np.abs(score[:, 55:66]).mean() < 1.5 * noise
    assert score[150, 60] < 0.0
    mask = pigment_mask(image, face, MM_PER_PX, threshold=3.0)
    assert mask[98:103, 138:143].all()
    assert mask.mean() < 0.03  # noise passes 3 robust std in a few small blobs only


def test_image_without_pigment_gives_few_masked_pixels_and_none_outside_the_face():
    image = _skin(1, spot=False, highlight=True)
    face = np.zeros((SIZE, SIZE), bool)
    face[20:180, 20:180] = True
    mask = pigment_mask(image, face, MM_PER_PX, threshold=3.0)
    assert mask.sum() < 0.03 * face.sum()
    assert pigment_mask(image, face, MM_PER_PX, threshold=5.0).sum() == 0
    assert not (mask & ~face).any()
    assert not pigment_mask(image, np.zeros_like(face), MM_PER_PX, 3.0).any()

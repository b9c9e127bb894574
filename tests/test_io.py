"""Reading photos (fastsider.io.load_image): every mode each format can store becomes RGB8, and the
EXIF orientation is applied."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastsider.io import load_image

# every mode each format can store (JPEG/BMP hold no 16-bit, WebP no palette/16-bit)
MODES_BY_FORMAT = [(m, ".png") for m in ("L", "RGBA", "P", "I;16", "RGB")] + [
    (m, ".jpg") for m in ("L", "RGB")] + [(m, ".bmp") for m in ("L", "P", "RGB")] + [
    (m, ".webp") for m in ("RGB", "RGBA")]


@pytest.mark.parametrize("mode,ext", MODES_BY_FORMAT)
def test_image_modes_become_rgb8(tmp_path, example_rgb, mode, ext):
    img = Image.fromarray(example_rgb)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 257))
    else:
        img = img.convert(mode)
    p = tmp_path / f"x{ext}"
    img.save(p)
    rgb = load_image(p)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    grey_ref = np.asarray(Image.fromarray(example_rgb).convert("L"), dtype=float)
    # every mode keeps the picture: its grey version stays close to the original's (JPEG/palette loss)
    assert np.abs(rgb.astype(float).mean(axis=2) - grey_ref).mean() < 12.0


def test_exif_orientation_applied(tmp_path, example_rgb):
    img = Image.fromarray(example_rgb[:, :300])  # 512 high, 300 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes())
    assert load_image(p).shape == (300, 512, 3)

"""viewer.html: self-contained (nothing fetched: no script or link to another address, the meshes and
the photo inside), and in headless Chromium (Debian's ``chromium`` package; skipped where it is not
installed) a screenshot that shows the mesh: not blank, not all one colour."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from fastsider.io import png_bytes
from fastsider.export.viewer import viewer_html

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def bumpy_ball() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball 600 mm in front of the camera, and the same ball with bumps (one triangle list)."""
    ball = trimesh.creation.icosphere(subdivisions=4, radius=60.0)
    v = np.asarray(ball.vertices)
    bumps = v * (1.0 + 0.05 * np.sin(v[:, 0] / 6.0) * np.sin(v[:, 1] / 6.0))[:, None]
    shift = np.array([0.0, 0.0, 600.0])
    return bumps + shift, v + shift, np.asarray(ball.faces)


def page() -> str:
    detailed, coarse, faces = bumpy_ball()
    photo = png_bytes(np.linspace(0.0, 1.0, 32 * 32 * 3).reshape(32, 32, 3))
    return viewer_html(detailed, coarse, faces, photo, "test ball", size=(400, 400))


def test_the_page_carries_its_meshes_and_fetches_nothing():
    text = page()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)  # no script, style or image from elsewhere
    assert "fetch(" not in text and "XMLHttpRequest" not in text and "import " not in text
    data = json.loads(re.search(r'<script id="mesh" type="application/json">(.*?)</script>', text, re.DOTALL).group(1))
    detailed, coarse, faces = bumpy_ball()
    got = np.frombuffer(base64.b64decode(data["detailed"]), dtype="<f4").reshape(-1, 3)
    np.testing.assert_allclose(got, detailed, atol=1e-3)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(data["faces"]), dtype="<u4").reshape(-1, 3), faces)
    assert len(np.frombuffer(base64.b64decode(data["coarse"]), dtype="<f4")) == coarse.size


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_headless_chromium_draws_the_mesh(tmp_path):
    """The page in headless Chromium (WebGL by SwiftShader, no GPU): the canvas shows a lit ball."""
    (tmp_path / "viewer.html").write_text(page())
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", "--hide-scrollbars", "--window-size=900,500",
           "--virtual-time-budget=10000", f"--screenshot={shot}", (tmp_path / "viewer.html").as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = iio.imread(shot)[..., :3].astype(float)
    canvas = img[12:412, 12:412]  # the 400 px canvas, 12 px from the page's corner
    grey = canvas.mean(axis=2)
    background = grey < 20.0
    assert 0.2 < (~background).mean() < 0.9, (~background).mean()  # a ball, not blank, not all covered
    lit = grey[~background]
    assert lit.std() > 10.0 and len(np.unique(np.round(lit))) > 30  # shaded, not one colour

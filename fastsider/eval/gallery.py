"""The real-photo gallery: a few licence-clear portraits fitted with the current preset, one picture
a person judges at a glance (``fastsider gallery``).

Per photo, one row: the working crop | the coarse surface's normals | the detailed normals | the
detailed mesh in grey, lit from the side (wrinkles and folds show as shading, carved-in artefacts
too). There is no ground truth: this is where the detail stage is judged off its own world.

Each photo is recorded with the package it comes from, its path there and its licence. Photos in
the public domain are shipped in ``eval/data/gallery``; the others are read from the installed
package at run time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastsider.camera import Camera
from fastsider.config import FitConfig, to_dict
from fastsider.io import OutputStage, load_mesh, save_json

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data" / "gallery"
SIDE_LIGHT = np.array([-0.7, -0.3, -0.65]) / np.linalg.norm([-0.7, -0.3, -0.65])  # raking, from the upper left
AMBIENT = 0.2


@dataclass(frozen=True)
class GalleryPhoto:
    name: str
    source: str    # the package and the path in it
    licence: str
    what: str      # what the photo tests
    path: Callable[[], Path | None]  # None: the embedded example


def _matplotlib_sample(name: str) -> Callable[[], Path]:
    def find() -> Path:
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    return find


PHOTOS = (
    GalleryPhoto("astronaut", "scikit-image: skimage/data/astronaut.png (the embedded example)",
                 "public domain (NASA portrait of Eileen Collins)", "smooth young skin, soft front light",
                 lambda: None),
    GalleryPhoto("grace_hopper", "matplotlib: mpl-data/sample_data/grace_hopper.jpg",
                 "public domain (US Navy photo)", "an older face: forehead lines, nasolabial folds; a uniform",
                 _matplotlib_sample("grace_hopper.jpg")),
    GalleryPhoto("biden", "face_recognition 1.3.0 sdist: tests/test_images/biden.jpg (upper part, shipped)",
                 "public domain (official White House photo, a US federal government work)",
                 "an older face: deep forehead lines, crow's feet; window light from the side",
                 lambda: DATA / "biden.jpg"),
    GalleryPhoto("obama", "face_recognition 1.3.0 sdist: tests/test_images/obama.jpg (upper part, shipped)",
                 "public domain (official White House portrait, a US federal government work)",
                 "darker skin, a broad smile: nasolabial folds, crow's feet", lambda: DATA / "obama.jpg"),
)


def relit(mesh_path: Path, cam: Camera) -> np.ndarray:
    """The mesh in grey [H, W, 3] seen by ``cam``, lit from the side (white background)."""
    from fastsider.pictures import raycast_mesh

    mesh = load_mesh(mesh_path)
    surf = raycast_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), cam)
    grey = AMBIENT + (1.0 - AMBIENT) * np.clip(surf.normals @ SIDE_LIGHT, 0.0, 1.0)
    return np.where(surf.mask[..., None], grey[..., None].repeat(3, -1), 1.0)


def crop_camera(fit_dir: Path) -> Camera:
    crop = json.loads((fit_dir / "crop.json").read_text())
    return Camera.load(fit_dir / "camera.json").transformed(crop["scale"], crop["offset_x"], crop["offset_y"],
                                                            crop["size"], crop["size"])


def gallery_row(fit_dir: Path) -> list[tuple[str, np.ndarray]]:
    import imageio.v3 as iio

    return [("input crop", iio.imread(fit_dir / "input_crop.png")),
            ("coarse normals", iio.imread(fit_dir / "coarse_normals.png")),
            ("detailed normals", iio.imread(fit_dir / "normals.png")),
            ("detailed mesh, side light", relit(fit_dir / "mesh.ply", crop_camera(fit_dir)))]


def run_gallery(out_dir: Path, cfg: FitConfig, names: tuple[str, ...] | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Fit each gallery photo into ``out_dir/fits/<name>`` and write ``out_dir/gallery.png`` and
    ``gallery.json`` (sources, licences, times). Returns the picture's path."""
    from fastsider.report import image_grid
    from fastsider.stages.fit import run_fit
    from fastsider.stages.prepare import CoarseInputs

    photos = [p for p in PHOTOS if names is None or p.name in names]
    rows, records = [], []
    for i, photo in enumerate(photos):
        if progress is not None:
            progress(photo.name, i, len(photos))
        fit_dir = out_dir / "fits" / photo.name
        summary = run_fit(photo.path(), cfg, CoarseInputs(), fit_dir)
        rows.append((photo.name, gallery_row(fit_dir)))
        records.append({"name": photo.name, "source": photo.source, "licence": photo.licence, "what": photo.what,
                        "seconds": summary["seconds"], "psnr": summary["stage2"].get("psnr"),
                        "light": summary.get("light")})
        log.info("gallery %s: %.0f s, stage-2 PSNR %.1f dB", photo.name, summary["seconds"]["total"],
                 summary["stage2"].get("psnr", float("nan")))
    with OutputStage(out_dir) as out:
        image_grid(rows, out.path("gallery.png"))
        save_json(out.path("gallery.json"), {"photos": records, "config": to_dict(cfg)})
        out.commit()
    return out_dir / "gallery.png"


def redraw_gallery(out_dir: Path) -> Path:
    """gallery.png again from the fits already in ``out_dir`` (after a change to the picture only)."""
    from fastsider.report import image_grid

    records = json.loads((out_dir / "gallery.json").read_text())["photos"]
    with OutputStage(out_dir) as out:
        image_grid([(r["name"], gallery_row(out_dir / "fits" / r["name"])) for r in records], out.path("gallery.png"))
        out.commit()
    return out_dir / "gallery.png"

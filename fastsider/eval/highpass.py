"""Detail metrics that a coarse offset does not swamp: high-passed detail, seen from the camera.

Scan-to-mesh errors of a fit whose coarse input is off by 1-3 mm at large scale are the coarse
error, whatever the detail stage did. Here the detail the fit added to its coarse input (depth map
minus the coarse input's) and the true detail (the GT's depth minus the GT base's) each lose their
Gaussian low-pass (``HIGHPASS_SIGMA_MM``), which keeps 1-6 mm wrinkles and drops a smooth offset;
per detail region the found detail is scored against the true one by correlation and depth
recovered, and outside the details by its RMS (noise the detail stage added).

Two things a depth difference is not, and which are left out: at an occluding contour (the nose's
wings, the lips, the eyelids) two surfaces a millimetre apart differ by centimetres of depth, and
on a slope a displacement d along the normal moves the depth by d / cos(view angle). Pixels at a
depth jump or a grazing slope of any of the surfaces are dropped (before the low-pass, so they do
not bleed into their neighbours), and each difference is scaled by its reference surface's view
cosine: a displacement along the normal, in mm. With depth differences alone, the GT itself scored
0.31 mm of "noise" against a coarse input 2.5 mm off (Cycles tuning seed 10), nearly all of it
along the nose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, grey_dilation

from fastsider.camera import Camera, project
from fastsider.eval.metrics import detail_agreement, finite_or_none, highpass
from fastsider.pictures import SurfaceImage, ray_directions, raycast_mesh

HIGHPASS_SIGMA_MM = 2.5    # the low-pass each surface loses (FWHM ~6 mm): keeps 1-6 mm wrinkles,
                           # drops ~93% of a 40 mm wave (exp(-2 pi^2 sigma^2 / lambda^2) of it stays in the low-pass)
EROSION_PX = 6             # pixels this far inside the silhouettes of all meshes are scored
NOISE_MARGIN_PX = 4        # detail regions grown by this before the rest of the face counts as "outside"
MAX_SLOPE = 4.0            # depth change per lateral mm beyond which a pixel is a jump or grazing (~76 deg)
JUMP_MARGIN_PX = 2         # jumps grown by this before they are dropped


def label_image(vertices: np.ndarray, labels: np.ndarray, cam: Camera) -> np.ndarray:
    """[H, W] uint8: the largest detail label of the (dense) GT vertices seen in each pixel, 0 elsewhere."""
    uv = np.round(project(cam, vertices)).astype(int)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height) & (labels > 0)
    image = np.zeros((cam.height, cam.width), dtype=np.uint8)
    np.maximum.at(image, (uv[ok, 1], uv[ok, 0]), labels[ok].astype(np.uint8))
    return grey_dilation(image, size=3)  # the GT is ~0.4 mm a vertex, a pixel ~0.4 mm: fill the gaps


def view_cosine(surface: SurfaceImage, cam: Camera) -> np.ndarray:
    """[H, W] |cos| of the angle between each pixel's ray and the surface normal it hits (0: no surface)."""
    return np.abs((surface.normals * ray_directions(cam).reshape(cam.height, cam.width, 3)).sum(-1))


def depth_jumps(surface: SurfaceImage, mm_per_px: float) -> np.ndarray:
    """[H, W] bool: pixels whose depth changes faster than ``MAX_SLOPE`` mm per lateral mm to a
    neighbour (an occluding contour, a grazing slope) or that border a pixel without surface."""
    depth = np.where(surface.mask, surface.depth, np.nan)
    d_rows, d_cols = np.gradient(depth)
    return ~(np.hypot(d_rows, d_cols) < MAX_SLOPE * mm_per_px)  # NaN (no neighbour) counts as a jump


def highpass_detail(gt: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray], labels: np.ndarray,
                    meshes: dict[str, tuple[np.ndarray, np.ndarray]], cam: Camera, regions: dict[str, int],
                    reference: str = "coarse") -> dict[str, dict[str, Any]]:
    """Per mesh name: per region and for all detail regions together ("wrinkles") the correlation and
    depth recovered of the detail it adds to ``reference`` against the true detail; ``noise_rms_mm``
    of that added detail outside the details.

    The true detail is the GT's depth minus the base's (the GT before details), the found one a
    mesh's depth minus the reference's (the coarse input the fit started from), each high-passed:
    a reference that is off at large scale, or a face whose own shape has fine curvature (the nose,
    the eyes), cancels.

    Args:
        gt, base: (vertices [n, 3], faces [m, 3]) in the camera frame, mm; labels [n] the GT's region codes.
        meshes: name -> (vertices, faces); must hold ``reference``.
        regions: region name -> code (0 is no detail).
    """
    surf = {name: raycast_mesh(v, f, cam) for name, (v, f) in {"gt": gt, "base": base, **meshes}.items()}
    mask = binary_erosion(np.logical_and.reduce([s.mask for s in surf.values()]), iterations=EROSION_PX)
    mm_per_px = float(np.median(surf["gt"].depth[mask])) / cam.fx if mask.any() else 1.0
    jumps = np.logical_or.reduce([depth_jumps(s, mm_per_px) for s in surf.values()])
    mask &= ~binary_dilation(jumps, iterations=JUMP_MARGIN_PX)
    sigma_px = HIGHPASS_SIGMA_MM / mm_per_px
    # depth grows away from the camera: a groove is a positive depth change, as a negative displacement

    cosine = {ref: view_cosine(surf[ref], cam) for ref in ("base", reference)}  # one per reference, not per mesh

    def displacement(name: str, ref: str) -> np.ndarray:
        return highpass((surf[name].depth - surf[ref].depth) * cosine[ref], mask, sigma_px)

    true = displacement("gt", "base")
    lab = label_image(gt[0], labels, cam)
    detail = (lab > 0) & mask
    outside = mask & ~binary_dilation(lab > 0, iterations=NOISE_MARGIN_PX)
    out: dict[str, dict[str, Any]] = {}
    for name in meshes:
        found = displacement(name, reference)
        scores = {"wrinkles": detail_agreement(true[detail], found[detail])}
        for region, code in regions.items():
            if code and np.any(lab[mask] == code):
                sel = mask & (lab == code)
                scores[region] = detail_agreement(true[sel], found[sel])
        out[name] = {k: {"correlation": finite_or_none(a.correlation), "depth_recovered": finite_or_none(a.depth_recovered),
                         "pixels": a.count} for k, a in scores.items()}
        out[name]["noise_rms_mm"] = finite_or_none(float(np.sqrt(np.mean(found[outside] ** 2)))
                                                   if outside.any() else float("nan"))
    out["gt"] = {"true_rms_mm": finite_or_none(float(np.sqrt(np.mean(true[detail] ** 2))) if detail.any() else float("nan"))}
    return out

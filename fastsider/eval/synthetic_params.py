"""The knobs of the synthetic ground-truth generator (``fastsider bench``).

:class:`SyntheticParams` (with one :class:`DetailSpec` per detail region) holds every setting a
case is built from: photo size and framing, per-seed head variation, mesh resolutions, the detail
regions' counts, depths and widths, light, skin and noise. Every step of the generator reads it:
the base (``eval.synthetic_base``), the details (``eval.synthetic_details``), the photo
(``eval.synthetic_photo``) and the case assembly (``eval.synthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetailSpec:
    count: tuple[int, int]          # details per region (per side for crow's feet, nasolabial), inclusive;
                                    # forehead lines that do not fit the forehead at their widths are dropped
    depth_mm: tuple[float, float]   # peak |displacement|, uniform in the range
    width_mm: tuple[float, float]   # full width at half maximum of the cross-section


@dataclass(frozen=True)
class SyntheticParams:
    image_size: int = 512            # square photo, pixels
    focal_factor: float = 4.0        # focal length = focal_factor * image_size (px), as the working camera
    frame_margin: float = 0.2        # landmark box grown by this share per side: face box ~ size / 1.4
    scale_jitter: float = 0.04       # per-seed scale of the head's width, height, depth: 1 +- this
    rotation_deg: float = 5.0        # per-seed yaw, pitch, roll: +- this
    loop_levels: int = 3             # Loop subdivisions of the base before detailing (~0.5 mm edges)
    max_edge_mm: float = 0.4         # near details, edges are split until shorter than this
    coarse_loop_levels: int = 2      # the coarse mesh is the base at this level (~1 mm edges)
    coarse_error_mm: float = 0.0     # peak smooth fitting error added to the coarse mesh
    coarse_error_wavelength_mm: tuple[float, float] = (40.0, 120.0)
    forehead: DetailSpec = DetailSpec((2, 4), (0.2, 0.6), (1.5, 3.5))
    crows_feet: DetailSpec = DetailSpec((3, 5), (0.1, 0.4), (1.0, 2.5))
    nasolabial: DetailSpec = DetailSpec((1, 1), (0.5, 1.0), (3.0, 6.0))
    bumps: DetailSpec = DetailSpec((3, 6), (0.2, 0.8), (1.5, 4.0))
    supersample: int = 2             # jittered rays per pixel: supersample^2
    light_polar_deg: tuple[float, float] = (25.0, 50.0)  # light angle from the camera axis
    light_azimuth_deg: float = 45.0  # light azimuth within +- this of straight above (lights the
                                     # horizontal forehead lines; ~5 grey levels at least for 0.3 mm)
    ambient: float = 0.3             # share of light that is ambient
    specular: float = 0.05           # Blinn-Phong strength (white)
    shininess: float = 30.0
    blotch_amplitude: float = 0.06   # relative albedo variation of smooth blotches
    blotch_wavelength_mm: tuple[float, float] = (15.0, 50.0)
    freckles: tuple[int, int] = (20, 60)
    freckle_radius_mm: tuple[float, float] = (0.4, 1.2)
    noise_std: float = 0.004         # Gaussian pixel noise, in [0, 1] units (the simple renderer)
    # "simple": the optimiser's own shading model, ray-cast (eval/synthetic_photo.py). "cycles": a path
    # tracer (eval/cycles.py: subsurface skin, area + environment light, shadows, sRGB, noise, JPEG)
    renderer: str = "simple"
    cycles_samples: int = 64         # path-tracing samples per pixel (denoised from 16 up)


# The physically based bench: Cycles photos and a coarse input off by a smooth 0.5-3 mm, as a
# landmark fit is (peak 2.5 mm over 40-120 mm wavelengths)
CYCLES_PARAMS = SyntheticParams(renderer="cycles", coarse_error_mm=2.5)

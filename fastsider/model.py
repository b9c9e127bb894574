"""The one place the model is built: ``build_model(cfg, ...)`` picks and makes every part the
config chooses, and nothing it does not choose.

- geometry: the coarse SDF on a lattice (model.sdf = "lattice") and/or the geometry MLP
  (model.sdf or model.detail = "mlp"; a residual starting at 0 on a lattice), minus a height
  map over the working crop (model.detail = "height_map");
- appearance: the rendering MLP (model.shading = "mlp"), or a light (SH2 or one directional)
  times an albedo from a B-spline map over the crop (model.albedo = "map") or from the MLP.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from fastsider.camera import Camera, Normalization
from fastsider.config import ModelConfig
from fastsider.nn.fields import Appearance, Geometry, GeometryMLP, RenderingMLP, SiderModel
from fastsider.nn.maps import AlbedoMap, HeightMap
from fastsider.nn.mlp import resolve_backend
from fastsider.nn.shading import DirectionalShading, SphericalHarmonicsShading
from fastsider.sdf.lattice import build_sdf_lattice

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, device: torch.device, coarse_sdf: Callable[[np.ndarray], np.ndarray] | None = None,
                camera: Camera | None = None, norm: Normalization | None = None,
                face_colors: torch.Tensor | None = None) -> SiderModel:
    """The model ``cfg`` describes, on ``device``.

    Args:
        coarse_sdf: SDF_GT, points [n, 3] -> [n] in unit-box units (sdf/shell.py); for the lattice.
        camera, norm: the working crop's camera and the unit box; for the maps over the crop.
        face_colors: [n, 3] the face pixels' colours; the albedo map starts at their mean.
    """
    networks = ((cfg.geometry_mlp.network,) if cfg.has_geometry_mlp else ()) + \
        ((cfg.rendering_mlp.network,) if cfg.has_rendering_mlp else ())
    backend = resolve_backend(cfg.backend, device, networks) if networks else "none"
    geometry = build_geometry(cfg, backend, device, coarse_sdf, camera, norm)
    appearance = build_appearance(cfg, backend, geometry.feature_dim, camera, norm, face_colors)
    normal_mode = "finite_difference" if backend == "tcnn" else cfg.normals
    log.info("model: sdf %s, detail %s, shading %s (MLPs: %s), normals by %s", cfg.sdf, cfg.detail, cfg.shading,
             backend, normal_mode)
    return SiderModel(geometry, appearance, backend, normal_mode, cfg.fd_eps).to(device)


def build_geometry(cfg: ModelConfig, backend: str, device: torch.device,
                   coarse_sdf: Callable[[np.ndarray], np.ndarray] | None = None,
                   camera: Camera | None = None, norm: Normalization | None = None) -> Geometry:
    base = None
    if cfg.sdf == "lattice":
        if coarse_sdf is None:
            raise ValueError("model.sdf = 'lattice' needs the coarse SDF to sample")
        base = build_sdf_lattice(coarse_sdf, cfg.lattice.resolution, device)
    mlp = GeometryMLP(cfg.geometry_mlp, backend) if cfg.has_geometry_mlp else None
    gain = mlp.start_as_residual() if base is not None and mlp is not None else None  # f == base at the start
    height = None
    if cfg.detail == "height_map":
        if camera is None or norm is None:
            raise ValueError("model.detail = 'height_map' needs the working crop's camera and the unit box")
        height = HeightMap(camera, norm, cfg.height_map.resolution or camera.width, cfg.height_map.levels)
    return Geometry(base, mlp, height, gain)


def build_appearance(cfg: ModelConfig, backend: str, feature_dim: int, camera: Camera | None = None,
                     norm: Normalization | None = None, face_colors: torch.Tensor | None = None) -> Appearance:
    if cfg.shading == "mlp":
        return Appearance(RenderingMLP(cfg.rendering_mlp, feature_dim, backend, albedo_only=False))
    light = (SphericalHarmonicsShading() if cfg.shading == "albedo_sh"
             else DirectionalShading(cfg.light.shininess, cfg.light.specular))
    if cfg.albedo == "mlp":
        return Appearance(RenderingMLP(cfg.rendering_mlp, feature_dim, backend, albedo_only=True), light)
    if camera is None or norm is None or face_colors is None:
        raise ValueError("model.albedo = 'map' needs the working crop's camera, the unit box and the face colours")
    return Appearance(None, light, AlbedoMap(camera, norm, cfg.albedo_map.resolution, face_colors.mean(0).cpu()))

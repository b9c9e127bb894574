"""The one camera convention of fastsider.

OpenCV pinhole: x right, y down, z forward; integer pixel coordinates (u, v) are the centre of
column u, row v. World = camera frame after
``world_to_camera`` (identity for fitted cameras). Units: mm in 3-D, pixels in 2-D.

camera.json (written beside every output, read by ``--camera``)::

    {"width": 512, "height": 512, "fx": 2048.0, "fy": 2048.0, "cx": 256.0, "cy": 256.0,
     "world_to_camera": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}   # optional
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastsider.errors import FastsiderError


class CameraError(FastsiderError, ValueError):
    """A camera.json that is not a valid pinhole camera."""


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: np.ndarray = field(default_factory=lambda: np.eye(4))  # [4, 4]

    @property
    def K(self) -> np.ndarray:  # [3, 3]
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def transformed(self, scale: float, offset_x: float, offset_y: float, width: int, height: int) -> "Camera":
        """Camera of the image whose pixels are ``scale * (u, v) + offset`` of this one's (crop, resize)."""
        return Camera(
            width=width, height=height,
            fx=self.fx * scale, fy=self.fy * scale,
            cx=self.cx * scale + offset_x, cy=self.cy * scale + offset_y,
            world_to_camera=self.world_to_camera,
        )

    def to_json_dict(self) -> dict:
        return {
            "width": int(self.width), "height": int(self.height),
            "fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy),
            "world_to_camera": np.asarray(self.world_to_camera, dtype=float).tolist(),
        }

    @staticmethod
    def from_json_dict(d: dict) -> "Camera":
        try:
            w2c = np.asarray(d.get("world_to_camera", np.eye(4)), dtype=float)
            cam = Camera(
                width=int(d["width"]), height=int(d["height"]),
                fx=float(d["fx"]), fy=float(d["fy"]), cx=float(d["cx"]), cy=float(d["cy"]),
                world_to_camera=w2c,
            )
        except KeyError as exc:
            raise CameraError(f"camera.json lacks the key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CameraError(f"camera.json has a malformed value ({exc})") from None
        if w2c.shape != (4, 4) or not np.all(np.isfinite(w2c)):
            raise CameraError(f"camera.json world_to_camera must be a finite 4x4 matrix, got shape {w2c.shape}")
        for key in ("fx", "fy", "cx", "cy"):
            if not math.isfinite(getattr(cam, key)):
                raise CameraError(f"camera.json {key} must be a finite number, got {getattr(cam, key)}")
        if cam.width <= 0 or cam.height <= 0 or cam.fx <= 0 or cam.fy <= 0:
            raise CameraError("camera.json needs positive width, height, fx and fy")
        return cam

    @staticmethod
    def load(path: str | Path) -> "Camera":
        p = Path(path)
        if not p.is_file():  # a folder, or a pipe that would block the read
            raise CameraError(f"camera file not found or not a regular file: {p}")
        try:
            d = json.loads(p.read_text())
        except OSError as exc:
            raise CameraError(f"cannot read camera file {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CameraError(f"camera file {path} is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise CameraError(f"camera file {path} must hold a JSON object")
        return Camera.from_json_dict(d)


def world_to_camera_points(cam: Camera, pts: np.ndarray) -> np.ndarray:
    """Apply the camera's rigid transform. pts: [n_pts, 3] -> [n_pts, 3]."""
    R, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
    return pts @ R.T + t


def project(cam: Camera, pts_cam: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points.

    u = fx * x / z + cx,  v = fy * y / z + cy.

    Args:
        pts_cam: [n_pts, 3] points in the camera frame (z > 0 in front).
    Returns:
        [n_pts, 2] pixel coordinates.
    """
    if pts_cam.ndim != 2 or pts_cam.shape[1] != 3:
        raise ValueError(f"project expects [n_pts, 3], got {pts_cam.shape}")
    z = pts_cam[:, 2]
    return np.stack([cam.fx * pts_cam[:, 0] / z + cam.cx, cam.fy * pts_cam[:, 1] / z + cam.cy], axis=1)


def unproject(cam: Camera, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Inverse of :func:`project`: pixels [n_pts, 2] at z-depth [n_pts] -> camera points [n_pts, 3]."""
    x = (pixels[:, 0] - cam.cx) / cam.fx * depth
    y = (pixels[:, 1] - cam.cy) / cam.fy * depth
    return np.stack([x, y, depth], axis=1)


def pixel_grid(cam: Camera) -> np.ndarray:
    """Centres of all pixels, row-major: [H * W, 2] as (u, v)."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    return np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)


def pixel_rays(cam: Camera, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame rays through pixel centres.

    Args:
        pixels: [n_rays, 2] (u, v) pixel coordinates.
    Returns:
        origins [n_rays, 3] (all zero: the camera centre), unit directions [n_rays, 3].
    Differentiable w.r.t.: nothing (a camera is fixed).
    """
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        raise ValueError(f"pixel_rays expects [n_rays, 2], got {tuple(pixels.shape)}")
    d = torch.stack(
        [(pixels[:, 0] - cam.cx) / cam.fx, (pixels[:, 1] - cam.cy) / cam.fy, torch.ones_like(pixels[:, 0])],
        dim=1,
    )
    d = d / d.norm(dim=1, keepdim=True)
    return torch.zeros_like(d), d


@dataclass(frozen=True)
class Normalization:
    """mm camera frame <-> the networks' box [-1, 1]^3: x_n = (x_mm - centre) / half_size."""

    centre: np.ndarray  # [3] mm
    half_size: float    # mm

    @staticmethod
    def around(vertices: np.ndarray, margin: float) -> "Normalization":
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        return Normalization(centre=np.asarray((lo + hi) / 2.0, dtype=float), half_size=float((hi - lo).max() / 2.0 * (1.0 + margin)))

    def to_unit(self, x_mm: np.ndarray) -> np.ndarray:
        return (x_mm - self.centre) / self.half_size

    def to_mm(self, x_unit: np.ndarray) -> np.ndarray:
        return x_unit * self.half_size + self.centre

    def rays_to_unit(self, origins_mm: Tensor, dirs: Tensor) -> Tensor:
        """Ray origins [n_rays, 3] mm -> unit box (directions are unchanged by a uniform scale)."""
        c = torch.as_tensor(self.centre, dtype=origins_mm.dtype, device=origins_mm.device)
        return (origins_mm - c) / self.half_size

    def to_json_dict(self) -> dict:
        return {"centre_mm": self.centre.tolist(), "half_size_mm": self.half_size}

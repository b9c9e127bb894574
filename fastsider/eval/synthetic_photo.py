"""The photo of a synthetic case (step 5 of ``eval.synthetic``): skin albedo, light and rendering.

:func:`skin_albedo` paints per-vertex skin (tone, blotches, freckles, brows, lips, eyes) independent
of the details, :func:`light_direction` and :func:`background_colours` draw the scene, and
:func:`render_photo` ray-casts the ground-truth mesh with supersampling, Lambertian + ambient + weak
Blinn-Phong shading and pixel noise.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import points_in_poly

from fastsider.camera import Camera, pixel_grid
from fastsider.eval.synthetic_base import head_frame
from fastsider.eval.synthetic_params import SyntheticParams
from fastsider.face.regions import BROW_LOWER, BROW_UPPER, EYE_LOOP, LIPS_INNER, LIPS_OUTER

IRIS_RADIUS_MM, PUPIL_RADIUS_MM = 5.5, 2.0


# --------------------------------------------------------------------------------------------
# appearance


LIGHT_SKIN, DARK_SKIN = np.array([0.87, 0.68, 0.58]), np.array([0.42, 0.28, 0.21])
BROW_COLOUR, BROW_OPACITY = np.array([0.16, 0.11, 0.08]), 0.7
LIP_TINT = np.array([0.9, 0.6, 0.62])              # multiplies the skin
MOUTH_COLOUR, SCLERA_COLOUR = np.array([0.25, 0.09, 0.09]), np.array([0.82, 0.80, 0.76])
IRIS_COLOURS = np.array([[0.28, 0.17, 0.10], [0.20, 0.28, 0.38], [0.25, 0.30, 0.18]])
PUPIL_COLOUR = np.array([0.04, 0.03, 0.03])
FRECKLE_TINT = np.array([0.8, 1.0, 1.2])           # darkening per channel: brownish spots
N_BLOTCH_WAVES = 16


def waves(points: np.ndarray, rng: np.random.Generator, wavelength_mm: tuple[float, float], n: int) -> np.ndarray:
    """Smooth random field [n_pts] of ~unit spread: n plane waves in random 3-D directions."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.cos(points @ (dirs * k[:, None]).T + phase).sum(axis=1) / np.sqrt(n / 2.0)


def _freckles(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, params: SyntheticParams) -> np.ndarray:
    """Multiplicative albedo [n_verts, 3] of small dark spots at area-uniform random places."""
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    n = int(rng.integers(params.freckles[0], params.freckles[1] + 1))
    which = rng.choice(len(faces), size=n, p=area / area.sum())
    w = rng.dirichlet(np.ones(3), size=n)
    centres = np.einsum("ij,ijk->ik", w, tri[which])
    radius = rng.uniform(*params.freckle_radius_mm, n)
    strength = rng.uniform(0.1, 0.25, n)
    out = np.ones((len(vertices), 3))
    tree = cKDTree(vertices)
    for c, r, s in zip(centres, radius, strength):
        idx = np.asarray(tree.query_ball_point(c, 3.0 * r), dtype=int)
        g = np.exp(-0.5 * (np.linalg.norm(vertices[idx] - c, axis=1) / r) ** 2)
        out[idx] *= 1.0 - s * g[:, None] * FRECKLE_TINT
    return out


def _paint_features(albedo: np.ndarray, vertices: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> None:
    """Brows, lips, mouth and eyes, as polygons in the head's frontal plane (in place)."""
    axes = head_frame(landmarks)
    q = (vertices - landmarks.mean(axis=0)) @ axes[:2].T
    lq = (landmarks - landmarks.mean(axis=0)) @ axes[:2].T

    def inside(ids) -> np.ndarray:
        return points_in_poly(q, lq[list(ids)])

    for side in ("right", "left"):
        brow = inside(BROW_UPPER[side] + BROW_LOWER[side][::-1])
        albedo[brow] = (1 - BROW_OPACITY) * albedo[brow] + BROW_OPACITY * BROW_COLOUR
    lips = inside(LIPS_OUTER)
    albedo[lips] *= LIP_TINT
    albedo[inside(LIPS_INNER)] = MOUTH_COLOUR
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    for side in ("right", "left"):
        eye = inside(EYE_LOOP[side])
        r = np.linalg.norm(q - lq[list(EYE_LOOP[side])].mean(axis=0), axis=1)
        albedo[eye] = SCLERA_COLOUR
        albedo[eye & (r < IRIS_RADIUS_MM)] = iris
        albedo[eye & (r < PUPIL_RADIUS_MM)] = PUPIL_COLOUR


def skin_albedo(vertices: np.ndarray, faces: np.ndarray, landmarks: np.ndarray, params: SyntheticParams,
                rng: np.random.Generator) -> np.ndarray:
    """Per-vertex albedo [n_verts, 3] in [0, 1]: tone, blotches, freckles, brows, lips, eyes.

    Drawn independently of the details (no correlation with the wrinkles).
    """
    tone = LIGHT_SKIN + rng.uniform() * (DARK_SKIN - LIGHT_SKIN)
    bright = waves(vertices, rng, params.blotch_wavelength_mm, N_BLOTCH_WAVES)
    red = waves(vertices, rng, params.blotch_wavelength_mm, N_BLOTCH_WAVES)
    albedo = tone * (1.0 + params.blotch_amplitude * bright)[:, None]
    albedo[:, 0] *= 1.0 + 0.5 * params.blotch_amplitude * red
    albedo *= _freckles(vertices, faces, rng, params)
    _paint_features(albedo, vertices, landmarks, rng)
    return np.clip(albedo, 0.0, 1.0)


def light_direction(rng: np.random.Generator, params: SyntheticParams) -> np.ndarray:
    """Unit vector towards the light [3], camera frame: polar angle from the camera axis, azimuth from 'up'."""
    polar = np.radians(rng.uniform(*params.light_polar_deg))
    azimuth = np.radians(rng.uniform(-params.light_azimuth_deg, params.light_azimuth_deg))
    return np.array([np.sin(polar) * np.sin(azimuth), -np.sin(polar) * np.cos(azimuth), -np.cos(polar)])


def background_colours(rng: np.random.Generator) -> np.ndarray:
    """Top and bottom colours [2, 3] of a muted backdrop: a grey level each, slightly tinted."""
    grey = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6)])
    return grey[:, None] + rng.uniform(-0.08, 0.08, (2, 3))


def render_photo(vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray, cam: Camera, light: np.ndarray,
                 background: np.ndarray, params: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
    """Supersampled photo [H, W, 3] uint8 of a camera-frame mesh with per-vertex albedo [n_verts, 3].

    Misses see a vertical gradient between the ``background`` colours [2, 3] (top, bottom) across
    the field of view of ``synthetic_camera(params)`` (by ray slope, so a window camera made with
    ``Camera.transformed`` sees the same backdrop). ``rng`` draws only the ray jitter and the noise.

    I = albedo * (ambient + (1 - ambient) * max(n.l, 0)) + specular * max(n.h, 0)^shininess, with n
    the barycentric interpolation of the vertex normals at each ray's first hit (Embree).
    """
    s = params.supersample
    jitter = (np.stack(np.meshgrid(np.arange(s), np.arange(s), indexing="xy"), -1).reshape(-1, 2)
              + rng.uniform(size=(cam.height * cam.width, s * s, 2))) / s - 0.5
    sub = (pixel_grid(cam)[:, None, :] + jitter).reshape(-1, 2)  # [H * W * s^2, 2]
    dirs = np.stack([(sub[:, 0] - cam.cx) / cam.fx, (sub[:, 1] - cam.cy) / cam.fy, np.ones(len(sub))], 1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    locs, ray, tri = mesh.ray.intersects_location(np.zeros_like(dirs), dirs, multiple_hits=False)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], locs)
    corners = mesh.faces[tri]
    normal = np.einsum("ij,ijk->ik", bary, mesh.vertex_normals[corners])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    colour = np.einsum("ij,ijk->ik", bary, albedo[corners])
    diffuse = np.clip(normal @ light, 0.0, None)
    half = light - dirs[ray]
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = params.specular * np.clip(np.einsum("ij,ij->i", normal, half), 0.0, None) ** params.shininess
    out = _backdrop(dirs, background, params)
    out[ray] = colour * (params.ambient + (1.0 - params.ambient) * diffuse)[:, None] + (spec * (diffuse > 0))[:, None]
    image = out.reshape(cam.height, cam.width, s * s, 3).mean(axis=2)
    image += rng.normal(0.0, params.noise_std, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _backdrop(dirs: np.ndarray, background: np.ndarray, params: SyntheticParams) -> np.ndarray:
    """Backdrop at infinity [n, 3] seen along unit rays [n, 3]: top to bottom colour over the full
    image's field of view, by ray slope."""
    t = np.clip(0.5 + params.focal_factor * dirs[:, 1] / dirs[:, 2], 0.0, 1.0)[:, None]
    return (1.0 - t) * background[0] + t * background[1]


def backdrop_image(cam: Camera, background: np.ndarray, params: SyntheticParams) -> np.ndarray:
    """The backdrop [H, W, 3] behind the face, one ray per pixel centre (as ``render_photo`` sees it)."""
    pix = pixel_grid(cam)
    dirs = np.stack([(pix[:, 0] - cam.cx) / cam.fx, (pix[:, 1] - cam.cy) / cam.fy, np.ones(len(pix))], 1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return _backdrop(dirs, background, params).reshape(cam.height, cam.width, 3)

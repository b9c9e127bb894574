"""Physically based photos of synthetic faces: Blender's Cycles path tracer through the ``bpy`` wheel.

The optimiser assumes rgb = albedo x (ambient + Lambert) + a white sheen, linear, under one distant
light. These photos break each assumption as a camera does: subsurface scattering in the skin
(Principled BSDF, random walk), a rough dielectric specular layer, a soft area light of some colour
and a coloured environment light, cast shadows (the nose, the brows), the camera's sRGB tone curve,
signal-dependent sensor noise and JPEG compression.

``bpy`` is an optional extra (``pip install -e ".[bench]"``, Python 3.11 only); it is imported
lazily. Blender's camera looks down -z with y up; the OpenCV camera frame maps to it by
(x, y, z) -> (x, -y, -z), and the intrinsics become a lens, a sensor width and a shift.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from fastsider.camera import Camera
from fastsider.io import silenced_fd, srgb_decode, srgb_encode

log = logging.getLogger(__name__)

SENSOR_WIDTH_MM = 36.0     # Blender's sensor; any value works, the lens is scaled to it
KEY_DISTANCE_MM = 1000.0   # key light from the face centre
KEY_POWER_W = 1.0e6        # arbitrary: the photo is exposed afterwards
EXPOSURE_PERCENTILE = 98.0  # this percentile of the face's luminance ...
EXPOSURE_TARGET = 0.7       # ... maps to this linear value before the tone curve (0.85 encoded)


class CyclesScene(NamedTuple):
    """What lights and what the skin is made of; directions in the camera frame (OpenCV)."""

    key_dir: np.ndarray        # [3] unit, from the face towards the key light
    key_colour: np.ndarray     # [3] linear RGB, max 1
    key_size_mm: float         # side of the square area light (soft shadows)
    env_colour: np.ndarray     # [3] linear RGB of the uniform environment
    env_ratio: float           # environment irradiance / key irradiance on a surface facing each
    sss_radius_mm: np.ndarray  # [3] subsurface mean free path per channel
    roughness: float           # specular roughness of the skin's oily layer
    noise_gain: float          # shot noise: variance = noise_gain * value + read_noise^2 (sRGB units)
    read_noise: float
    jpeg_quality: int


def draw_scene(rng: np.random.Generator) -> CyclesScene:
    """A random portrait setting: key light from the front half-space at 10-65 degrees off the camera
    axis, from any side but below; warm to cool colours; skin from the literature's ranges."""
    polar = np.radians(rng.uniform(10.0, 65.0))
    azimuth = np.radians(rng.uniform(-110.0, 110.0))  # 0: from above
    key = np.array([np.sin(polar) * np.sin(azimuth), -np.sin(polar) * np.cos(azimuth), -np.cos(polar)])
    warm = rng.uniform()  # 0: cool daylight, 1: warm tungsten
    key_colour = np.array([1.0, 0.93 - 0.13 * warm, 0.88 - 0.38 * warm + 0.12 * (1 - warm)])
    env_colour = np.clip(rng.uniform(0.6, 1.0, 3), 0, 1)
    scale = rng.uniform(0.8, 1.6)  # skin's scattering distance varies between people and sites
    return CyclesScene(key, key_colour / key_colour.max(), float(rng.uniform(150.0, 600.0)),
                       env_colour / env_colour.max(), float(rng.uniform(0.12, 0.5)),
                       np.array([1.0, 0.35, 0.2]) * scale, float(rng.uniform(0.35, 0.6)),
                       float(rng.uniform(2e-4, 8e-4)), float(rng.uniform(0.002, 0.006)), int(rng.integers(80, 95)))


def to_blender(points: np.ndarray) -> np.ndarray:
    """OpenCV camera frame [n, 3] -> Blender's camera frame (camera at the origin looking down -z)."""
    return np.asarray(points, dtype=np.float64) * np.array([1.0, -1.0, -1.0])


def camera_intrinsics(cam: Camera) -> dict[str, float]:
    """Blender camera settings that image like ``cam`` (square pixels, principal point anywhere).

    Blender's image spans [0, W] with the optical axis at its centre; OpenCV's integer pixel
    coordinates are centres, so that centre is at (W - 1) / 2. Shifts are in units of the larger side.
    """
    if not np.isclose(cam.fx, cam.fy):
        raise ValueError(f"the Cycles renderer needs square pixels (fx = fy), got {cam.fx} and {cam.fy}")
    side = max(cam.width, cam.height)
    return {"lens": cam.fx * SENSOR_WIDTH_MM / side, "sensor_width": SENSOR_WIDTH_MM,
            "shift_x": ((cam.width - 1) / 2.0 - cam.cx) / side, "shift_y": (cam.cy - (cam.height - 1) / 2.0) / side}


def _mesh_object(bpy, vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray):
    mesh = bpy.data.meshes.new("face")
    mesh.from_pydata(to_blender(vertices), [], np.asarray(faces, dtype=np.int64))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
    colour = mesh.color_attributes.new("albedo", "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([np.clip(albedo, 0.0, 1.0), np.ones((len(albedo), 1))], axis=1).astype(np.float32)
    colour.data.foreach_set("color", rgba.ravel())
    mesh.update()
    return bpy.data.objects.new("face", mesh)


def _skin_material(bpy, scene: CyclesScene):
    mat = bpy.data.materials.new("skin")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    bsdf = nodes["Principled BSDF"]
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_name = "albedo"
    mat.node_tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Subsurface Weight"].default_value = 1.0
    bsdf.inputs["Subsurface Radius"].default_value = tuple(float(r) for r in scene.sss_radius_mm)
    bsdf.inputs["Subsurface Scale"].default_value = 1.0  # scene units are mm
    bsdf.inputs["Roughness"].default_value = scene.roughness
    bsdf.inputs["IOR"].default_value = 1.4  # skin
    return mat


def _lights(bpy, scene: CyclesScene, centre_mm: np.ndarray) -> None:
    from mathutils import Vector

    light = bpy.data.lights.new("key", "AREA")
    light.shape, light.size = "SQUARE", scene.key_size_mm
    light.energy, light.color = KEY_POWER_W, tuple(float(c) for c in scene.key_colour)
    obj = bpy.data.objects.new("key", light)
    pos = to_blender(centre_mm + KEY_DISTANCE_MM * scene.key_dir)
    obj.location = Vector(pos.tolist())
    obj.rotation_mode = "QUATERNION"  # an area light emits along its -z: point it at the face
    obj.rotation_quaternion = (Vector(pos.tolist()) - Vector(to_blender(centre_mm).tolist())).to_track_quat("Z", "Y")
    bpy.context.scene.collection.objects.link(obj)
    world = bpy.data.worlds.new("environment")
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    # irradiance: key P / (pi d^2) on a facing surface, a uniform environment of radiance L gives pi L
    key_irradiance = KEY_POWER_W / (np.pi * KEY_DISTANCE_MM**2)
    background.inputs["Color"].default_value = (*(float(c) for c in scene.env_colour), 1.0)
    background.inputs["Strength"].default_value = float(scene.env_ratio * key_irradiance / np.pi)
    bpy.context.scene.world = world


def _camera(bpy, cam: Camera) -> None:
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "HORIZONTAL" if cam.width >= cam.height else "VERTICAL"
    k = camera_intrinsics(cam)
    data.lens, data.sensor_width, data.sensor_height = k["lens"], k["sensor_width"], k["sensor_width"]
    data.shift_x, data.shift_y = k["shift_x"], k["shift_y"]
    data.clip_start, data.clip_end = 1.0, 1.0e5
    obj = bpy.data.objects.new("camera", data)  # at the origin, looking down -z: the camera frame
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.camera = obj


def render_cycles(vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray, cam: Camera, scene: CyclesScene,
                  samples: int = 64, seed: int = 0, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Path-trace a camera-frame mesh (mm) with per-vertex albedo [n_verts, 3] (linear).

    Returns the linear radiance [H, W, 3] (arbitrary scale) and the coverage alpha [H, W] in [0, 1].
    """
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    s = bpy.context.scene
    obj = _mesh_object(bpy, vertices, faces, albedo)
    obj.data.materials.append(_skin_material(bpy, scene))
    s.collection.objects.link(obj)
    _lights(bpy, scene, np.asarray(vertices).mean(axis=0))
    _camera(bpy, cam)
    s.render.engine = "CYCLES"
    s.cycles.device, s.cycles.samples, s.cycles.seed = "CPU", samples, seed
    s.cycles.use_denoising = samples >= 16
    s.cycles.pixel_filter_type, s.cycles.filter_width = "BOX", 1.0  # a pixel integrates its own square
    s.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    s.render.threads = max(threads, 1)
    s.render.resolution_x, s.render.resolution_y, s.render.resolution_percentage = cam.width, cam.height, 100
    s.render.film_transparent = True
    s.view_settings.view_transform = "Standard"
    s.render.image_settings.file_format = "OPEN_EXR"
    s.render.image_settings.color_mode = "RGBA"
    s.render.image_settings.color_depth = "32"
    with tempfile.TemporaryDirectory() as tmp:
        s.render.filepath = str(Path(tmp) / "render.exr")
        with silenced_fd(1):  # Blender prints a line per sample
            bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(s.render.filepath)
        pixels = np.empty(cam.width * cam.height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    rgba = pixels.reshape(cam.height, cam.width, 4)[::-1]  # Blender's rows run bottom to top
    return rgba[..., :3].astype(np.float64), np.clip(rgba[..., 3], 0.0, 1.0).astype(np.float64)


def finish_photo(linear: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray, scene: CyclesScene,
                 rng: np.random.Generator) -> np.ndarray:
    """What a camera makes of the radiance: exposure, sRGB, the face over ``backdrop`` [H, W, 3]
    (encoded), signal-dependent noise, JPEG. Returns uint8 [H, W, 3]."""
    face = alpha > 0.5
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    level = np.percentile(luminance[face], EXPOSURE_PERCENTILE) if face.any() else 1.0
    encoded = srgb_encode(linear * (EXPOSURE_TARGET / max(level, 1e-12)))
    # film_transparent: the radiance is premultiplied by coverage
    image = encoded + (1.0 - alpha[..., None]) * backdrop
    std = np.sqrt(scene.noise_gain * np.clip(image, 0.0, 1.0) + scene.read_noise**2)
    image = np.clip(image + rng.normal(size=image.shape) * std, 0.0, 1.0)
    buffer = io.BytesIO()
    Image.fromarray((image * 255.0 + 0.5).astype(np.uint8)).save(buffer, format="JPEG", quality=scene.jpeg_quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def cycles_photo(vertices: np.ndarray, faces: np.ndarray, albedo: np.ndarray, cam: Camera, backdrop: np.ndarray,
                 scene: CyclesScene, samples: int, rng: np.random.Generator) -> np.ndarray:
    """The photo [H, W, 3] uint8 of a camera-frame mesh whose per-vertex ``albedo`` [n, 3] is given as a
    display colour (as the simple renderer paints it), over ``backdrop`` [H, W, 3]."""
    linear, alpha = render_cycles(vertices, faces, srgb_decode(albedo), cam, scene, samples,
                                  seed=int(rng.integers(2**31)))
    return finish_photo(linear, alpha, backdrop, scene, rng)


def scene_json(scene: CyclesScene) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in scene._asdict().items()}

"""Mesh files that open with their textures: OBJ + MTL, binary glTF (.glb), and 16-bit PNG maps.

OBJ keeps positions and UVs apart (``f v/vt/vn``), so its ``v`` lines are the mesh's vertices in
their own order (the correspondence to the coarse mesh) while UV seams split only the ``vt`` lines;
trimesh's OBJ writer has one index for both. glTF has one index for all attributes (seams split
vertices) and its own frame: metres, y up, the camera looking along -z, so the camera frame's
(x, y, z) mm are written as (x, -y, -z) / 1000, with the photo's camera as a perspective camera
at the origin. Files are encoded in memory, then written (a full disk is one OSError).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fastsider.camera import Camera
from fastsider.io import png_bytes

GLTF_FROM_CAMERA = np.array([1.0, -1.0, -1.0]) / 1000.0  # OpenCV camera frame, mm -> glTF (y up, -z ahead), m


def obj_text(vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
             faces_uv: np.ndarray | None = None, mtl_name: str | None = None, material: str = "face",
             header: str = "") -> str:
    """Wavefront OBJ: ``v`` [n_verts, 3], ``vn`` [n_verts, 3] indexed as v, ``vt`` [n_uv, 2] with their own
    face indices ``faces_uv`` [n_faces, 3] (row by row as ``faces``)."""
    if faces.ndim != 2 or faces.shape[1] != 3 or (faces_uv is not None and faces_uv.shape != faces.shape):
        raise ValueError(f"faces [n_faces, 3] and faces_uv of the same shape expected, got {faces.shape}")
    lines = [f"# {line}" for line in header.splitlines()]
    if mtl_name is not None:
        lines.append(f"mtllib {mtl_name}")
    lines.append(_rows("v", vertices, "%.5f"))
    if uv is not None:
        lines.append(_rows("vt", uv, "%.9f"))
    lines.append(_rows("vn", normals, "%.5f"))
    if mtl_name is not None:
        lines.append(f"usemtl {material}")
    f1 = faces.astype(np.int64) + 1
    if uv is None:
        cols = np.stack([f1, f1], axis=2).reshape(-1, 6)
        lines.append(_rows("f", cols, "%d//%d %d//%d %d//%d", per_row=True))
    else:
        cols = np.stack([f1, faces_uv.astype(np.int64) + 1, f1], axis=2).reshape(-1, 9)
        lines.append(_rows("f", cols, "%d/%d/%d %d/%d/%d %d/%d/%d", per_row=True))
    return "\n".join(line for line in lines if line) + "\n"


def _rows(tag: str, values: np.ndarray, fmt: str, per_row: bool = False) -> str:
    if len(values) == 0:
        return ""
    row = f"{tag} {fmt}" if per_row else f"{tag} " + " ".join([fmt] * values.shape[1])
    return "\n".join([row] * len(values)) % tuple(values.ravel().tolist())


def mtl_text(material: str, color_map: str | None = None, normal_map: str | None = None,
             displacement_map: str | None = None) -> str:
    """An MTL with one diffuse material and its maps (normal map as ``map_Bump -bm 1``, as Blender reads
    it; displacement as ``disp``)."""
    lines = [f"newmtl {material}", "Ka 1.0 1.0 1.0", "Kd 1.0 1.0 1.0", "Ks 0.0 0.0 0.0", "Ns 10.0", "d 1.0", "illum 1"]
    if color_map:
        lines.append(f"map_Kd {color_map}")
    if normal_map:
        lines.append(f"map_Bump -bm 1.0 {normal_map}")
    if displacement_map:
        lines.append(f"disp {displacement_map}")
    return "\n".join(lines) + "\n"


def glb_bytes(vertices_mm: np.ndarray, normals: np.ndarray, faces_uv: np.ndarray, uv: np.ndarray,
              vertex_of_uv: np.ndarray, color: np.ndarray, camera: Camera | None = None) -> bytes:
    """A binary glTF of the mesh (one vertex per UV vertex), its UVs, normals and a base-colour texture
    (``color`` [S, S, 3] uint8), non-metallic; plus ``camera`` as a perspective camera at the origin
    (glTF's has its principal point at the centre: give the working crop's, which has)."""
    import trimesh
    from PIL import Image
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    material = PBRMaterial(name="face", baseColorTexture=Image.fromarray(color), metallicFactor=0.0,
                           roughnessFactor=0.8)
    mesh = trimesh.Trimesh(vertices=vertices_mm[vertex_of_uv] * GLTF_FROM_CAMERA, faces=faces_uv,
                           vertex_normals=normals[vertex_of_uv] * np.sign(GLTF_FROM_CAMERA),
                           visual=TextureVisuals(uv=uv, material=material), process=False)
    scene = trimesh.Scene(mesh)
    if camera is not None:
        fov = (math.degrees(2.0 * math.atan(camera.width / (2.0 * camera.fx))),
               math.degrees(2.0 * math.atan(camera.height / (2.0 * camera.fy))))
        scene.camera = trimesh.scene.Camera(name="photo", resolution=(camera.width, camera.height), fov=fov)
        scene.camera_transform = np.eye(4)
    from trimesh.exchange.gltf import export_glb

    return export_glb(scene, include_normals=True)


def png16_bytes(codes: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of ``codes`` [H, W] uint16."""
    if codes.dtype != np.uint16 or codes.ndim != 2:
        raise ValueError(f"uint16 [H, W] expected, got {codes.dtype} {codes.shape}")
    return png_bytes(codes)


def write_bytes(path: Path, data: bytes | str) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)

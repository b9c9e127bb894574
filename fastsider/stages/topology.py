"""The detailed mesh on the coarse topology and its textures: mesh.obj/.mtl, mesh.glb, coarse.obj/.mtl,
the maps and the correspondence (fastsider/export/ does the work; this orchestrates and writes).

coarse mesh -> UV atlas (one disk chart, or xatlas) -> midpoint subdivision to ~export.edge_px crop
pixels per edge (coarse vertices first, UVs on texel centres) -> each vertex the camera sees moved
along its normal onto the model's zero set -> displacement, tangent-space normal and colour maps.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from fastsider.camera import Normalization, project
from fastsider.config import ExportConfig
from fastsider.errors import InputError
from fastsider.export import bake, formats
from fastsider.export.displace import displace_onto_zero_set, fade_weights, visible_vertices
from fastsider.export.subdivision import (Subdivision, levels_for_edge, median_edge_mm, midpoint_subdivide,
                                          vertex_normals)
from fastsider.export.uv import UVAtlas, disk_atlas, folded, is_disk, subdivide_with_atlas, xatlas_atlas
from fastsider.export.viewer import viewer_html
from fastsider.face.types import CoarseFace
from fastsider.io import OutputStage, png_bytes, save_json

if TYPE_CHECKING:
    from fastsider.stages.fit import FitState

log = logging.getLogger(__name__)

UV_PADDING = 0.01        # share of the map left around the disk chart
XATLAS_PADDING_PX = 4    # texels between xatlas's charts
OCCLUSION_TOL_MM = 1.0   # a vertex is hidden when the mesh is this much nearer along its ray
MIN_FACING = 0.05        # ... or when its normal is within ~3 degrees of perpendicular to the ray
MAX_STEP_MM = 1.0        # one Newton step's largest move
CONVERGED_MM = 0.05      # a vertex whose walk ends further than this from the zero set keeps the coarse surface
SDF_CHUNK = 1 << 16      # points per model evaluation


def model_sdf_mm(model, norm: Normalization, device: torch.device):
    """The SDF of ``model`` (anything with ``sdf_with_gradient(x, create_graph)`` in the unit box, as
    :class:`fastsider.nn.fields.SiderModel`) in mm, and its gradient, for points [n, 3] mm (numpy)."""

    def sdf(x_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(norm.to_unit(x_mm), dtype=torch.float32, device=device)
        f, g = [], []
        for i in range(0, len(x), SDF_CHUNK):
            s = model.sdf_with_gradient(x[i:i + SDF_CHUNK], create_graph=False)
            f.append(s.sdf.detach().double().cpu())
            g.append(s.gradient.detach().double().cpu())
        return (torch.cat(f).numpy() * norm.half_size, torch.cat(g).numpy()) if f else (np.zeros(0), np.zeros((0, 3)))
    return sdf


def coarse_atlas(coarse: CoarseFace, cfg: ExportConfig) -> tuple[UVAtlas, str]:
    """The coarse mesh's UV atlas and how it was made ("disk" or "xatlas")."""
    method, disk = cfg.uv_atlas, cfg.uv_atlas != "xatlas" and is_disk(coarse.faces, len(coarse.vertices))
    if method == "disk" and not disk:
        raise InputError("export.uv_atlas = 'disk' needs a coarse mesh in one piece with one boundary and no "
                         "handles; use 'auto' or 'xatlas'")
    if disk:
        pixels = project(coarse.camera, coarse.vertices)
        return disk_atlas(coarse.vertices, coarse.faces, pixels, UV_PADDING, cfg.slim_iterations), "disk"
    log.info("UV atlas: xatlas on %d faces (the coarse mesh is not one disk); this can take minutes",
             len(coarse.faces))
    return xatlas_atlas(coarse.vertices, coarse.faces, cfg.texture_size, XATLAS_PADDING_PX), "xatlas"


class DetailedTopology(NamedTuple):
    """The coarse mesh midpoint-subdivided, each vertex the camera sees moved along its normal onto the
    model's zero set (the rest keeps the coarse surface, with a fade between)."""

    sub: Subdivision
    atlas: UVAtlas | None      # the coarse mesh's atlas and the subdivided one (when the maps are baked)
    sub_atlas: UVAtlas | None
    atlas_method: str | None   # "disk" or "xatlas"
    base_normals: np.ndarray   # [n, 3] area-weighted unit normals of the subdivided coarse mesh
    visible: np.ndarray        # [n] bool
    converged: np.ndarray      # [n] bool: the Newton walk ended on the zero set
    residual_mm: np.ndarray    # [n] |f| where the walk ended
    d_mm: np.ndarray           # [n] the displacement along base_normals, faded
    weight: np.ndarray         # [n] the fade's weight in [0, 1]
    seconds: dict[str, float]

    @property
    def vertices(self) -> np.ndarray:
        return self.sub.vertices + self.d_mm[:, None] * self.base_normals


def detailed_topology(st: FitState, cfg: ExportConfig, with_atlas: bool) -> DetailedTopology:
    """The detailed surface on the coarse topology (``with_atlas``: and the UV atlas for the maps)."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    c = st.prep.coarse
    levels = levels_for_edge(median_edge_mm(c.vertices, c.faces), cfg.edge_px * st.mm_per_px, len(c.faces),
                             cfg.max_faces)
    atlas = sub_atlas = method = None
    if with_atlas:
        atlas, method = coarse_atlas(c, cfg)
        sub, sub_atlas = subdivide_with_atlas(c.vertices, c.faces, atlas, levels)
    else:
        sub = midpoint_subdivide(c.vertices, c.faces, levels)
    seconds["subdivide"] = time.perf_counter() - t

    t = time.perf_counter()
    base_normals = vertex_normals(sub.vertices, sub.faces)
    visible = visible_vertices(sub.vertices, sub.faces, base_normals, OCCLUSION_TOL_MM, MIN_FACING)
    offset = st.shell.surface_offset_mm  # the shell target's zero set lies this far out
    disp = displace_onto_zero_set(model_sdf_mm(st.model, st.norm, st.device), sub.vertices, base_normals, offset,
                                  cfg.newton_steps, cfg.max_displacement_mm, MAX_STEP_MM)
    # no zero crossing within reach (an SDF far from the coarse one): the coarse surface stays there
    converged = disp.residual_mm < CONVERGED_MM
    weight = fade_weights(sub.vertices, visible & converged, cfg.fade_mm)
    seconds["displace"] = time.perf_counter() - t
    return DetailedTopology(sub, atlas, sub_atlas, method, base_normals, visible, converged, disp.residual_mm,
                            (disp.d_mm - offset) * weight, weight, seconds)


def write_topology_outputs(out: OutputStage, st: FitState, cfg: ExportConfig, topo: DetailedTopology,
                           stem: str = "mesh") -> tuple[dict[str, Any], np.ndarray]:
    """Write ``{stem}.obj/.mtl/.glb``, ``coarse.obj/.mtl``, the maps and the correspondence of ``topo``
    (made ``with_atlas``); return their figures for summary.json (counts, displacement range, on-surface
    residuals, seconds by step) and the vertices [n, 3] written, displaced as the map decodes."""
    if topo.sub_atlas is None:
        raise ValueError("write_topology_outputs needs a DetailedTopology made with its atlas")
    seconds = dict(topo.seconds)
    c, size, sub, sub_atlas = st.prep.coarse, cfg.texture_size, topo.sub, topo.sub_atlas
    t = time.perf_counter()
    raster = bake.rasterize(sub_atlas.uv, sub_atlas.faces_uv, size)
    fill = bake.fill_from(raster)
    dmap = bake.displacement_map(raster, sub_atlas, topo.d_mm, fill)
    detailed = sub.vertices + dmap.d_mm[:, None] * topo.base_normals
    normals = vertex_normals(detailed, sub.faces)
    maps = {"displacement": dmap.codes, **_colour_and_normal_maps(raster, fill, sub, sub_atlas, topo.base_normals,
                                                                   detailed, normals, topo.visible, st)}
    seconds["bake"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_files(out, stem, st, sub, sub_atlas, topo.atlas, detailed, normals, maps, (dmap.lo, dmap.hi), dmap.d_mm,
                 topo.weight, sub.levels)
    seconds["write"] = time.perf_counter() - t
    d = dmap.d_mm
    residual = topo.residual_mm[topo.weight > 1.0 - 1e-9]
    return {"vertices": len(detailed), "faces": len(sub.faces), "coarse_vertices": len(c.vertices),
            "subdivision_levels": sub.levels, "uv_atlas": topo.atlas_method, "uv_vertices": len(sub_atlas.uv),
            "uv_folded_faces": (int(folded(sub_atlas.uv, sub_atlas.faces_uv).sum())
                                if topo.atlas_method == "disk" else None),
            "texture_size": size, "visible_fraction": float(topo.visible.mean()),
            "unconverged_vertices": int((topo.visible & ~topo.converged).sum()),
            "displacement_mm": {"min": float(d.min()), "max": float(d.max()), "mean_abs": float(np.abs(d).mean())},
            "on_surface_residual_mm": {"max": float(residual.max()) if len(residual) else 0.0,
                                       "p99": float(np.percentile(residual, 99)) if len(residual) else 0.0},
            "map_change_mm": {"max": float(dmap.change_mm.max()), "p99": float(np.percentile(dmap.change_mm, 99)),
                              "over_0.001": int((dmap.change_mm > 1e-3).sum())},
            "seconds": seconds}, detailed


def _colour_and_normal_maps(raster: bake.Raster, fill: bake.Fill, sub, atlas: UVAtlas, base_normals: np.ndarray,
                            detailed: np.ndarray, normals: np.ndarray, visible: np.ndarray,
                            st: FitState) -> dict[str, np.ndarray]:
    """The photo's colour on the detailed surface and its tangent-space normals, uint8 [S, S, 3] each."""
    tangents, bitangents = bake.tangent_frames(sub.vertices, sub.faces, atlas, base_normals)
    ts = bake.tangent_space_normals(raster, atlas, base_normals, tangents, bitangents, normals)
    colour, valid = bake.project_photo(raster, atlas, detailed, visible, st.prep.photo, st.prep.camera)
    return {"color": _to_uint8(bake.to_image(raster, colour, bake.fill_from(raster, valid))),
            "normal": _to_uint8(bake.to_image(raster, (ts + 1.0) / 2.0, fill))}


def _write_files(out: OutputStage, stem: str, st: FitState, sub, sub_atlas: UVAtlas, atlas: UVAtlas,
                 detailed: np.ndarray, normals: np.ndarray, maps: dict[str, np.ndarray], disp_range: tuple[float, float],
                 d: np.ndarray, weight: np.ndarray, levels: int) -> None:
    c = st.prep.coarse
    names = {k: f"{stem}_{k}.png" for k in maps}
    # zlib (the PNGs, the npz) releases the GIL: it runs on the other core beside the OBJ text, which holds it
    with ThreadPoolExecutor(2) as pool:
        pngs = {k: pool.submit(formats.png16_bytes if image.dtype == np.uint16 else png_bytes, image)
                for k, image in maps.items()}
        crop_png = pool.submit(png_bytes, st.prep.image)
        npz = pool.submit(np.savez_compressed, out.path(f"{stem}_topology.npz"), n_coarse=np.int64(len(c.vertices)),
                          parents=sub.parents.astype(np.int32), levels=np.int64(levels),
                          displacement_mm=d.astype(np.float32), weight=weight.astype(np.float32),
                          uv_vertex_to_vertex=sub_atlas.vertex_of_uv.astype(np.int32),
                          flame_vertex_ids=(np.arange(len(c.vertices), dtype=np.int32) if c.source == "flame"
                                            else np.zeros(0, dtype=np.int32)))
        _write_mesh_files(out, stem, st, sub, sub_atlas, atlas, detailed, normals, maps, names, disp_range, levels,
                          crop_png)
        for k, png in pngs.items():
            formats.write_bytes(out.path(names[k]), png.result())
        npz.result()


def _write_mesh_files(out: OutputStage, stem: str, st: FitState, sub, sub_atlas: UVAtlas, atlas: UVAtlas,
                      detailed: np.ndarray, normals: np.ndarray, maps: dict[str, np.ndarray], names: dict[str, str],
                      disp_range: tuple[float, float], levels: int, crop_png) -> None:
    c = st.prep.coarse
    lo, hi = disp_range
    save_json(out.path(f"{stem}_displacement.json"), {
        "units": "mm", "min_mm": lo, "max_mm": hi,
        "decode": "d_mm = min_mm + value / 65535 * (max_mm - min_mm)",
        "step_mm": (hi - lo) / 65535.0,
        "blender_midlevel": -lo / (hi - lo), "blender_strength_mm": hi - lo,  # d = (value - midlevel) * strength
        "rule": f"{stem}.obj = coarse.obj midpoint-subdivided {levels} times (fastsider.export.subdivision), each "
                "vertex moved by d along the area-weighted vertex normal of the subdivided coarse mesh; d is "
                "the map read bilinearly at the vertex's UV (texel centres at (i + 0.5) / size, v up)"})
    header = (f"fastsider {stem}: the detailed face on the coarse topology ({levels} midpoint subdivisions)\n"
              "mm, camera frame of the photo (OpenCV: x right, y down, z forward); vertices 0..n_coarse-1 are "
              "coarse.ply's")
    formats.write_bytes(out.path(f"{stem}.obj"), formats.obj_text(
        detailed, normals, sub.faces, sub_atlas.uv, sub_atlas.faces_uv, f"{stem}.mtl", header=header))
    formats.write_bytes(out.path(f"{stem}.mtl"), formats.mtl_text("face", names["color"]))
    formats.write_bytes(out.path(f"{stem}.glb"), formats.glb_bytes(
        detailed, normals, sub_atlas.faces_uv, sub_atlas.uv, sub_atlas.vertex_of_uv,
        maps["color"], c.camera))
    formats.write_bytes(out.path("coarse.obj"), formats.obj_text(  # its UVs are the first of sub_atlas
        c.vertices, vertex_normals(c.vertices, c.faces), c.faces, atlas.uv, atlas.faces_uv,
        "coarse.mtl", header="fastsider coarse face with the UV atlas of the maps; mm, camera frame (OpenCV)"))
    formats.write_bytes(out.path("coarse.mtl"), formats.mtl_text("face", names["color"], names["normal"],
                                                                 names["displacement"]))
    formats.write_bytes(out.path("viewer.html"), viewer_html(
        detailed, sub.vertices, sub.faces, crop_png.result(), f"fastsider: {stem}"))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

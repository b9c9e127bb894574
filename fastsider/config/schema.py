"""The config schema: frozen dataclasses for every stage and both network backends.

The defaults *are* the fast preset. Keys are scoped to the path that uses them: ``model.geometry_mlp``
and ``stage1`` exist for the paper's MLP, ``model.height_map`` and ``stage2.height_map`` for the fast
preset's height map; :func:`inert_keys` says which do nothing under a config's choices.

Network fields use tiny-cuda-nn's vocabulary where it has one (``otype``, ``n_neurons``,
``n_hidden_layers``, ``activation``, ``n_frequencies``); skip layers, softplus beta and
geometric init are torch-only extras that the tcnn backend refuses rather than ignores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Gt, Interval, Le, MinLen

from fastsider.config.constraints import (
    AtLeastOne,
    ConfigError,
    Count,
    NonNegative,
    Positive,
    check_fields,
)

Backend = Literal["auto", "torch", "tcnn"]
NormalMode = Literal["autograd", "finite_difference"]
# Ranges: each numeric field states its own (constraints.py); FitConfig checks them all at once.
# Upper bounds on sizes keep memory in reach (e.g. mesh.resolution 1024: a 5 GB volume).
FocalFactor = Annotated[float, Interval(ge=0.25, le=100.0)]


@dataclass(frozen=True)
class ImageConfig:
    resolution: Annotated[int, Interval(ge=32, le=2048)] = 512   # working square crop, pixels
    crop_margin: Annotated[float, Interval(ge=0.0, le=2.0)] = 0.2  # extra border around the face box, fraction
                                                                   # of its size
    min_face_px: AtLeastOne = 64       # faces smaller than this (box side, input pixels) are refused
    min_image_px: AtLeastOne = 64      # shorter image side below this is refused
    max_megapixels: Annotated[float, Interval(gt=0.0, le=500.0)] = 100.0  # larger images are refused (memory:
                                                                           # ~30 bytes a pixel while cropping)


@dataclass(frozen=True)
class DefaultModelConfig:
    ipd_mm: Annotated[float, Interval(ge=20.0, le=120.0)] = 63.0  # mean adult inter-pupillary distance
                                                                  # (Dodgson 2004: 63.4 mm)
    focal_factor: FocalFactor = 4.0  # working focal length = focal_factor * resolution (px); ~14 deg FOV
    subdivisions: Annotated[int, Interval(ge=0, le=5)] = 3  # Loop subdivisions of the 468-point face mesh: at
                                   # 3 (~1 mm edges, 29k vertices) its limit surface is smooth; at 1 its
                                   # triangles showed in normals.png and were carved into every detailed mesh
    smooth_iterations: Count = 5   # Taubin smoothing passes after subdivision


@dataclass(frozen=True)
class FlameFitConfig:
    n_shape: Annotated[int, Interval(ge=0, le=300)] = 100      # FLAME has 300 shape components ...
    n_expression: Annotated[int, Interval(ge=0, le=100)] = 50  # ... and 100 expression components
    iterations: Count = 400
    lr: Positive = 0.02
    shape_prior: NonNegative = 1e-3      # weight of |beta|^2 (landmark loss is in px^2)
    expression_prior: NonNegative = 1e-3
    pose_prior: NonNegative = 1e-2       # weight of |jaw pose|^2
    focal_factor: FocalFactor = 4.0      # same camera model as the default coarse model


@dataclass(frozen=True)
class EncodingConfig:
    otype: Literal["Frequency", "Identity"] = "Frequency"
    n_frequencies: Annotated[int, Interval(ge=0, le=16)] = 6  # float32 holds no finer sine than 2^16 x


@dataclass(frozen=True)
class NetworkConfig:
    otype: Literal["FullyFusedMLP", "CutlassMLP", "VanillaMLP"] = "FullyFusedMLP"
    n_neurons: Annotated[int, Interval(ge=1, le=4096)] = 64
    n_hidden_layers: Annotated[int, Interval(ge=1, le=64)] = 3
    activation: Literal["Softplus", "ReLU"] = "Softplus"
    output_activation: Literal["None", "Sigmoid"] = "None"
    # torch-only extras (the reference preset); the tcnn backend refuses them
    skip_layers: tuple[Count, ...] = ()  # hidden layer indices that re-receive the encoded input
    softplus_beta: Positive = 100.0      # IDR's smooth ReLU
    geometric_init: bool = False         # IDR sphere init (geometry MLP only)


@dataclass(frozen=True)
class GeometryMLPConfig:
    """The geometry MLP f(phi(x)) -> (sdf, feature): built where model.sdf or model.detail is "mlp"."""

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    feature_dim: Annotated[int, Interval(ge=0, le=1024)] = 16  # feature vector handed to the rendering MLP
    init_sphere_radius: Annotated[float, Interval(gt=0.0, le=1.0)] = 0.5  # geometric init radius, normalized units


@dataclass(frozen=True)
class RenderingMLPConfig:
    """The rendering MLP: g(x, n, v, feature) -> rgb (model.shading = "mlp"), or the albedo alone
    (model.albedo = "mlp" under an albedo x light shading, from x and the feature)."""

    encoding: EncodingConfig = field(default_factory=lambda: EncodingConfig(n_frequencies=0))
    view_encoding: EncodingConfig = field(default_factory=lambda: EncodingConfig(n_frequencies=2))
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(
            n_neurons=64, n_hidden_layers=2, activation="ReLU", output_activation="Sigmoid"
        )
    )
    use_feature: bool = False        # the paper's Fig. 4 ablation switches (reference: all on)
    use_normal: bool = True
    use_position: bool = True        # false: no x input (one albedo for the whole face)
    use_view: bool = True            # false: no view direction (with one camera v is the pixel, through
                                     # which the net could paint shading it should get from n)


@dataclass(frozen=True)
class LatticeConfig:
    resolution: Annotated[int, Interval(ge=2, le=1024)] = 256  # samples per box side; ~0.7 mm on a face
                                                               # (1024: 4 GB of float32)


@dataclass(frozen=True)
class HeightMapConfig:
    resolution: Annotated[int, Le(4096)] = 256  # samples per side over the working crop; 0: one per crop pixel
    # the map plus levels - 1 coarser grids (each half the last's cells per side), summed: stage 2's steps
    # reach the flat skin's low frequencies sooner (4: the simple bench's face-wide error 0.036 -> 0.031 mm
    # on the tuning seeds at 200 steps, where 600 steps of one level gave 0.032; tuning-log 24)
    levels: Annotated[int, Interval(ge=1, le=8)] = 4

    def __post_init__(self) -> None:
        if self.resolution == 1 or self.resolution < 0:
            raise ConfigError(f"model.height_map.resolution must be 0 or >= 2, got {self.resolution}")


@dataclass(frozen=True)
class AlbedoMapConfig:
    # a cell of ~7 mm holds skin blotches down to ~15 mm but not a 1-6 mm wrinkle, whose shading is
    # then left to the geometry
    resolution: Annotated[int, Interval(ge=2, le=1024)] = 32  # B-spline control cells per side over the crop


@dataclass(frozen=True)
class LightConfig:
    """The one directional light of model.shading = "albedo_directional"."""

    shininess: Positive = 20.0       # initial Blinn-Phong exponent (learned)
    specular: bool = True            # learn a white sheen


@dataclass(frozen=True)
class ModelConfig:
    """What the model is made of; fastsider/model.py builds it, and only the parts chosen here."""

    backend: Backend = "auto"          # the MLPs' implementation
    normals: NormalMode = "autograd"   # tcnn forces finite differences (no double backward)
    fd_eps: Annotated[float, Interval(gt=0.0, le=0.1)] = 1e-3  # finite-difference step, normalized units
    # the coarse SDF: "lattice" (fast) samples it on a lattice, exact from the start (no stage-1
    # steps); "mlp" (the paper) is the geometry MLP, fitted to it in stage 1
    sdf: Literal["lattice", "mlp"] = "lattice"
    # what stage 2 moves: "height_map" (fast), a displacement map over the crop subtracted from the
    # frozen stage-1 SDF, on every face ray each step; "mlp" (the paper), the geometry MLP itself
    # (a residual on the lattice, starting at zero, when model.sdf = "lattice")
    detail: Literal["height_map", "mlp"] = "height_map"
    # "mlp": the paper's g(x, n, v, feature) -> rgb. The others: rgb = albedo x a learned light of the
    # normal (nn/shading.py), so a wrinkle's shading can only come through the normal: "albedo_sh", a
    # 2nd-order spherical-harmonics light; "albedo_directional", one distant light + ambient with a
    # white Blinn-Phong sheen (under one dominant light SH2 makes neither the clamped cosine nor the
    # highlight, and the height map bends the face to make up for it)
    shading: Literal["mlp", "albedo_sh", "albedo_directional"] = "albedo_directional"
    albedo: Literal["map", "mlp"] = "map"   # albedo x light: a coarse B-spline map over the crop, or the MLP
    lattice: LatticeConfig = field(default_factory=LatticeConfig)
    height_map: HeightMapConfig = field(default_factory=HeightMapConfig)
    albedo_map: AlbedoMapConfig = field(default_factory=AlbedoMapConfig)
    light: LightConfig = field(default_factory=LightConfig)
    geometry_mlp: GeometryMLPConfig = field(default_factory=GeometryMLPConfig)
    rendering_mlp: RenderingMLPConfig = field(default_factory=RenderingMLPConfig)

    @property
    def has_geometry_mlp(self) -> bool:
        return self.sdf == "mlp" or self.detail == "mlp"

    @property
    def has_rendering_mlp(self) -> bool:
        return self.shading == "mlp" or self.albedo == "mlp"

    def __post_init__(self) -> None:
        if self.rendering_mlp.use_feature and self.has_rendering_mlp and not self.has_geometry_mlp:
            raise ConfigError("model.rendering_mlp.use_feature needs a geometry MLP (model.sdf or model.detail 'mlp')")


@dataclass(frozen=True)
class ShellConfig:
    # signed (fast): pseudonormal signed distance, no thin sheet to tear; "shell" (the paper):
    # SDF_GT = dist(x, mesh) - eps/2
    target: Literal["shell", "signed"] = "signed"
    thickness_mm: Annotated[float, Interval(gt=0.0, le=20.0)] = 1.0  # eps of the "shell" target
    box_margin: Annotated[float, Interval(ge=0.0, le=2.0)] = 0.15    # normalization box = coarse bbox grown by
                                                                     # this fraction


@dataclass(frozen=True)
class CoarseStageConfig:
    """Stage 1: the geometry MLP fitted to the coarse SDF (model.sdf = "mlp")."""

    iterations: Count = 1000
    batch_points: Annotated[int, Interval(ge=1, le=1 << 22)] = 8192
    lr: Positive = 5e-3
    lr_decay: Positive = 0.05          # lr falls exponentially to lr * lr_decay at the last step
    eikonal_weight: NonNegative = 1e-4
    max_seconds: NonNegative = 0.0     # wall-time budget for the stage's steps; 0 = none


@dataclass(frozen=True)
class SdfPoolConfig:
    """Points with their SDF_GT, drawn once: stage 1's batches and stage 2's SDF and eikonal terms."""

    size: Annotated[int, Interval(ge=1, le=1 << 24)] = 49152  # 6 stage-1 batches of 8192 (the reference: 24);
                                                              # on a lattice only stage 2's eikonal draws
    near_std_mm: Annotated[tuple[Positive, ...], MinLen(1)] = (0.3, 1.5, 8.0)  # Gaussian offsets of
                                                                               # near-surface samples
    uniform_fraction: Annotated[float, Interval(ge=0.0, lt=1.0)] = 0.1  # share of samples uniform in the box


@dataclass(frozen=True)
class TraceConfig:
    max_steps: Annotated[int, Interval(ge=1, le=10000)] = 48
    hit_eps: Annotated[float, Interval(gt=0.0, lt=1.0)] = 1e-4  # |f| below this is a hit, normalized units
    secant_steps: Annotated[int, Interval(ge=0, le=1000)] = 8
    use_occupancy_grid: bool = True
    grid_resolution: Annotated[int, Interval(ge=2, le=512)] = 64  # occupancy grid cells per box side
    grid_band_mm: Positive = 6.0       # cells within this distance of the coarse surface are kept


@dataclass(frozen=True)
class MLPDetailConfig:
    """Stage 2 with model.detail = "mlp": traced ray batches through the geometry MLP."""

    lr: Positive = 1e-4                # the paper's; 3e-4 and up tore holes in the astronaut's surface
    rays_per_batch: Annotated[int, Interval(ge=1, le=1 << 20)] = 2048


@dataclass(frozen=True)
class HeightMapDetailConfig:
    """Stage 2 with model.detail = "height_map": its step size and priors."""

    lr: Positive = 0.03                # Adam step size, mm: the albedo explains a fold's shading within tens
                                       # of steps while h must move ~1 mm (0.03 finds in 200 steps what 0.02
                                       # did in 300: tuning-log 21)
    light_warmup_steps: Count = 200    # albedo_directional: steps fitting the light alone first (one albedo,
                                       # h = 0); started together, a fine albedo takes the large-scale shading.
                                       # 100 cost the simple bench's face-wide error 0.032 -> 0.034 mm (tuning-log 22)
    smoothness: NonNegative = 0.1      # weight of h's mean squared Laplacian (mm^2)
    tv: NonNegative = 0.07             # weight of h's total variation (mean |neighbour difference|, mm); 0.03
                                       # with model.height_map.levels = 4 left 12% more noise on flat skin
                                       # (tuning-log 24)
    sparsity: NonNegative = 0.4        # weight of h's log prior, mean of s log(1 + |h| / s) (mm): the L1 below
                                       # s, a log above: a deep fold costs little more than a shallow one, a
                                       # wide sheet of noise its area
    sparsity_mm: Positive = 0.01       # s, where the prior turns from L1 to log
    raised: NonNegative = 0.4          # weight of the groove prior (nn/priors.py raised_cost; tuning-log 26). 0: off
    raised_from_mm: NonNegative = 0.05  # h above this pays the groove prior (below, noise is free to go either way)
    # the rendered colour is blurred by a Gaussian of this sigma on the skin (subsurface scattering)
    # before the photometric loss: one value for all channels or one each for R, G, B; 0: sharp.
    # Skin scatters red light furthest (mean free paths ~1 / 0.35 / 0.2 mm): a sharp model explains the
    # photo's blur with flattened geometry. One sigma for all channels (1.5 mm) cost the simple bench
    # its gain; these help both benches (docs/tuning-log.md)
    scatter_mm: Annotated[tuple[NonNegative, ...], MinLen(1)] = (1.0, 0.35, 0.2)
    debias_steps: Count = 67           # the last this many steps lift the sparsity and TV priors on the details
                                       # found (|h| > debias_threshold_mm, grown by debias_grow_cells), giving
                                       # back the depth the priors shrank. 0 or >= iterations: off. Counted from
                                       # stage2.iterations: a max_seconds stop before then skips it
    debias_threshold_mm: Positive = 0.12
    debias_grow_cells: Count = 2
    # albedo_directional: the frozen surface's own cast shadows (nose, brows, sockets), found once after the
    # light's warm-up by tracing towards it from every hit: the share of shadow_rays directions over the
    # light's cone (shadow_cone_deg half-angle, a soft edge) that leave the face. 0: off. A shading model
    # without shadows carves a shadow into the skin (Cycles tuning seeds: tuning-log 19)
    shadow_rays: Count = 4
    shadow_cone_deg: Annotated[float, Interval(ge=0.0, le=45.0)] = 8.0
    shadow_use: Literal["shade", "skip"] = "skip"  # skip: no photometric rays where under half the light
                                                   # arrives; shade: ambient only there (a renderer without
                                                   # shadows then gets them carved in: tuning-log 19)

    def __post_init__(self) -> None:
        if len(self.scatter_mm) not in (1, 3):
            raise ConfigError(f"stage2.height_map.scatter_mm takes 1 or 3 values (R, G, B), got {len(self.scatter_mm)}")


@dataclass(frozen=True)
class DetailStageConfig:
    """Stage 2, either detail; the carrier's own keys are in ``mlp`` and ``height_map``."""

    iterations: Count = 200            # every face ray each step: 200 at height_map.lr 0.03 find what 300-600
                                       # at 0.02 did; 150 at 0.04 keep the wrinkles but not the flat skin (the
                                       # simple bench's face-wide error 0.032 -> 0.036 mm; tuning-log 21, 22)
    appearance_lr: NonNegative = 0.02  # Adam step size of the rendering side (light, albedo map, rendering MLP)
    color_weight: NonNegative = 1.0
    sdf_weight: NonNegative = 0.0      # |f - SDF_GT| in metres (sdf/losses.py); the paper's 100 (reference).
                                       # On a height map an L1 on h, costing a fold as much per mm as noise:
                                       # the height map is anchored by height_map.sparsity instead
    eikonal_weight: NonNegative = 1e-4
    sdf_points_per_batch: Annotated[int, Interval(ge=1, le=1 << 22)] = 4096  # points of the SDF and eikonal
                                                                             # terms each step
    lr_decay: Positive = 1.0           # the lr falls exponentially to lr * lr_decay at the last step ...
    lr_decay_steps: Count = 0          # ... over the last this many steps (0: all of them)
    snapshot_every: Count = 0          # steps between progress pictures (snapshots/, a full-crop trace each:
                                       # ~10 s at 512 px on a 2-core CPU); 0: none
    max_seconds: NonNegative = 0.0     # wall-time budget for the stage's steps; 0 = none
    skip_pigment: bool = True          # no photometric rays on pigment spots (freckles, moles), found by their
                                       # colour (face/pigment.py): shading cannot make them, h would carve them
    pigment_threshold: Positive = 3.0  # a spot: melanin-like colour shift above this many robust std
    skip_features: bool = True         # no photometric rays on brows, eyes, lips (from the landmarks):
                                       # their colour is albedo a shading model would carve into the surface
    mlp: MLPDetailConfig = field(default_factory=MLPDetailConfig)
    height_map: HeightMapDetailConfig = field(default_factory=HeightMapDetailConfig)


@dataclass(frozen=True)
class MeshConfig:
    method: Literal["topology", "marching_cubes"] = "topology"  # mesh.ply: the coarse mesh subdivided to
                                       # export.edge_px and moved onto the zero set (mesh.obj's surface), or
                                       # marching cubes of the SDF in the coarse band (the paper's way)
    resolution: Annotated[int, Interval(ge=8, le=1024)] = 448  # marching-cubes samples along the longest box
                                       # side: 0.39 mm on a face's 175 mm box (1024: a 5 GB volume)
    chunk_points: Annotated[int, Interval(ge=1, le=1 << 24)] = 131072
    detail_band_mm: NonNegative = 5.0  # lattice + height map: the full SDF is evaluated only within this
                                       # of the lattice's surface, the lattice's sign stands further out
                                       # (details are ~1 mm); 0: everywhere in the band
    min_piece_fraction: Annotated[float, Interval(ge=0.0, le=1.0)] = 0.01  # pieces of mesh.ply with fewer
                                       # faces than this share of the largest are dropped (floating
                                       # islands along the rim and in the mouth slit); 0: all kept


@dataclass(frozen=True)
class ExportConfig:
    """The detailed mesh on the coarse topology, its UV maps and the OBJ / glTF files (fastsider/export/)."""

    topology: bool = True              # write them; false: mesh.ply and the pictures only (the keys below
                                       # up to fade_mm still shape mesh.ply when mesh.method = "topology")
    edge_px: Annotated[float, Interval(gt=0.0, le=64.0)] = 1.0  # target edge, working-crop pixels: the coarse
                                       # mesh is midpoint-subdivided until its median edge comes nearest
    max_faces: Annotated[int, Interval(ge=1, le=1 << 24)] = 1 << 20  # fewer subdivision levels beyond this
    newton_steps: Annotated[int, Interval(ge=1, le=100)] = 5  # steps of each vertex along its normal onto
                                       # the zero set, each at most 1 mm (the example: 3 leave 245 vertices
                                       # over 0.01 mm, 5 none)
    max_displacement_mm: Annotated[float, Interval(gt=0.0, le=50.0)] = 5.0  # |d| is clipped to this
    fade_mm: Annotated[float, Interval(ge=0.0, le=100.0)] = 2.0  # the displacement fades to 0 over this
                                       # distance towards what the camera does not see
    texture_size: Annotated[int, Interval(ge=64, le=8192)] = 1024  # texels per side of every map (1024:
                                       # ~0.2 mm texels on a face, 2 per working-crop pixel; 2048: 3x the time)
    uv_atlas: Literal["auto", "disk", "xatlas"] = "auto"  # auto: one harmonic chart for a disk-like mesh
                                       # (the default model), else xatlas (minutes on 58k faces)
    slim_iterations: Annotated[int, Interval(ge=0, le=100)] = 0  # passes of SLIM evening out the disk chart's
                                       # texel density (the nose: 1/7 of the mean -> ~1/2 after one, ~2 s)


@dataclass(frozen=True)
class RunConfig:
    """How a run is kept safe; not part of a checkpoint's config fingerprint."""

    checkpoint_every: AtLeastOne = 100  # optimizer steps between checkpoints (and one at each stage end)
    guard_every: AtLeastOne = 20        # steps between in-memory "last good" states for rollbacks
    max_rollbacks: Count = 4            # per stage; then stop with the last good state's mesh
    rollback_lr_factor: Annotated[float, Interval(gt=0.0, le=1.0)] = 0.5  # lr multiplier applied at each rollback
    explode_factor: Annotated[float, Gt(1.0)] = 20.0  # a loss this many times the recent median counts as
                                                      # divergence


@dataclass(frozen=True)
class FitConfig:
    seed: Annotated[int, Interval(ge=0, lt=1 << 63)] = 0  # torch and numpy take seeds in [0, 2^63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    image: ImageConfig = field(default_factory=ImageConfig)
    default_model: DefaultModelConfig = field(default_factory=DefaultModelConfig)
    flame: FlameFitConfig = field(default_factory=FlameFitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    shell: ShellConfig = field(default_factory=ShellConfig)
    sdf_pool: SdfPoolConfig = field(default_factory=SdfPoolConfig)
    stage1: CoarseStageConfig = field(default_factory=CoarseStageConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    stage2: DetailStageConfig = field(default_factory=DetailStageConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_fields(self)  # every key's type-level range and finiteness, named by its dotted key
        if self.model.detail == "mlp" and self.stage2.sdf_weight <= 0.0:
            raise ConfigError("model.detail = 'mlp' needs stage2.sdf_weight > 0 (the paper's 100; the "
                              "height map's anchor is stage2.height_map.sparsity)")
        if self.model.detail == "height_map" and self.shell.target != "signed":
            # the shell's two sheets would both move: h thickens the shell instead of displacing it
            raise ConfigError("model.detail = 'height_map' needs shell.target = 'signed'")


def inert_keys(cfg: FitConfig) -> dict[str, str]:
    """Config sections and keys that do nothing under ``cfg``'s choices, each with the reason.

    A dotted prefix stands for every key under it. ``load_config`` refuses them in a preset file and
    warns about them in ``--set`` overrides (a tool may pass the same overrides to both presets).
    """
    m = cfg.model
    out: dict[str, str] = {}
    if not m.has_geometry_mlp:
        out["model.geometry_mlp"] = "no geometry MLP is built (model.sdf and model.detail are not 'mlp')"
        out["stage1"] = "stage 1 fits a geometry MLP, and there is none (model.sdf = 'lattice')"
    elif m.sdf == "lattice":
        out["stage1"] = "the lattice is the coarse SDF from the start; the residual MLP starts at 0"
    if not m.has_rendering_mlp:
        out["model.rendering_mlp"] = "no rendering MLP is built (model.shading and model.albedo are not 'mlp')"
    if not (m.has_geometry_mlp or m.has_rendering_mlp):
        out["model.backend"] = "there is no MLP to implement"
    if m.sdf != "lattice":
        out["model.lattice"] = "model.sdf is not 'lattice'"
    if cfg.mesh.method != "marching_cubes":
        for key in ("resolution", "chunk_points", "detail_band_mm", "min_piece_fraction"):
            out[f"mesh.{key}"] = "mesh.method is not 'marching_cubes'"
    elif m.sdf != "lattice" or m.detail != "height_map":
        out["mesh.detail_band_mm"] = "only a height map on the lattice bounds where the SDF can change"
    if m.detail != "height_map":
        out["model.height_map"] = out["stage2.height_map"] = "model.detail is not 'height_map'"
    if m.detail != "mlp":
        out["stage2.mlp"] = "model.detail is not 'mlp'"
    if m.shading == "mlp":
        out["model.albedo"] = out["model.albedo_map"] = "model.shading = 'mlp' renders without an albedo"
    elif m.albedo != "map":
        out["model.albedo_map"] = "model.albedo is not 'map'"
    if m.shading != "albedo_directional":
        for key in ("model.light", "stage2.height_map.light_warmup_steps", "stage2.height_map.shadow_rays"):
            out[key] = "model.shading is not 'albedo_directional'"
    if m.shading != "albedo_directional" or cfg.stage2.height_map.shadow_rays == 0:
        out["stage2.height_map.shadow_cone_deg"] = out["stage2.height_map.shadow_use"] = "no shadow rays"
    if cfg.stage2.lr_decay == 1.0:
        out["stage2.lr_decay_steps"] = "stage2.lr_decay is 1 (no decay)"
    if cfg.shell.target != "shell":
        out["shell.thickness_mm"] = "shell.target is not 'shell'"
    if not cfg.stage2.skip_pigment:
        out["stage2.pigment_threshold"] = "stage2.skip_pigment is off"
    if cfg.stage2.height_map.raised == 0:
        out["stage2.height_map.raised_from_mm"] = "stage2.height_map.raised is 0 (no groove prior)"
    if not cfg.export.topology:
        keys = ("texture_size", "uv_atlas", "slim_iterations")
        if cfg.mesh.method != "topology":  # else mesh.ply is made with these
            keys += ("edge_px", "max_faces", "newton_steps", "max_displacement_mm", "fade_mm")
        for key in keys:
            out[f"export.{key}"] = "export.topology is off"
    elif cfg.export.uv_atlas == "xatlas":
        out["export.slim_iterations"] = "export.uv_atlas = 'xatlas' makes no disk chart"
    return out

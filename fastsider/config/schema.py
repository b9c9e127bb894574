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
from typing import Literal

from fastsider.errors import FastsiderError

Backend = Literal["auto", "torch", "tcnn"]
NormalMode = Literal["autograd", "finite_difference"]


class ConfigError(FastsiderError, ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class ImageConfig:
    resolution: int = 512          # working square crop, pixels
    crop_margin: float = 0.2       # extra border around the face box, fraction of its size
    min_face_px: int = 64          # faces smaller than this (box side, input pixels) are refused
    min_image_px: int = 64         # shorter image side below this is refused
    max_megapixels: float = 100.0  # larger images are refused (memory)


@dataclass(frozen=True)
class DefaultModelConfig:
    ipd_mm: float = 63.0           # mean adult inter-pupillary distance (Dodgson 2004: 63.4 mm)
    focal_factor: float = 4.0      # working focal length = focal_factor * resolution (px); ~14 deg FOV
    subdivisions: int = 3          # Loop subdivisions of the 468-point face mesh: at 3 (~1 mm edges, 29k
                                   # vertices) its limit surface is smooth; at 1 its triangles showed in
                                   # normals.png and were carved into every detailed mesh
    smooth_iterations: int = 5     # Taubin smoothing passes after subdivision


@dataclass(frozen=True)
class FlameFitConfig:
    n_shape: int = 100
    n_expression: int = 50
    iterations: int = 400
    lr: float = 0.02
    shape_prior: float = 1e-3      # weight of |beta|^2 (landmark loss is in px^2)
    expression_prior: float = 1e-3
    pose_prior: float = 1e-2       # weight of |jaw pose|^2
    focal_factor: float = 4.0      # same camera model as the default coarse model


@dataclass(frozen=True)
class EncodingConfig:
    otype: Literal["Frequency", "Identity"] = "Frequency"
    n_frequencies: int = 6


@dataclass(frozen=True)
class NetworkConfig:
    otype: Literal["FullyFusedMLP", "CutlassMLP", "VanillaMLP"] = "FullyFusedMLP"
    n_neurons: int = 64
    n_hidden_layers: int = 3
    activation: Literal["Softplus", "ReLU"] = "Softplus"
    output_activation: Literal["None", "Sigmoid"] = "None"
    # torch-only extras (the reference preset); the tcnn backend refuses them
    skip_layers: tuple[int, ...] = ()   # hidden layer indices that re-receive the encoded input
    softplus_beta: float = 100.0        # IDR's smooth ReLU
    geometric_init: bool = False        # IDR sphere init (geometry MLP only)


@dataclass(frozen=True)
class GeometryMLPConfig:
    """The geometry MLP f(phi(x)) -> (sdf, feature): built where model.sdf or model.detail is "mlp"."""

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    feature_dim: int = 16            # feature vector handed to the rendering MLP
    init_sphere_radius: float = 0.5  # geometric init radius, normalized units


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
    resolution: int = 256            # samples per box side; ~0.7 mm on a face

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ConfigError(f"model.lattice.resolution must be >= 2, got {self.resolution}")


@dataclass(frozen=True)
class HeightMapConfig:
    resolution: int = 256            # samples per side over the working crop; 0: one per crop pixel

    def __post_init__(self) -> None:
        if self.resolution == 1 or self.resolution < 0:
            raise ConfigError(f"model.height_map.resolution must be 0 or >= 2, got {self.resolution}")


@dataclass(frozen=True)
class AlbedoMapConfig:
    # a cell of ~7 mm holds skin blotches down to ~15 mm but not a 1-6 mm wrinkle, whose shading is
    # then left to the geometry
    resolution: int = 32             # B-spline control cells per side over the working crop

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ConfigError(f"model.albedo_map.resolution must be >= 2, got {self.resolution}")


@dataclass(frozen=True)
class LightConfig:
    """The one directional light of model.shading = "albedo_directional"."""

    shininess: float = 20.0          # initial Blinn-Phong exponent (learned)
    specular: bool = True            # learn a white sheen

    def __post_init__(self) -> None:
        if self.shininess <= 0:
            raise ConfigError(f"model.light.shininess must be > 0, got {self.shininess}")


@dataclass(frozen=True)
class ModelConfig:
    """What the model is made of; fastsider/model.py builds it, and only the parts chosen here."""

    backend: Backend = "auto"          # the MLPs' implementation
    normals: NormalMode = "autograd"   # tcnn forces finite differences (no double backward)
    fd_eps: float = 1e-3               # finite-difference step, normalized units
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
    thickness_mm: float = 1.0          # eps of the "shell" target
    box_margin: float = 0.15           # normalization box = coarse bbox grown by this fraction


@dataclass(frozen=True)
class CoarseStageConfig:
    """Stage 1: the geometry MLP fitted to the coarse SDF (model.sdf = "mlp")."""

    iterations: int = 1000
    batch_points: int = 8192
    lr: float = 5e-3
    lr_decay: float = 0.05             # lr falls exponentially to lr * lr_decay at the last step
    eikonal_weight: float = 1e-4
    max_seconds: float = 0.0           # wall-time budget for the stage's steps; 0 = none


@dataclass(frozen=True)
class SdfPoolConfig:
    """Points with their SDF_GT, drawn once: stage 1's batches and stage 2's SDF and eikonal terms."""

    size: int = 196608                 # 24 stage-1 batches of 8192
    near_std_mm: tuple[float, ...] = (0.3, 1.5, 8.0)  # Gaussian offsets of near-surface samples
    uniform_fraction: float = 0.1      # share of samples uniform in the box

    def __post_init__(self) -> None:
        if self.size < 1 or not self.near_std_mm or not 0.0 <= self.uniform_fraction < 1.0:
            raise ConfigError("sdf_pool: size >= 1, near_std_mm not empty, uniform_fraction in [0, 1)")


@dataclass(frozen=True)
class TraceConfig:
    max_steps: int = 48
    hit_eps: float = 1e-4              # |f| below this is a hit, normalized units
    secant_steps: int = 8
    use_occupancy_grid: bool = True
    grid_resolution: int = 64          # occupancy grid cells per box side
    grid_band_mm: float = 6.0          # cells within this distance of the coarse surface are kept


@dataclass(frozen=True)
class MLPDetailConfig:
    """Stage 2 with model.detail = "mlp": traced ray batches through the geometry MLP."""

    lr: float = 1e-4                   # the paper's; 3e-4 and up tore holes in the astronaut's surface
    rays_per_batch: int = 2048


@dataclass(frozen=True)
class HeightMapDetailConfig:
    """Stage 2 with model.detail = "height_map": its step size and priors."""

    lr: float = 0.02                   # Adam step size, mm: the albedo explains a fold's shading within tens
                                       # of steps while h must move ~1 mm
    light_warmup_steps: int = 200      # albedo_directional: steps fitting the light alone first (one albedo,
                                       # h = 0); started together, a fine albedo takes the large-scale shading
    smoothness: float = 0.1            # weight of h's mean squared Laplacian (mm^2)
    tv: float = 0.03                   # weight of h's total variation (mean |neighbour difference|, mm)
    sparsity: float = 0.4              # weight of h's log prior, mean of s log(1 + |h| / s) (mm): the L1 below
                                       # s, a log above: a deep fold costs little more than a shallow one, a
                                       # wide sheet of noise its area
    sparsity_mm: float = 0.01          # s, where the prior turns from L1 to log
    scatter_mm: float = 0.0            # the rendered colour is blurred by a Gaussian of this sigma on the skin
                                       # (subsurface scattering) before the photometric loss; 0: sharp
    debias_steps: int = 200            # the last this many steps lift the sparsity and TV priors on the details
                                       # found (|h| > debias_threshold_mm, grown by debias_grow_cells), giving
                                       # back the depth the priors shrank. 0 or >= iterations: off. Counted from
                                       # stage2.iterations: a max_seconds stop before then skips it
    debias_threshold_mm: float = 0.12
    debias_grow_cells: int = 2

    def __post_init__(self) -> None:
        if self.sparsity_mm <= 0.0:
            raise ConfigError(f"stage2.height_map.sparsity_mm must be > 0, got {self.sparsity_mm}")
        if self.debias_steps < 0 or self.debias_threshold_mm <= 0.0 or self.debias_grow_cells < 0:
            raise ConfigError("stage2.height_map.debias_steps and debias_grow_cells must be >= 0, "
                              "debias_threshold_mm > 0")


@dataclass(frozen=True)
class DetailStageConfig:
    """Stage 2, either detail; the carrier's own keys are in ``mlp`` and ``height_map``."""

    iterations: int = 600
    appearance_lr: float = 0.02        # Adam step size of the rendering side (light, albedo map, rendering MLP)
    color_weight: float = 1.0
    sdf_weight: float = 0.0            # |f - SDF_GT| in metres (sdf/losses.py); the paper's 100 (reference).
                                       # On a height map an L1 on h, costing a fold as much per mm as noise:
                                       # the height map is anchored by height_map.sparsity instead
    eikonal_weight: float = 1e-4
    sdf_points_per_batch: int = 4096   # points of the SDF and eikonal terms each step
    lr_decay: float = 1.0              # the lr falls exponentially to lr * lr_decay at the last step ...
    lr_decay_steps: int = 0            # ... over the last this many steps (0: all of them)
    snapshot_every: int = 0            # steps between progress pictures (snapshots/, a full-crop trace each:
                                       # ~10 s at 512 px on a 2-core CPU); 0: none
    max_seconds: float = 0.0           # wall-time budget for the stage's steps; 0 = none
    skip_pigment: bool = True          # no photometric rays on pigment spots (freckles, moles), found by their
                                       # colour (face/pigment.py): shading cannot make them, h would carve them
    pigment_threshold: float = 3.0     # a spot: melanin-like colour shift above this many robust std
    skip_features: bool = True         # no photometric rays on brows, eyes, lips (from the landmarks):
                                       # their colour is albedo a shading model would carve into the surface
    mlp: MLPDetailConfig = field(default_factory=MLPDetailConfig)
    height_map: HeightMapDetailConfig = field(default_factory=HeightMapDetailConfig)


@dataclass(frozen=True)
class MeshConfig:
    resolution: int = 448              # marching-cubes samples along the longest box side: 0.39 mm on a
                                       # face's 175 mm box
    chunk_points: int = 131072
    detail_band_mm: float = 5.0        # lattice + height map: the full SDF is evaluated only within this
                                       # of the lattice's surface, the lattice's sign stands further out
                                       # (details are ~1 mm); 0: everywhere in the band

    def __post_init__(self) -> None:
        if self.detail_band_mm < 0.0:
            raise ConfigError(f"mesh.detail_band_mm must be >= 0, got {self.detail_band_mm}")


@dataclass(frozen=True)
class RunConfig:
    """How a run is kept safe; not part of a checkpoint's config fingerprint."""

    checkpoint_every: int = 100        # optimizer steps between checkpoints (and one at each stage end)
    guard_every: int = 20              # steps between in-memory "last good" states for rollbacks
    max_rollbacks: int = 4             # per stage; then stop with the last good state's mesh
    rollback_lr_factor: float = 0.5    # lr multiplier applied at each rollback
    explode_factor: float = 20.0       # a loss this many times the recent median counts as divergence


@dataclass(frozen=True)
class FitConfig:
    seed: int = 0
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
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
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
    if m.sdf != "lattice" or m.detail != "height_map":
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
        out["model.light"] = out["stage2.height_map.light_warmup_steps"] = "model.shading is not 'albedo_directional'"
    if cfg.stage2.lr_decay == 1.0:
        out["stage2.lr_decay_steps"] = "stage2.lr_decay is 1 (no decay)"
    if cfg.shell.target != "shell":
        out["shell.thickness_mm"] = "shell.target is not 'shell'"
    if not cfg.stage2.skip_pigment:
        out["stage2.pigment_threshold"] = "stage2.skip_pigment is off"
    return out

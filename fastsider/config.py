"""One typed config schema for every stage and both network backends.

Frozen dataclasses, loaded from ``configs/*.toml`` (stdlib ``tomllib``) and overridden from the
command line with dotted keys (``stage2.iterations=50``). The defaults *are* the fast preset;
``configs/fast.toml`` spells them out and a test keeps the two equal.

Network fields use tiny-cuda-nn's vocabulary where it has one (``otype``, ``n_neurons``,
``n_hidden_layers``, ``activation``, ``n_frequencies``); skip layers, softplus beta and
geometric init are torch-only extras that the tcnn backend refuses rather than ignores.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastsider.errors import FastsiderError

PRESET_DIR = Path(__file__).resolve().parent / "configs"

Backend = Literal["auto", "torch", "tcnn"]
NormalMode = Literal["autograd", "finite_difference"]
CoarseSource = Literal["default", "flame", "mesh"]


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
    subdivisions: int = 1          # loop subdivisions of the 468-point face mesh
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
    geometric_init: bool = False        # IDR sphere init (geometry net only)


@dataclass(frozen=True)
class GeometryNetConfig:
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(n_neurons=64, n_hidden_layers=3)
    )
    feature_dim: int = 16            # feature vector handed to the rendering net
    init_sphere_radius: float = 0.5  # geometric init radius, normalized units
    # "none" (reference): the paper's plain MLP, which stage 1 fits to the coarse SDF.
    # "coarse_grid" (fast): f(x) = coarse SDF on a lattice (trilinear) + the MLP, whose SDF output
    # starts at exactly zero (sdf/base_grid.py): no stage-1 steps, and the coarse shape is kept to
    # ~0.005 mm where stage 2 does not move it
    base: Literal["none", "coarse_grid"] = "coarse_grid"
    base_resolution: int = 256       # lattice samples per box side ("coarse_grid"); ~0.7 mm on a face
    # What stage 2 optimizes for the detail. "mlp" (reference, the paper): the geometry MLP itself.
    # "height_map" (fast): a displacement map over the crop subtracted from the stage-1 SDF
    # (nn/height_map.py), on every face ray each step; the MLP is frozen after stage 1. On the
    # synthetic faces it is the setting that lowers the wrinkle regions' error (README).
    # Needs shell.target = "signed".
    detail: Literal["mlp", "height_map"] = "height_map"
    height_map_resolution: int = 256  # samples per side of the height map; 0: one per working-crop pixel


@dataclass(frozen=True)
class RenderingNetConfig:
    # fast preset: albedo_directional with a 32-cell albedo grid (below). Where the MLP renders (shading
    # "mlp", or the albedo MLP with albedo_resolution 0), x enters it un-encoded and without the
    # feature vector, so it cannot paint shading in as high-frequency albedo and must explain it
    # through normals (an encoded x reaches 33 dB on the synthetic faces but paints the bump's
    # shading into albedo: tests/test_stages.py's bump test fails with it)
    encoding: EncodingConfig = field(default_factory=lambda: EncodingConfig(n_frequencies=0))
    view_encoding: EncodingConfig = field(default_factory=lambda: EncodingConfig(n_frequencies=2))
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(
            n_neurons=64, n_hidden_layers=2, activation="ReLU", output_activation="Sigmoid"
        )
    )
    use_feature: bool = False        # paper Fig. 4 ablation switches (reference: both on)
    use_normal: bool = True
    use_position: bool = True        # false: no x input (one albedo for the whole face)
    use_view: bool = True            # false: no view-direction input (one camera: v is the pixel,
                                     # through which the net could paint shading it should get from n)
    # "mlp": the paper's g(x, n, v, feature) -> rgb. The others: rgb = albedo(x) x a learned light of
    # the normal (nn/shading.py), so the network can only make a wrinkle's shading through the normal,
    # as long as the albedo's frequencies stay below it. "albedo_sh": a 2nd-order spherical-harmonics
    # light per channel (smooth environment light). "albedo_directional": one distant light + ambient,
    # Lambertian, with a white Blinn-Phong sheen. Under one dominant light SH2 cannot make the
    # clamped cosine nor the highlight, and the height map bends the whole face to make up for it:
    # on synthetic case 0 the directional light leaves 25% less error in h outside the wrinkles, and
    # with the true albedo 60% less than SH2 (README)
    shading: Literal["mlp", "albedo_sh", "albedo_directional"] = "albedo_directional"
    shininess: float = 20.0          # albedo_directional: initial Blinn-Phong exponent (learned)
    specular: bool = True            # albedo_directional: learn a white sheen
    # albedo x light only: > 0 takes the albedo from an RGB grid of this many cells per side over the
    # working crop (nn/height_map.py, a cubic B-spline) instead of the MLP. A cell of ~7 mm holds
    # skin blotches down to ~15 mm but not a 1-6 mm wrinkle, whose shading is then left to the geometry (coarser
    # cells push the blotches they miss into the geometry as mid-scale noise). 0: the MLP's albedo
    albedo_resolution: int = 32

    def __post_init__(self) -> None:
        if self.shading != "mlp" and not self.use_normal:
            raise ConfigError(f"model.rendering.shading = {self.shading!r} needs use_normal = true")
        if self.albedo_resolution and self.shading == "mlp":
            raise ConfigError("model.rendering.albedo_resolution needs an albedo x light shading, not 'mlp'")
        if self.shininess <= 0:
            raise ConfigError(f"model.rendering.shininess must be > 0, got {self.shininess}")
        if self.albedo_resolution == 1 or self.albedo_resolution < 0:
            raise ConfigError(f"model.rendering.albedo_resolution must be 0 or >= 2, got {self.albedo_resolution}")


@dataclass(frozen=True)
class ModelConfig:
    backend: Backend = "auto"
    normals: NormalMode = "autograd"   # tcnn forces finite differences (no double backward)
    fd_eps: float = 1e-3               # finite-difference step, normalized units
    geometry: GeometryNetConfig = field(default_factory=GeometryNetConfig)
    rendering: RenderingNetConfig = field(default_factory=RenderingNetConfig)


@dataclass(frozen=True)
class ShellConfig:
    # signed (fast preset): pseudonormal signed distance, no thin sheet to tear; on the synthetic
    # benchmark 3x lower scan-to-mesh and 4x lower normal error than the paper's shell, no holes
    target: Literal["shell", "signed"] = "signed"
    thickness_mm: float = 1.0          # eps: SDF_GT = dist(x, mesh) - eps/2 (target "shell")
    box_margin: float = 0.15           # normalization box = coarse bbox grown by this fraction


@dataclass(frozen=True)
class CoarseStageConfig:
    iterations: int = 1000           # unused with model.geometry.base = "coarse_grid" (fast preset)
    batch_points: int = 8192
    lr: float = 5e-3
    lr_decay: float = 0.05             # lr falls exponentially to lr * lr_decay at the last step
    eikonal_weight: float = 1e-4
    near_std_mm: tuple[float, ...] = (0.3, 1.5, 8.0)  # Gaussian offsets of near-surface samples
    uniform_fraction: float = 0.1      # share of samples uniform in the box
    max_seconds: float = 0.0           # wall-time budget for the stage's steps; 0 = none
    active_frequencies: float = 0.0    # geometry encoding frequencies used in stage 1 (coarse-to-fine); 0 = all


@dataclass(frozen=True)
class TraceConfig:
    max_steps: int = 48
    hit_eps: float = 1e-4              # |f| below this is a hit, normalized units
    secant_steps: int = 8
    use_occupancy_grid: bool = True
    grid_resolution: int = 64
    grid_band_mm: float = 6.0          # cells within this distance of the coarse surface are kept


@dataclass(frozen=True)
class DetailStageConfig:
    iterations: int = 600
    rays_per_batch: int = 2048         # the mlp detail; a height map takes every face ray each step
    lr: float = 1e-4                   # paper; 3e-4 and up tore holes in the astronaut's surface
    color_weight: float = 1.0
    sdf_weight: float = 0.0            # the paper's is 100 (reference preset); the term is in metres
                                       # (sdf/losses.py). On a height map it is an L1 on h, which costs a
                                       # fold as much per mm as the noise it is there to stop: the fast
                                       # preset anchors h with height_sparsity instead. The MLP detail
                                       # needs it (low weights shred real photos): keep 100 there
    eikonal_weight: float = 1e-4
    sdf_points_per_batch: int = 4096
    snapshot_every: int = 0            # steps between progress snapshots (snapshots/, a full-crop trace each:
                                       # ~10 s at 512 px on a 2-core CPU); 0: none
    max_seconds: float = 0.0           # wall-time budget for the stage's steps; 0 = none
    anneal_iterations: int = 0         # steps over which the remaining geometry frequencies fade in
    rendering_lr_factor: float = 200.0  # the rendering net's lr = lr x this (it starts from scratch here)
    height_lr: float = 0.02            # height map (model.geometry.detail): Adam step size, mm. The albedo
                                       # explains a fold's shading within tens of steps; h must move ~1 mm.
                                       # Tuning seeds 10-13: wrinkle scan-to-mesh -30.3% at 0.01, -32.7% at
                                       # 0.02, -31.3% at 0.04 (more noise)
    light_warmup_steps: int = 200      # albedo_directional on a height map: steps fitting the light alone
                                       # (one albedo for the face, h = 0) first. Started together, a fine
                                       # albedo takes the large-scale shading before the light has moved
    height_smoothness: float = 0.1     # weight of the height map's mean squared Laplacian (mm^2)
    height_tv: float = 0.03            # weight of its total variation (mean |neighbour difference|, mm): less
                                       # noise for a little of the wrinkles' depth; with the log prior below
                                       # holding the noise, 0.03 keeps more depth than 0.1 (README)
    height_sparsity: float = 0.4       # weight of the height map's log prior, mean of s log(1 + |h| / s) (mm):
                                       # the L1 below s, a log above it. Wrinkles are sparse: a deep fold costs
                                       # little more than a shallow one, a wide sheet of noise its area. On
                                       # synthetic case 0 it beats the L1 at every weight (README)
    height_sparsity_mm: float = 0.01   # s, where the prior turns from L1 to log
    debias_steps: int = 200            # height map: the last this many steps lift the sparsity and TV priors
                                       # on the details found (|h| > debias_threshold_mm, grown by
                                       # debias_grow_cells): they give back the depth the priors shrank.
                                       # 0 or >= iterations: off. Counted from `iterations`: a max_seconds
                                       # stop before then skips it
    debias_threshold_mm: float = 0.12  # 0.08 let 13% more noise through at the same depth (tuning seeds 10-13)
    debias_grow_cells: int = 2
    lr_decay: float = 1.0              # the lr falls exponentially to lr * lr_decay at the last step ...
    lr_decay_steps: int = 0            # ... over the last this many steps (0: all of them). Tuning seeds 10-13,
                                       # 0.1 over the last 200: less Adam jitter in h (face scan-to-mesh 1.2 and
                                       # normals 1.9 points lower) for less depth (wrinkles 1.8 points higher)
    skip_pigment: bool = True          # no photometric rays on pigment spots (freckles, moles), found by their
                                       # colour (face/pigment.py): shading cannot make them, h would carve them
    pigment_threshold: float = 3.0     # a spot: melanin-like colour shift above this many robust std. Tuning
                                       # seeds 10-13, wrinkle scan-to-mesh: -35.1% at 4, -36.2% at 3, -35.5% at 2.5
    skip_features: bool = True         # no photometric rays on brows, eyes, lips (from the landmarks):
                                       # their colour is albedo a shading model would carve into the surface

    def __post_init__(self) -> None:
        if self.height_sparsity_mm <= 0.0:
            raise ConfigError(f"stage2.height_sparsity_mm must be > 0, got {self.height_sparsity_mm}")
        if self.debias_steps < 0 or self.debias_threshold_mm <= 0.0 or self.debias_grow_cells < 0:
            raise ConfigError("stage2.debias_steps and debias_grow_cells must be >= 0, debias_threshold_mm > 0")


@dataclass(frozen=True)
class MeshConfig:
    resolution: int = 448              # marching-cubes samples along the longest box side: 0.39 mm on a
                                       # face's 175 mm box. 320 (0.55 mm) left 5.5% more face-wide normal
                                       # error (tuning seeds 10-13) for 10 s less a fit
    chunk_points: int = 131072
    detail_band_mm: float = 5.0        # lattice base + height map: the full SDF is evaluated
                                       # only within this of the lattice's surface, the lattice's sign stands
                                       # further out (details are ~1 mm); 0: everywhere in the band

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
    stage1: CoarseStageConfig = field(default_factory=CoarseStageConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    stage2: DetailStageConfig = field(default_factory=DetailStageConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.model.geometry.detail == "mlp" and self.stage2.sdf_weight <= 0.0:
            raise ConfigError("model.geometry.detail = 'mlp' needs stage2.sdf_weight > 0 (the paper's 100; the "
                              "height map's anchor is stage2.height_sparsity)")
        if self.model.geometry.detail == "height_map" and self.shell.target != "signed":
            # the shell's two sheets would both move: h thickens the shell instead of displacing it
            raise ConfigError("model.geometry.detail = 'height_map' needs shell.target = 'signed'")


# --------------------------------------------------------------------------------------------
# loading, merging, overriding


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert TOML types (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for TOML/JSON output."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"stage2.iterations=50"`` -> ``{"stage2": {"iterations": 50}}`` (value parsed as TOML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: backend=torch
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return node


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (``fast``, ``reference``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = PRESET_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(q.stem for q in PRESET_DIR.glob("*.toml"))
        raise ConfigError(f"unknown preset {name_or_path!r}; known: {known}")
    return candidate


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FitConfig:
    """Defaults <- preset TOML <- ``KEY=VALUE`` overrides, validated against the schema."""
    data: dict[str, Any] = to_dict(FitConfig())
    if preset is not None:
        path = resolve_preset(preset)
        try:
            data = _deep_merge(data, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    return _from_dict(FitConfig, data)

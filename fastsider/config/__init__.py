"""One typed config schema for every stage and both network backends (``schema``), and how a
preset and ``--set`` overrides become one validated :class:`FitConfig` (``loading``).

Import from here: this face re-exports both."""
# ruff: noqa: F401

from fastsider.config.loading import PRESET_DIR, load_config, parse_override, resolve_preset, to_dict
from fastsider.config.schema import (
    AlbedoMapConfig,
    Backend,
    CoarseStageConfig,
    ConfigError,
    DefaultModelConfig,
    DetailStageConfig,
    EncodingConfig,
    ExportConfig,
    FitConfig,
    FlameFitConfig,
    GeometryMLPConfig,
    HeightMapConfig,
    HeightMapDetailConfig,
    ImageConfig,
    LatticeConfig,
    LightConfig,
    MeshConfig,
    MLPDetailConfig,
    ModelConfig,
    NetworkConfig,
    NormalMode,
    RenderingMLPConfig,
    RunConfig,
    SdfPoolConfig,
    ShellConfig,
    TraceConfig,
    inert_keys,
)

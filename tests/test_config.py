"""The config (fastsider.config): presets, `--set` overrides, keys that do nothing refused in a
preset and warned about in an override, and the choices a preset makes or refuses."""

from __future__ import annotations

import pytest

from fastsider.config import ConfigError, FitConfig, load_config


def test_config_presets_and_overrides(tmp_path):
    assert load_config("fast") == FitConfig()  # the defaults are the fast preset
    ref = load_config("reference", ["stage2.iterations=7", "model.backend=torch"])
    assert ref.model.geometry_mlp.network.n_neurons == 512 and ref.model.geometry_mlp.network.skip_layers == (4,)
    assert ref.stage2.iterations == 7 and ref.trace.use_occupancy_grid is False


@pytest.mark.parametrize("preset", ["fast", "reference"])
def test_every_preset_key_differs_from_the_default_and_does_something(preset):
    import tomllib

    from fastsider.config import PRESET_DIR, inert_keys, to_dict
    from fastsider.config.loading import _leaf_keys

    data = tomllib.loads((PRESET_DIR / f"{preset}.toml").read_text())
    cfg, defaults = load_config(preset), to_dict(FitConfig())
    inert = inert_keys(cfg)
    for key in _leaf_keys(data):
        default = defaults
        for part in key.split("."):
            default = default[part]
        value = data
        for part in key.split("."):
            value = value[part]
        assert value != default, f"{preset}: {key} restates the default"
        assert not any(key == p or key.startswith(p + ".") for p in inert), f"{preset}: {key} does nothing"


def test_a_key_that_does_nothing_is_refused_in_a_preset_and_warned_about_in_an_override(tmp_path, caplog):
    from fastsider.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[stage2.mlp]\nrays_per_batch = 512\n')  # the default carries the detail in a height map
    with pytest.raises(ConfigError, match="stage2.mlp.rays_per_batch does nothing in this preset"):
        load_config(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\ndetail = "mlp"\n[stage2]\nsdf_weight = 100.0\n[stage2.mlp]\nrays_per_batch = 512\n')
    assert load_config(ok).stage2.mlp.rays_per_batch == 512
    with caplog.at_level("WARNING", logger="fastsider.config"):
        cfg = load_config(None, ["model.height_map.resolution=64", "stage1.iterations=5"])
    assert cfg.stage1.iterations == 5 and "stage1.iterations does nothing here" in caplog.text
    assert "height_map.resolution" not in caplog.text  # it does something in the default path
    with caplog.at_level("WARNING", logger="fastsider.config"):
        load_config(None, ["stage2.height_map.raised=0", "stage2.height_map.raised_from_mm=0.1"])
    assert "stage2.height_map.raised_from_mm does nothing here" in caplog.text


def test_height_map_needs_the_signed_target():
    with pytest.raises(ConfigError, match="signed"):
        load_config(None, ["model.detail=height_map", "shell.target=shell"])


def test_reference_preset_has_no_lattice():
    from fastsider.config import load_config

    assert load_config("reference").model.sdf == "mlp"
    assert load_config("fast").model.sdf == "lattice"


def test_every_numeric_key_declares_its_range():
    import dataclasses
    import typing

    def numeric_leaves(cls, prefix=""):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from numeric_leaves(tp, f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is not typing.Literal and (
                    tp in (int, float) or typing.get_origin(tp) in (typing.Annotated, tuple)):
                yield f"{prefix}{f.name}", typing.get_origin(tp) is typing.Annotated or (
                    typing.get_origin(tp) is tuple and typing.get_origin(typing.get_args(tp)[0]) is typing.Annotated)
    unchecked = [k for k, ranged in numeric_leaves(FitConfig) if not ranged]
    assert not unchecked, f"numeric config keys without a range: {unchecked}"


def test_a_value_out_of_range_or_not_finite_names_its_key():
    with pytest.raises(ConfigError, match=r"^mesh.resolution must be >= 8 and <= 1024, got 4096$"):
        load_config(None, ["mesh.resolution=4096"])
    with pytest.raises(ConfigError, match=r"^stage2.height_map.lr must be a finite number, got nan$"):
        load_config(None, ["stage2.height_map.lr=nan"])  # finiteness reaches every section
    with pytest.raises(ConfigError, match=r"^sdf_pool.near_std_mm\[0\] must be > 0, got -1.0$"):
        load_config(None, ["sdf_pool.near_std_mm=[-1.0]"])

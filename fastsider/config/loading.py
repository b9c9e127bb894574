"""Loading a config: defaults <- preset TOML (``configs/*.toml``, stdlib ``tomllib``) <- ``--set``
overrides with dotted keys (``stage2.iterations=50``), each value checked against the schema.

A preset file lists only what differs from the defaults, and no key that does nothing under its
choices (:func:`fastsider.config.schema.inert_keys`).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

import tomllib

from fastsider.config.schema import ConfigError, FitConfig, inert_keys

log = logging.getLogger("fastsider.config")

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


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
        if not p.is_file():  # missing, a folder, or a pipe (whose read would block)
            raise ConfigError(f"config file not found or not a regular file: {p}")
        return p
    candidate = PRESET_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(q.stem for q in PRESET_DIR.glob("*.toml"))
        raise ConfigError(f"unknown preset {name_or_path!r}; known: {known}")
    return candidate


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the leaves of a nested dict."""
    out: list[str] = []
    for k, v in data.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _inert_given(cfg: FitConfig, given: list[str]) -> list[tuple[str, str]]:
    """The keys of ``given`` that do nothing under ``cfg``, with the reason."""
    inert = inert_keys(cfg)
    found = []
    for key in given:
        for prefix, why in inert.items():
            if key == prefix or key.startswith(prefix + "."):
                found.append((key, why))
                break
    return found


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FitConfig:
    """Defaults <- preset TOML <- ``KEY=VALUE`` overrides, validated against the schema.

    A preset key that does nothing under the preset's own choices (:func:`inert_keys`) is an error;
    such an override is logged as a warning and kept.
    """
    data: dict[str, Any] = to_dict(FitConfig())
    if preset is not None:
        path = resolve_preset(preset)
        try:
            preset_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        data = _deep_merge(data, preset_data)
        for key, why in _inert_given(_from_dict(FitConfig, data), _leaf_keys(preset_data)):
            raise ConfigError(f"{path}: {key} does nothing in this preset: {why}")
    override_keys: list[str] = []
    for text in overrides:
        over = parse_override(text)
        override_keys += _leaf_keys(over)
        data = _deep_merge(data, over)
    cfg = _from_dict(FitConfig, data)
    for key, why in _inert_given(cfg, override_keys):
        log.warning("--set %s does nothing here: %s", key, why)
    return cfg

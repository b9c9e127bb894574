"""Checkpoints of a fit: stage state saved atomically, refused when config or input differ."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from fastsider import __version__
from fastsider.config import FitConfig, to_dict
from fastsider.errors import FastsiderError, InputError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("stage", "model", "optim", "generator", "loop")  # what stages.loop saves (+ stage1_result)
# config sections that change how a run is kept, not what it computes: a checkpoint survives them
UNHASHED_SECTIONS = ("run",)


class CheckpointError(FastsiderError):
    """A checkpoint that cannot be used for this run."""


def config_hash(cfg: FitConfig, device_type: str = "") -> str:
    """Fingerprint of what a run computes; the resolved device type is part of it (RNG states and
    float results differ between CPU and CUDA, so a checkpoint does not move across)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in UNHASHED_SECTIONS}
    data["device_type"] = device_type
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror}") from None
    return h.hexdigest()[:16]


def inputs_hash(named_files: Iterable[tuple[str, str | Path | None]]) -> str:
    """One hash over the input files that exist (photo, landmarks, meshes ...); None entries are names only."""
    h = hashlib.sha256()
    for name, path in named_files:
        h.update(name.encode())
        h.update((file_hash(path) if path is not None else "-").encode())
    return h.hexdigest()[:16]


class CheckpointStore:
    """One checkpoint file in a folder, replaced atomically (write to a temp name, then rename)."""

    def __init__(self, folder: Path, cfg_hash: str, input_hash: str):
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_NAME
        self.fingerprint = {"config": cfg_hash, "input": input_hash}

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # serialized in memory, then written: torch.save's own writer reports a full disk as a RuntimeError
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "fastsider": __version__, **state}, buffer)
        tmp.write_bytes(buffer.getbuffer())
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any]:
        """The saved state, after checking it was made by this config on this input."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated or foreign file
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from None
        saved = state.get("fingerprint", {})
        for what in ("config", "input"):
            if saved.get(what) != self.fingerprint[what]:
                raise CheckpointError(
                    f"checkpoint {self.path} was made with a different {what}; "
                    f"rerun without --resume to start over")
        stage = state.get("stage")
        needed = REQUIRED_KEYS + (("stage1_result",) if stage == "stage2" else ())
        if stage not in ("stage1", "stage2") or not all(k in state for k in needed):
            raise CheckpointError(f"checkpoint {self.path} is incomplete; rerun without --resume to start over")
        return state

    def check_model(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        """Refuse a checkpoint whose tensors do not fit ``model`` (names and shapes), before any is loaded."""
        saved, own = state["model"], model.state_dict()
        bad = sorted(set(saved) ^ set(own)) or sorted(k for k in own if tuple(saved[k].shape) != tuple(own[k].shape))
        if bad:
            raise CheckpointError(f"checkpoint {self.path} does not fit this run's model ({len(bad)} tensor(s) "
                                  f"differ, e.g. {bad[0]}); rerun without --resume to start over")

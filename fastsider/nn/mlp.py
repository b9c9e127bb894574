"""MLPs described by one config (tiny-cuda-nn vocabulary), built by ``make_mlp`` for a backend.

``torch``: runs every config on any device, incl. skip connections, softplus beta and IDR's
geometric init. ``tcnn``: tiny-cuda-nn's fused MLP on CUDA (see ``nn/_tcnn.py``); it refuses the
torch-only options instead of ignoring them.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import Tensor

from fastsider.config import NetworkConfig
from fastsider.errors import FastsiderError

log = logging.getLogger(__name__)

GEOMETRIC_INIT_STD = 1e-4   # IDR: std of the last layer around its mean (keeps the sphere exact)
N_RAW_INPUTS = 3            # geometric init lets only the raw xyz through the first layer


def resolve_backend(requested: Literal["auto", "torch", "tcnn"], device: torch.device,
                    networks: tuple[NetworkConfig, ...] = ()) -> str:
    """``auto`` -> tcnn when it imports, the device is CUDA and tcnn can run all ``networks`` (else
    torch, logged); an explicit tcnn must work and raises otherwise."""
    from fastsider.nn._tcnn import check_tcnn_config, tcnn_available

    if requested == "torch":
        return "torch"
    ok = device.type == "cuda" and tcnn_available()
    if requested == "tcnn" and not ok:
        raise FastsiderError("backend 'tcnn' requested but tinycudann is not importable on a CUDA device")
    if ok and requested == "auto":
        try:
            for net in networks:
                check_tcnn_config(net)
        except FastsiderError as exc:
            log.info("backend auto: torch, since %s", exc)
            return "torch"
    return "tcnn" if ok else "torch"


class TorchMLP(torch.nn.Module):
    """Plain MLP with optional IDR skip connections and geometric (sphere) init."""

    def __init__(self, n_in: int, n_out: int, cfg: NetworkConfig, sphere_radius: float | None = None):
        super().__init__()
        self.skip_layers = set(cfg.skip_layers)
        dims = [n_in] + [cfg.n_neurons] * cfg.n_hidden_layers + [n_out]
        self.layers = torch.nn.ModuleList()
        for i in range(len(dims) - 1):
            d_in = dims[i] + (n_in if (i in self.skip_layers and i > 0) else 0)
            self.layers.append(torch.nn.Linear(d_in, dims[i + 1]))
        self.act = torch.nn.Softplus(beta=cfg.softplus_beta) if cfg.activation == "Softplus" else torch.nn.ReLU()
        self.out_act = torch.nn.Sigmoid() if cfg.output_activation == "Sigmoid" else torch.nn.Identity()
        if cfg.geometric_init:
            self._geometric_init(n_in, sphere_radius if sphere_radius is not None else 0.5)

    def _geometric_init(self, n_in: int, radius: float) -> None:
        """IDR init: output ~ |x| - radius at start (outputs after the first are features)."""
        last = len(self.layers) - 1
        for i, lin in enumerate(self.layers):
            fan_out = lin.out_features
            if i == last:
                torch.nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(lin.in_features), std=GEOMETRIC_INIT_STD)
                torch.nn.init.constant_(lin.bias, -radius)
                continue
            torch.nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(fan_out))
            torch.nn.init.constant_(lin.bias, 0.0)
            if i == 0:
                lin.weight.data[:, N_RAW_INPUTS:n_in] = 0.0
            elif i in self.skip_layers:
                lin.weight.data[:, -(n_in - N_RAW_INPUTS):] = 0.0

    def forward(self, x: Tensor) -> Tensor:  # [n_pts, n_in] -> [n_pts, n_out]
        h = x
        last = len(self.layers) - 1
        for i, lin in enumerate(self.layers):
            if i in self.skip_layers and i > 0:
                h = torch.cat([h, x], dim=-1) / math.sqrt(2.0)
            h = lin(h)
            if i < last:
                h = self.act(h)
        return self.out_act(h)


def make_mlp(n_in: int, n_out: int, cfg: NetworkConfig, backend: str, sphere_radius: float | None = None) -> torch.nn.Module:
    """The one factory for MLPs: ``backend`` is a resolved backend ("torch" or "tcnn")."""
    if backend == "tcnn":
        from fastsider.nn._tcnn import TcnnMLP

        return TcnnMLP(n_in, n_out, cfg)
    return TorchMLP(n_in, n_out, cfg, sphere_radius)

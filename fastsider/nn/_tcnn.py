"""The only module that imports tinycudann (lazily). Fused MLPs on CUDA, float32 at the boundary."""

from __future__ import annotations

import functools

import torch

from fastsider.config import NetworkConfig
from fastsider.errors import FastsiderError

TCNN_WIDTHS = (16, 32, 64, 128)  # FullyFusedMLP supports only these
TCNN_SOFTPLUS_BETA = 10.0        # tcnn's Softplus is log(1 + exp(10 x)) / 10 (K_ACT = 10 in common_device.h)


@functools.lru_cache(maxsize=1)
def tcnn_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a build for another GPU/CUDA
        return False
    return True


def check_tcnn_config(cfg: NetworkConfig) -> None:
    """Refuse what tcnn cannot do instead of silently doing something else."""
    if cfg.skip_layers:
        raise FastsiderError("tcnn backend: skip_layers are torch-only (use backend=torch)")
    if cfg.geometric_init:
        raise FastsiderError("tcnn backend: geometric_init is torch-only (use backend=torch)")
    if cfg.activation == "Softplus" and cfg.softplus_beta != TCNN_SOFTPLUS_BETA:
        raise FastsiderError(f"tcnn backend: Softplus has a fixed beta of {TCNN_SOFTPLUS_BETA:g}, config asks for {cfg.softplus_beta}")
    if cfg.otype == "FullyFusedMLP" and cfg.n_neurons not in TCNN_WIDTHS:
        raise FastsiderError(f"tcnn FullyFusedMLP needs n_neurons in {TCNN_WIDTHS}, got {cfg.n_neurons}")


class TcnnMLP(torch.nn.Module):
    """tcnn.Network with the same config and float32 in/out as ``TorchMLP``. No double backward."""

    def __init__(self, n_in: int, n_out: int, cfg: NetworkConfig):
        super().__init__()
        check_tcnn_config(cfg)
        import tinycudann as tcnn

        self.net = tcnn.Network(n_in, n_out, {
            "otype": cfg.otype,
            "activation": cfg.activation,
            "output_activation": cfg.output_activation,
            "n_neurons": cfg.n_neurons,
            "n_hidden_layers": cfg.n_hidden_layers,
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous()).float()

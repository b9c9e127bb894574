"""Frequency (positional) encoding, in tiny-cuda-nn's definition plus the raw input.

enc(x) = [x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^(F-1) pi x), cos(2^(F-1) pi x)]

The raw input comes first so IDR's geometric init can see x directly (tcnn: Composite of
Identity + Frequency gives the same features, in its own order).

Coarse-to-fine: ``set_active(alpha)`` weighs frequency k by w_k = (1 - cos(pi clamp(alpha - k, 0, 1))) / 2
(BARF, Lin et al. 2021), so alpha = 4 uses k < 4 fully and nothing above; alpha = F is the plain
encoding. alpha is a buffer: it is saved with the weights (checkpoints resume it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastsider.config import EncodingConfig


class FrequencyEncoding(torch.nn.Module):
    def __init__(self, n_input_dims: int, cfg: EncodingConfig):
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_frequencies = cfg.n_frequencies if cfg.otype == "Frequency" else 0
        freqs = math.pi * 2.0 ** torch.arange(self.n_frequencies, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        self.register_buffer("active", torch.tensor(float(self.n_frequencies)))

    def set_active(self, alpha: float) -> None:
        """How many frequencies pass (fractional: the next one fades in); clamped to [0, F]."""
        self.active.fill_(min(max(float(alpha), 0.0), float(self.n_frequencies)))

    @property
    def n_output_dims(self) -> int:
        return self.n_input_dims * (1 + 2 * self.n_frequencies)

    def forward(self, x: Tensor) -> Tensor:  # [n_pts, d] -> [n_pts, d * (1 + 2F)]
        if self.n_frequencies == 0:
            return x
        xf = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # [n_pts, F, d]
        feats = torch.stack([xf.sin(), xf.cos()], dim=-2)  # [n_pts, F, 2, d]
        if self.active < self.n_frequencies:
            k = torch.arange(self.n_frequencies, device=x.device, dtype=x.dtype)
            w = (1.0 - torch.cos(math.pi * (self.active - k).clamp(0.0, 1.0))) / 2.0  # [F]
            feats = feats * w[:, None, None]
        feats = feats.flatten(-3)  # [n_pts, F * 2 * d]
        return torch.cat([x, feats], dim=-1)

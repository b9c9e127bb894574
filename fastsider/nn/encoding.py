"""Frequency (positional) encoding, in tiny-cuda-nn's definition plus the raw input.

enc(x) = [x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^(F-1) pi x), cos(2^(F-1) pi x)]

The raw input comes first so IDR's geometric init can see x directly (tcnn: Composite of
Identity + Frequency gives the same features, in its own order).

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

    @property
    def n_output_dims(self) -> int:
        return self.n_input_dims * (1 + 2 * self.n_frequencies)

    def forward(self, x: Tensor) -> Tensor:  # [n_pts, d] -> [n_pts, d * (1 + 2F)]
        if self.n_frequencies == 0:
            return x
        xf = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # [n_pts, F, d]
        feats = torch.stack([xf.sin(), xf.cos()], dim=-2).flatten(-3)  # [n_pts, F * 2 * d]
        return torch.cat([x, feats], dim=-1)

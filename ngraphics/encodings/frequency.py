"""`Frequency` (NeRF positional encoding) and `TriangleWave` (Neural Radiance Caching), as in tiny-cuda-nn.

Both are parameter-free and encode each input dimension separately; outputs are grouped by input dimension
(all features of dim 0, then dim 1, ...), frequencies ascending within a dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ngraphics.encodings.base import Encoding
from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class FrequencyConfig:
    n_frequencies: int = 12

    def validate(self, where: str) -> None:
        if not 1 <= self.n_frequencies <= 64:
            raise ConfigError(f"{where}.n_frequencies: must be in 1..64, got {self.n_frequencies}")


def frequency_encode(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """tcnn's Frequency encoding.

    Args:
        x: (N, D) float, any range (tcnn applies no normalisation).
        n_frequencies: K.
    Returns: (N, D * K * 2): column `d*2K + 2k` is sin(2^k * pi * x_d), column `d*2K + 2k + 1` is
        cos(2^k * pi * x_d) (tcnn computes it as sin(... + pi/2)); k = 0..K-1.
    """
    n, d = x.shape
    freqs = (2.0 ** torch.arange(n_frequencies, dtype=x.dtype, device=x.device)) * math.pi  # (K,)
    angles = x.unsqueeze(-1) * freqs  # (N, D, K)
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(n, d * n_frequencies * 2)


class Frequency(Encoding):
    """x (N, D) -> (N, D * n_frequencies * 2): sin/cos pairs at 2^k * pi, k = 0..n_frequencies-1."""

    otype = "Frequency"
    Config = FrequencyConfig

    def __init__(self, n_input_dims: int, config=None, **kwargs):
        super().__init__(n_input_dims, config, **kwargs)
        self.n_output_dims = n_input_dims * self.config.n_frequencies * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return frequency_encode(x, self.config.n_frequencies)


@dataclass(frozen=True)
class TriangleWaveConfig:
    n_frequencies: int = 12

    def validate(self, where: str) -> None:
        if not 1 <= self.n_frequencies <= 64:
            raise ConfigError(f"{where}.n_frequencies: must be in 1..64, got {self.n_frequencies}")


def triangle_wave_encode(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """tcnn's TriangleWave encoding.

    Args:
        x: (N, D) float, any range.
        n_frequencies: K.
    Returns: (N, D * K): column `d*K + k` is `4 * |frac(v) - 1/2| - 1` with `v = 2^(k-1) * x_d + k/4`
        (a triangle wave in [-1, 1] of period 2^(1-k), phase-shifted per frequency as tcnn does).
        Its x-derivative is +-2^(k+1) (0 exactly at the kinks, where torch's |.| has zero gradient).
    """
    n, d = x.shape
    k = torch.arange(n_frequencies, dtype=x.dtype, device=x.device)  # (K,)
    v = x.unsqueeze(-1) * (2.0 ** (k - 1)) + 0.25 * k  # (N, D, K)
    return ((v - torch.floor(v) - 0.5).abs() * 4 - 1).reshape(n, d * n_frequencies)


class TriangleWave(Encoding):
    """x (N, D) -> (N, D * n_frequencies): triangle waves of doubling frequency, one per k per input dim."""

    otype = "TriangleWave"
    Config = TriangleWaveConfig

    def __init__(self, n_input_dims: int, config=None, **kwargs):
        super().__init__(n_input_dims, config, **kwargs)
        self.n_output_dims = n_input_dims * self.config.n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return triangle_wave_encode(x, self.config.n_frequencies)

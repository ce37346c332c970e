"""`OneBlob` (Müller et al. 2019, Neural Importance Sampling), as in tiny-cuda-nn.

Each input dimension x (nominally in [0, 1]) becomes n_bins values: the integral over each bin
[k/n, (k+1)/n] of a kernel centred on x. tcnn uses a quartic kernel of radius 1/n instead of the paper's
Gaussian, `K(t) = n * 15/16 * (1 - (n t)^2)^2` for |n t| < 1, and wraps around the unit interval
(the kernel is summed at x - 1, x, x + 1), so every dimension's bins sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngraphics.encodings.base import Encoding
from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class OneBlobConfig:
    n_bins: int = 16

    def validate(self, where: str) -> None:
        if self.n_bins < 1 or self.n_bins & (self.n_bins - 1):
            raise ConfigError(f"{where}.n_bins: must be a power of 2 (tcnn requires it), got {self.n_bins}")


def quartic_cdf(t: torch.Tensor, n_bins: int) -> torch.Tensor:
    """CDF of the quartic kernel of radius 1/n_bins: 0 below -1/n, 1 above 1/n, C2 in between.
    In u = n t (clamped to [-1, 1]): 15/16 * u * (1 - 2/3 u^2 + 1/5 u^4) + 1/2."""
    u = (t * n_bins).clamp(-1.0, 1.0)
    u2 = u * u
    return (15.0 / 16.0) * u * (1 - (2.0 / 3.0) * u2 + 0.2 * u2 * u2) + 0.5


def one_blob_encode(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Args: x: (N, D) float, nominally in [0, 1]. Returns: (N, D * n_bins), column `d * n_bins + k` is the
    wrapped kernel mass of x_d in bin k:
    sum over s in {-1, 0, 1} of CDF((k+1)/n - x_d + s) - CDF(k/n - x_d + s)."""
    n, d = x.shape
    edges = torch.arange(n_bins + 1, dtype=x.dtype, device=x.device) / n_bins  # (n_bins + 1,)
    t = edges - x.unsqueeze(-1)  # (N, D, n_bins + 1)
    cdf = quartic_cdf(t - 1, n_bins) + quartic_cdf(t, n_bins) + quartic_cdf(t + 1, n_bins)
    return (cdf[..., 1:] - cdf[..., :-1]).reshape(n, d * n_bins)


class OneBlob(Encoding):
    """x (N, D) in [0, 1] -> (N, D * n_bins): per-dimension bin masses of a quartic blob (wrapping at 0/1)."""

    otype = "OneBlob"
    Config = OneBlobConfig

    def __init__(self, n_input_dims: int, config=None, **kwargs):
        super().__init__(n_input_dims, config, **kwargs)
        self.n_output_dims = n_input_dims * self.config.n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return one_blob_encode(x, self.config.n_bins)

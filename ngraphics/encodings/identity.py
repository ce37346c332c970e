"""`Identity`: passes the input through, optionally scaled and offset (tiny-cuda-nn's `Identity`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngraphics.encodings.base import Encoding


@dataclass(frozen=True)
class IdentityConfig:
    scale: float = 1.0
    offset: float = 0.0


class Identity(Encoding):
    """out = scale * x + offset. x: (N, D) -> (N, D). No parameters."""

    otype = "Identity"
    Config = IdentityConfig

    def __init__(self, n_input_dims: int, config=None, **kwargs):
        super().__init__(n_input_dims, config, **kwargs)
        self.n_output_dims = n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x * self.config.scale + self.config.offset

"""The `Encoding` base class shared by every input encoding.

An encoding maps points `x: (N, n_input_dims)` to features `(N, n_output_dims)`. Trainable state lives in one
flat parameter vector `params` (tiny-cuda-nn's layout, so its state dicts load), empty for encodings that have
none. `n_output_dims` is known right after construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ngraphics.config import from_dict
from ngraphics.errors import ConfigError
from ngraphics.ops import check_backend

PRECISIONS = (torch.float32, torch.float16)


def check_precision(dtype: Any, where: str, key: str = "dtype") -> torch.dtype | None:
    """A precision option of encodings with tables (grids, Simplex): None, torch.float32 or torch.float16.
    key: the option's name, `dtype` (tables and output) or `gradient_dtype` (how the Triton kernels sum the
    table gradient: float32, or tiny-cuda-nn's half2 sums on sm_90 GPUs; the torch backend always sums in
    float32)."""
    if dtype is not None and dtype not in PRECISIONS:
        raise ConfigError(f"{where}.{key}: must be None, torch.float32 or torch.float16, got {dtype}")
    return dtype


def round_params(params: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """params holding the values a `dtype` copy of them holds (the torch backend's emulation of the kernels'
    per-call fp16 table). Gradients pass as through the identity, as they do through the kernels' cast:
    params + (rounded - params).detach() equals `rounded` exactly (the difference is exact, Sterbenz).
    params: (P,) float. Returns (P,) in params' dtype."""
    if dtype is None or dtype == params.dtype:
        return params
    rounded = params.detach().to(dtype).to(params.dtype)
    return params + (rounded - params.detach())


class Encoding(nn.Module):
    """Base class. Subclasses set `otype`, `Config` (a frozen dataclass of tiny-cuda-nn keys and defaults),
    compute `n_output_dims` and `n_params` in `__init__`, and implement `forward`.

    Args:
        n_input_dims: D, the number of input dimensions.
        config: dict of tiny-cuda-nn keys (the `otype` key is ignored here) or a `Config` instance.
        backend: `auto | torch | triton` for encodings with GPU kernels; others ignore it.
        strict: unknown keys raise ConfigError (ngraphics's own configs) or are collected in
            `self.unknown_keys` (the tinycudann drop-in warns about them).
    """

    otype: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    has_dtype: ClassVar[bool] = False  # __init__ takes `dtype` (tables and output precision; see HashGrid)
    has_gradient_dtype: ClassVar[bool] = False  # __init__ takes `gradient_dtype` (kernels' gradient sums)

    def __init__(self, n_input_dims: int, config: Any = None, *, backend: str = "auto", strict: bool = True):
        super().__init__()
        if not isinstance(n_input_dims, int) or n_input_dims < 1:
            raise ConfigError(f"{self.otype}: n_input_dims must be a positive integer, got {n_input_dims!r}")
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k not in ("otype", "n_dims_to_encode")}
        self.config = from_dict(self.Config, config, self.otype, strict=strict)
        self.unknown_keys: tuple[str, ...] = getattr(self.config, "__unknown_keys__", ())
        self.n_input_dims = n_input_dims
        self.backend = check_backend(backend, f"{self.otype}.backend")
        self.n_output_dims = 0  # set by the subclass

    @property
    def n_params(self) -> int:
        params = getattr(self, "params", None)
        return 0 if params is None else params.numel()

    def config_dict(self) -> dict:
        """The resolved config with every key, as tiny-cuda-nn would read it."""
        return {"otype": self.otype, **dataclasses.asdict(self.config)}

    def check_input(self, x: torch.Tensor) -> None:
        """Shape check at the module boundary (cheap; not inside kernels)."""
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(
                f"{self.otype}: positions must be (N, {self.n_input_dims}), got {tuple(x.shape)} {x.dtype}"
            )

    def extra_repr(self) -> str:
        return (f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
                f"n_params={self.n_params}")

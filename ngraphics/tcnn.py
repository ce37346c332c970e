"""Drop-in for the `tinycudann` Python package: `import ngraphics.tcnn as tcnn` runs tinycudann code
unchanged, on CPU (float32) and on CUDA (float16 outputs, like tinycudann), with no CUDA build.

    model = tcnn.NetworkWithInputEncoding(n_input_dims=2, n_output_dims=3,
                                          encoding_config={"otype": "HashGrid", "n_levels": 8},
                                          network_config={"otype": "FullyFusedMLP", "n_neurons": 64})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

What carries over from tinycudann (`bindings/torch/tinycudann/modules.py`):
- `Encoding(n_input_dims, encoding_config, seed=1337, dtype=None)`, `Network(n_input_dims, n_output_dims,
  network_config, seed=1337)`, `NetworkWithInputEncoding(n_input_dims, n_output_dims, encoding_config,
  network_config, seed=1337)`, with attributes n_input_dims, n_output_dims, seed, dtype, loss_scale,
  jit_fusion and one flat float32 Parameter `params` in tcnn's layout; the state dict is `{"params": ...}`,
  so tinycudann checkpoints load (and ours load in tinycudann).
- The same initial values for the same seed (tcnn's PCG32 stream; MLPs and tcnn's grids).
- `Network` is tcnn's identity encoding + MLP: inputs are padded with ones to a multiple of 16.
- Configs: dicts as tinycudann takes them; also a JSON file path or JSON text (`//` comments allowed), and
  a whole tcnn config file `{"encoding": ..., "network": ...}` from which the right part is taken.
  Keys tinycudann would ignore are ignored here too, with ONE warning per module naming them
  (`TcnnCompatWarning`); the native `ngraphics.networks`/`ngraphics.encodings` APIs reject them.
- Any batch size (tinycudann pads batches to `batch_size_granularity()` internally; we need not).
- Precision: `dtype` on CUDA (float16 unless a module asks for float32), float32 outputs on CPU. An Encoding
  in float16 runs its grids / Simplex as tinycudann does: float32 master params, an fp16 copy of the tables
  read by the kernels each call, fp16 outputs (on CPU the same fp16 rounding, returned as float32).
"""

from __future__ import annotations

import enum
import gc
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ngraphics.config import load_mapping, strip_json_comments
from ngraphics.encodings import create_encoding
from ngraphics.errors import ConfigError
from ngraphics.networks.mlp import MLP
from ngraphics.networks.network_with_input_encoding import (
    NetworkWithInputEncoding as _NetworkWithInputEncoding,
)
from ngraphics.networks.network_with_input_encoding import ParamLender, take_params, tcnn_encoding_params
from ngraphics.networks.pcg32 import Pcg32


class TcnnCompatWarning(UserWarning):
    """A tinycudann config carried keys that tiny-cuda-nn ignores (so do we, in this API only)."""


class Precision(enum.Enum):
    """tinycudann's `_C.Precision`."""

    Fp32 = "Fp32"
    Fp16 = "Fp16"


def preferred_precision() -> Precision:
    """Fp16 where a CUDA device is present (tcnn's choice on tensor-core GPUs), else Fp32."""
    return Precision.Fp16 if torch.cuda.is_available() else Precision.Fp32


def supports_jit_fusion() -> bool:
    """tinycudann >= 2.0 can fuse networks into JIT-compiled kernels; there is no such mode here."""
    return False


def batch_size_granularity() -> int:
    """tcnn's batch granularity (`common.h`), for code that rounds its batch sizes; any size works here."""
    return 128


def free_temporary_memory() -> None:
    """tinycudann frees its GPU scratch arenas; here: collect garbage and release torch's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rtc_set_cache_dir(dir: str | Path) -> None:
    """Accepted for compatibility; there are no runtime-compiled CUDA kernels to cache."""


def _default_dtype() -> torch.dtype:
    return torch.float16 if torch.cuda.is_available() else torch.float32


def load_config(config: Any, part: str) -> dict:
    """A tcnn `encoding`/`network` config from a dict, a JSON/YAML file path or JSON text (// comments ok).
    A mapping without `otype` but with a `part` entry (a whole tcnn config file) gives that entry."""
    where = f"{part}_config"
    if isinstance(config, Path) or (isinstance(config, str) and not config.lstrip().startswith("{")):
        where = str(config)
        config = load_mapping(config)
    elif isinstance(config, str):
        try:
            config = json.loads(strip_json_comments(config))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column "
                              f"{err.colno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a mapping with an otype key, got {type(config).__name__}")
    if "otype" not in config and isinstance(config.get(part), dict):
        config = config[part]
    return dict(config)


def _encoding_unknown_keys(encoding: nn.Module, prefix: str) -> list[str]:
    keys = [f"{prefix}.{k}" for k in getattr(encoding, "unknown_keys", ())]
    for i, nested in enumerate(getattr(encoding, "nested", ())):
        keys += _encoding_unknown_keys(nested, f"{prefix}.nested[{i}]")
    return keys


def _warn_unknown(module: str, keys: list[str]) -> None:
    if keys:
        warnings.warn(
            f"ngraphics.tcnn.{module}: ignoring config keys that tiny-cuda-nn does not read: "
            f"{', '.join(keys)}",
            TcnnCompatWarning,
            stacklevel=3,
        )


def _extra_repr(module: nn.Module, hyperparams: dict) -> str:
    return (
        f"n_input_dims={module.n_input_dims}, n_output_dims={module.n_output_dims}, seed={module.seed}, "
        f"dtype={module.dtype}, hyperparams={hyperparams}"
    )


class Network(MLP):
    """tinycudann `Network`: x (N, n_input_dims) float -> (N, n_output_dims), float16 on CUDA, float32 on CPU.

    network_config: tcnn network dict (`otype` FullyFusedMLP/CutlassMLP, n_neurons, n_hidden_layers,
    activation, output_activation). `params`: the weight matrices, tcnn's layout (see ngraphics.networks.mlp).
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, network_config: Any, seed: int = 1337):
        config = load_config(network_config, "network")
        super().__init__(n_input_dims, n_output_dims, config, seed=seed, dtype=_default_dtype(), strict=False)
        _warn_unknown("Network", [f"network_config.{k}" for k in self.unknown_keys])
        self.network_config = config
        self.loss_scale = 128.0 if self.dtype == torch.float16 else 1.0
        self.jit_fusion = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, n_input_dims) float -> (N, n_output_dims); like tinycudann, x is read as float32."""
        return super().forward(x.float())

    def extra_repr(self) -> str:
        return _extra_repr(self, self.config_dict())


class NetworkWithInputEncoding(_NetworkWithInputEncoding):
    """tinycudann `NetworkWithInputEncoding`: encoding then MLP; `params` = [network weights, encoding
    params].

    x: (N, n_input_dims) float (e.g. in [0, 1] for grids) -> (N, n_output_dims), float16 on CUDA, float32 on
    CPU.
    """

    def __init__(
        self, n_input_dims: int, n_output_dims: int, encoding_config: Any, network_config: Any,
        seed: int = 1337
    ):
        encoding_config = load_config(encoding_config, "encoding")
        network_config = load_config(network_config, "network")
        super().__init__(
            n_input_dims, n_output_dims, encoding_config, network_config, seed=seed, dtype=_default_dtype(),
            strict=False,
        )
        unknown = _encoding_unknown_keys(self.encoding, "encoding_config")
        unknown += [f"network_config.{k}" for k in self.network.unknown_keys]
        _warn_unknown("NetworkWithInputEncoding", unknown)
        self.encoding_config, self.network_config = encoding_config, network_config
        self.loss_scale = 128.0 if self.dtype == torch.float16 else 1.0
        self.jit_fusion = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, n_input_dims) float -> (N, n_output_dims); like tinycudann, x is read as float32."""
        return super().forward(x.float())

    def extra_repr(self) -> str:
        hyperparams = {"otype": "NetworkWithInputEncoding", "encoding": self.encoding.config_dict(),
                       "network": self.network.config_dict()}
        return _extra_repr(self, hyperparams)


class Encoding(ParamLender):
    """tinycudann `Encoding`: x (N, n_input_dims) float -> (N, n_output_dims) in `dtype` on CUDA, float32 on
    CPU.

    dtype: None (float16 where CUDA is present, like tinycudann's preferred precision), torch.float32 or
    torch.float16; handed to the encoding (`create_encoding(..., dtype=)`), so grids and Simplex read fp16
    tables and write fp16 outputs in the kernels, like tinycudann; parameter-free encodings compute in
    float32 and their output is cast. `params`: the encoding's parameters in tcnn's layout (float32; empty
    for parameter-free ones).
    """

    def __init__(self, n_input_dims: int, encoding_config: Any, seed: int = 1337,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if dtype not in (None, torch.float32, torch.float16):
            raise ValueError(f"Encoding only supports fp32 or fp16 precision, but got {dtype}")
        config = load_config(encoding_config, "encoding")
        self.dtype = dtype or _default_dtype()
        self.encoding = create_encoding(n_input_dims, config, strict=False, dtype=self.dtype)
        _warn_unknown("Encoding", _encoding_unknown_keys(self.encoding, "encoding_config"))
        self.n_input_dims, self.n_output_dims = n_input_dims, self.encoding.n_output_dims
        self.encoding_config, self.seed = config, seed
        self.loss_scale = 128.0 if self.dtype == torch.float16 else 1.0
        self.jit_fusion = False
        init = tcnn_encoding_params(self.encoding, Pcg32(seed))
        own = take_params(self.encoding)
        self.params = nn.Parameter(own if init is None else torch.from_numpy(init))
        self._rest()

    def parts(self) -> list[tuple[nn.Module, int, int]]:
        return [(self.encoding, 0, self.params.numel())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, n_input_dims) float -> (N, n_output_dims), `dtype` on CUDA, float32 on CPU."""
        with self.lent():
            out = self.encoding(x.float())  # already in dtype where the encoding has tables
        return out.to(self.dtype if out.is_cuda else torch.float32)

    def extra_repr(self) -> str:
        return _extra_repr(self, self.encoding.config_dict())


__all__ = [
    "Encoding", "Network", "NetworkWithInputEncoding", "free_temporary_memory", "supports_jit_fusion",
    "batch_size_granularity", "preferred_precision", "Precision", "rtc_set_cache_dir", "load_config",
    "TcnnCompatWarning",
]

"""An input encoding followed by an MLP, with one flat parameter vector laid out as tiny-cuda-nn does.

tcnn (`network_with_input_encoding.h`): the encoding's output is padded to a multiple of
lcm(16, the encoding's output alignment) and fed to the network; `params` is the network's weights
followed by the encoding's parameters, and initialisation draws the network first and then the encoding
from one PCG32 stream. The padded columns hold what tcnn's encodings write there: 0 after grids, 1 after
the others, and ones in front of spherical harmonics (`kernel_sh` writes its padding first).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ngraphics.encodings import Encoding, create_encoding
from ngraphics.encodings.composite import pad_rule, required_output_alignment
from ngraphics.networks.mlp import ALIGNMENT, MLP, next_multiple
from ngraphics.networks.pcg32 import Pcg32, grid_uniform

TCNN_GRIDS = ("HashGrid", "DenseGrid", "TiledGrid", "Grid")
GRID_INIT_RANGE = 1e-4  # tcnn grid initialize_params: uniform(-1e-4, 1e-4)


def pad_encoded(features: torch.Tensor, width: int, rule: tuple[float, bool]) -> torch.Tensor:
    """features: (N, F) -> (N, width), the extra columns filled by `rule` = (value, in_front)."""
    pad = width - features.shape[1]
    if pad == 0:
        return features
    value, in_front = rule
    fill = features.new_full((features.shape[0], pad), value)
    return torch.cat([fill, features] if in_front else [features, fill], dim=1)


def tcnn_encoding_params(encoding: Encoding, rng: Pcg32) -> np.ndarray | None:
    """tcnn's initial parameters for `encoding` drawn from `rng` ((n_params,) float32), or None where tcnn
    has no such encoding (Simplex): that encoding keeps its own initialisation and draws nothing."""
    if encoding.n_params == 0:
        return np.empty(0, dtype=np.float32)
    if encoding.otype in TCNN_GRIDS:
        return grid_uniform(rng, encoding.n_params, -GRID_INIT_RANGE, GRID_INIT_RANGE)
    if encoding.otype == "Composite":
        parts = []
        for nested in encoding.nested:
            part = tcnn_encoding_params(nested, rng)
            parts.append(nested.params.detach().cpu().numpy().ravel() if part is None else part)
        return np.concatenate(parts).astype(np.float32)
    return None


def take_params(module: nn.Module) -> torch.Tensor:
    """Remove `module`'s own Parameter `params` and return its values flattened (empty if it had none).
    Its owner (a `ParamLender`) then gives it views of the owner's flat vector."""
    own = module._parameters.pop("params", None)
    return torch.empty(0) if own is None else own.detach().reshape(-1)


def lend_params(module: nn.Module, view: torch.Tensor) -> None:
    if view.numel() or hasattr(module, "params"):
        module.params = view


class ParamLender(nn.Module):
    """A module with one flat Parameter `params` whose parts (submodules) read slices of it.

    During forward (`with self.lent():`) each part's `params` is a slice that carries gradients to
    self.params; at rest it is a plain view of the same memory (so the parts can be called directly for
    inference, and deepcopy / pickling / `.to()` keep working). `parts()` lists (module, begin, end).
    """

    def parts(self) -> list[tuple[nn.Module, int, int]]:
        raise NotImplementedError

    def _lend(self) -> None:
        for module, begin, end in self.parts():
            lend_params(module, self.params[begin:end])

    def _rest(self) -> None:
        with torch.no_grad():
            self._lend()

    @contextlib.contextmanager
    def lent(self):
        self._lend()
        try:
            yield
        finally:
            self._rest()

    def _apply(self, fn, recurse=True):  # .to(), .double(), .cuda() may replace the storage of self.params
        out = super()._apply(fn, recurse)
        self._rest()
        return out


class NetworkWithInputEncoding(ParamLender):
    """encoding(x), padded as tcnn pads it, then an MLP. One flat `params` = [network, encoding].

    Args:
        n_input_dims: D, width of x.
        n_output_dims: width of the output.
        encoding_config: tcnn encoding dict (see `ngraphics.encodings`).
        network_config: tcnn network dict (see `ngraphics.networks.mlp`).
        seed: PCG32 seed (tcnn's initial values for the MLP and tcnn's grids); None draws one from torch.
        dtype: MLP compute dtype on CUDA (float16 like tcnn, bfloat16, float32); CPU uses float32.
        backend: `auto | torch | triton` for both parts.
        strict: unknown config keys raise ConfigError (True) or are listed in `self.unknown_keys`.

    forward(x: (N, D) float, in the encoding's domain, e.g. [0, 1]) -> (N, n_output_dims) in the MLP's
    compute dtype. `self.encoding` and `self.network` are the parts (their `params` are views into
    `self.params`); `self.n_network_params` splits the vector.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        encoding_config: dict,
        network_config: dict,
        *,
        seed: int | None = None,
        dtype: torch.dtype = torch.float16,
        backend: str = "auto",
        strict: bool = True,
    ):
        super().__init__()
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.encoding = create_encoding(n_input_dims, encoding_config, backend=backend, strict=strict)
        alignment = math.lcm(ALIGNMENT, required_output_alignment(self.encoding))
        self.padded_encoding_dims = next_multiple(self.encoding.n_output_dims, alignment)
        self.pad_rule = pad_rule(self.encoding)
        self.network = MLP(
            self.padded_encoding_dims, n_output_dims, network_config, seed=seed, dtype=dtype, backend=backend,
            strict=strict,
        )
        self.unknown_keys = tuple(self.encoding.unknown_keys) + tuple(self.network.unknown_keys)
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        self.seed, self.dtype = seed, dtype

        rng = Pcg32(seed)
        rng.advance(self.network.n_params)  # the MLP drew its weights first
        encoding_init = tcnn_encoding_params(self.encoding, rng)
        network_params, encoding_params = take_params(self.network), take_params(self.encoding)
        if encoding_init is not None:
            encoding_params = torch.from_numpy(encoding_init)
        self.n_network_params = network_params.numel()
        self.params = nn.Parameter(torch.cat([network_params, encoding_params.to(network_params.dtype)]))
        self._rest()

    def parts(self) -> list[tuple[nn.Module, int, int]]:
        split = self.n_network_params
        return [(self.network, 0, split), (self.encoding, split, self.n_params)]

    @property
    def n_params(self) -> int:
        return self.params.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, n_input_dims) float -> (N, n_output_dims)."""
        with self.lent():
            features = pad_encoded(self.encoding(x), self.padded_encoding_dims, self.pad_rule)
            return self.network(features)

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"padded_encoding_dims={self.padded_encoding_dims}, n_params={self.n_params}, seed={self.seed}"
        )


def create_network_with_input_encoding(
    n_input_dims: int, n_output_dims: int, encoding_config: dict, network_config: dict, **kwargs: Any
) -> NetworkWithInputEncoding:
    """Build a `NetworkWithInputEncoding` (keyword arguments as there)."""
    return NetworkWithInputEncoding(n_input_dims, n_output_dims, encoding_config, network_config, **kwargs)


__all__ = [
    "NetworkWithInputEncoding", "create_network_with_input_encoding", "pad_encoded",
    "tcnn_encoding_params", "take_params", "lend_params", "ParamLender",
]

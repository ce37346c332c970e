"""Tiny MLPs with tiny-cuda-nn's configs, parameter layout and initialisation.

Config (tcnn `DOCUMENTATION.md`, `src/network.cu`): `{"otype": "FullyFusedMLP", "activation": "ReLU",
"output_activation": "None", "n_neurons": 128, "n_hidden_layers": 5}` (those are tcnn's defaults).
`otype` is `FullyFusedMLP` (alias `MegakernelMLP`; n_neurons any multiple of 16 up to 128 — tcnn itself
only builds 16, 32, 64 and 128, and the Triton kernel runs them all — at least one hidden layer)
or `CutlassMLP` (alias `MLP`; any width, 0 hidden layers allowed), matched case-insensitively like
activation names. Both compute the same function; the name only sets which configs are legal, so tcnn
configs and checkpoints carry over unchanged.

Layout (`networks/fully_fused_mlp.h`, `src/cutlass_mlp.cu`): no biases. One flat `params` vector holds the
weight matrices back to back, each row-major (out x in), i.e. `W.view(out, in)` and `y = x @ W.T`:
    (n_neurons, padded_in), (n_neurons, n_neurons) x (n_hidden_layers - 1), (padded_out, n_neurons)
or the single matrix (padded_out, padded_in) without hidden layers. `padded_out` is n_output_dims rounded
up to 16 (tcnn's `padded_output_width`); the extra rows are computed and dropped. `padded_in` is
n_input_dims rounded up to 16; the input is padded with ones there (what tcnn's `Network`, an Identity
encoding plus the MLP, feeds those columns), so those weight columns act as a bias.

Initialisation (`initialize_params` and `GPUMatrix::initialize_*`): every matrix Xavier/Glorot uniform
U(-s, s), s = sqrt(6 / (fan_in + fan_out)) with fan_in = columns, fan_out = rows (padding included); with
Sine activations the first matrix takes s = 30 / fan_in and the others s = sqrt(6 / fan_in) (SIREN). The
numbers come from tcnn's PCG32 stream (`ngraphics.networks.pcg32`), so a seed gives tcnn's exact values.

Activations (`common_device.h`, `warp_activation`), with K = 10:
    None x | ReLU max(x, 0) | LeakyReLU x if x > 0 else 0.01 x | Exponential e^x | Sine sin x
    Sigmoid 1 / (1 + e^-x) | Squareplus (Kx + sqrt((Kx)^2 + 4)) / (2K) | Softplus log(1 + e^(Kx)) / K | Tanh
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ngraphics import ops
from ngraphics.config import from_dict
from ngraphics.errors import ConfigError, choice_message
from ngraphics.networks.pcg32 import Pcg32, uniform_matrix

ACTIVATIONS = ("None", "ReLU", "LeakyReLU", "Exponential", "Sine", "Sigmoid", "Squareplus", "Softplus",
               "Tanh")
NETWORK_TYPES = {  # tcnn otype -> the implementation whose rules apply
    "FullyFusedMLP": "FullyFusedMLP",
    "MegakernelMLP": "FullyFusedMLP",
    "CutlassMLP": "CutlassMLP",
    "MLP": "CutlassMLP",
}
FULLY_FUSED_WIDTHS = tuple(range(16, 129, 16))  # tcnn: 16, 32, 64, 128 only
ALIGNMENT = 16  # tcnn pads network input and output widths to multiples of 16 (REQUIRED_ALIGNMENT)
K_ACT = 10.0  # tcnn's sharpness of Squareplus and Softplus
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def next_multiple(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def canonical_activation(name: Any, where: str) -> str:
    """tcnn matches activation names case-insensitively; return the canonical spelling."""
    by_lower = {a.lower(): a for a in ACTIVATIONS}
    if not isinstance(name, str) or name.lower() not in by_lower:
        raise ConfigError(choice_message(where, name, ACTIVATIONS))
    return by_lower[name.lower()]


def network_type(otype: Any, where: str = "network.otype") -> str:
    """Canonical otype (`FullyFusedMLP` or `CutlassMLP`) for any tcnn spelling or alias."""
    by_lower = {name.lower(): impl for name, impl in NETWORK_TYPES.items()}
    if not isinstance(otype, str) or otype.lower() not in by_lower:
        raise ConfigError(choice_message(where, otype, NETWORK_TYPES))
    return by_lower[otype.lower()]


@dataclass(frozen=True)
class MLPConfig:
    """tcnn network keys (besides `otype`) with tcnn's defaults."""

    n_neurons: int = 128
    n_hidden_layers: int = 5
    activation: str = "ReLU"
    output_activation: str = "None"

    def validate(self, where: str) -> None:
        object.__setattr__(self, "activation", canonical_activation(self.activation, f"{where}.activation"))
        object.__setattr__(
            self, "output_activation",
            canonical_activation(self.output_activation, f"{where}.output_activation")
        )
        if self.n_neurons < 1:
            raise ConfigError(f"{where}.n_neurons: must be a positive integer, got {self.n_neurons}")
        if self.n_hidden_layers < 0:
            raise ConfigError(f"{where}.n_hidden_layers: must be >= 0, got {self.n_hidden_layers}")


@dataclass(frozen=True)
class MLPSpec:
    """Everything a forward kernel needs to know about an MLP (hashable: use it as a compile-time key).

    n_input_dims / n_output_dims: the caller's widths. padded_input_dims / padded_output_dims: the widths of
    the first matrix's columns and the last matrix's rows (multiples of 16). n_neurons: hidden width.
    n_hidden_layers: hidden layers (matrices = n_hidden_layers + 1). activation / output_activation: names
    from `ACTIVATIONS`, applied after every hidden matrix / after the last one.
    """

    n_input_dims: int
    n_output_dims: int
    padded_input_dims: int
    padded_output_dims: int
    n_neurons: int
    n_hidden_layers: int
    activation: str
    output_activation: str

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) = (out, in) of each weight matrix, in storage order."""
        if self.n_hidden_layers == 0:
            return [(self.padded_output_dims, self.padded_input_dims)]
        return (
            [(self.n_neurons, self.padded_input_dims)]
            + [(self.n_neurons, self.n_neurons)] * (self.n_hidden_layers - 1)
            + [(self.padded_output_dims, self.n_neurons)]
        )

    @property
    def n_params(self) -> int:
        return sum(rows * cols for rows, cols in self.layer_shapes())


def activation_torch(name: str, x: torch.Tensor) -> torch.Tensor:
    """tcnn's activation `name` applied elementwise (formulas in the module docstring)."""
    if name == "None":
        return x
    if name == "ReLU":
        return torch.relu(x)
    if name == "LeakyReLU":
        return torch.where(x > 0, x, 0.01 * x)
    if name == "Exponential":
        return torch.exp(x)
    if name == "Sine":
        return torch.sin(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Squareplus":
        kx = K_ACT * x
        return 0.5 * (kx + torch.sqrt(kx * kx + 4)) / K_ACT
    if name == "Softplus":
        return torch.logaddexp(K_ACT * x, torch.zeros_like(x)) / K_ACT  # log(1 + e^(Kx)) / K, no overflow
    if name == "Tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {name!r}")


def split_params(params: torch.Tensor, spec: MLPSpec) -> list[torch.Tensor]:
    """Views of the flat vector as the row-major (out, in) weight matrices. params: (spec.n_params,)."""
    weights, offset = [], 0
    for rows, cols in spec.layer_shapes():
        weights.append(params[offset : offset + rows * cols].view(rows, cols))
        offset += rows * cols
    return weights


def mlp_forward_torch(x: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec) -> torch.Tensor:
    """Reference forward pass (differentiable; any device).

    Args:
        x: inputs, already padded to the first matrix's width. (N, spec.padded_input_dims), float.
        weights: the spec.n_hidden_layers + 1 matrices of `spec.layer_shapes()`, in x's dtype.
    Returns: (N, spec.n_output_dims) in x's dtype. Matmuls run in x's dtype (fp32 accumulation for
    fp16/bf16 on CUDA); activations are evaluated in at least float32 and rounded back, like tcnn.
    """
    assert x.dim() == 2 and x.shape[1] == spec.padded_input_dims, (tuple(x.shape), spec.padded_input_dims)
    act_dtype = torch.promote_types(x.dtype, torch.float32)
    h = x
    for i, w in enumerate(weights):
        name = spec.output_activation if i == len(weights) - 1 else spec.activation
        h = h @ w.T  # (N, rows of w)
        if name != "None":
            h = activation_torch(name, h.to(act_dtype)).to(x.dtype)
    return h[:, : spec.n_output_dims]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (tcnn's fp16 loss scaling, see MLP.forward)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class MLP(nn.Module):
    """A fully connected network without biases, configured and laid out like tcnn's FullyFusedMLP/CutlassMLP.

    Args:
        n_input_dims: width of the inputs (padded with ones to a multiple of 16 inside).
        n_output_dims: width of the outputs.
        config: tcnn network dict (`otype`, `n_neurons`, `n_hidden_layers`, `activation`,
            `output_activation`) or an `MLPConfig`; otype defaults to CutlassMLP's rules.
        seed: tcnn's PCG32 seed for the initial weights; None draws one from torch's generator.
        dtype: compute dtype on CUDA (float16 like tcnn, bfloat16 or float32). CPU computes in float32
            (float64 when params or inputs are float64, e.g. for gradcheck).
        backend: `auto | torch | triton` (`ngraphics.ops`, op `mlp_forward`; triton:
            `ngraphics.kernels.mlp.mlp_forward_triton`). Calls the kernel cannot run (its
            `unsupported_reason`: float32 on CUDA, float64, layers past 128 wide, ...) take the torch path
            under auto (logged once) and raise ConfigError under triton.
        strict: unknown config keys raise ConfigError (True) or are kept in `self.unknown_keys`.

    forward(x: (N, n_input_dims) float) -> (N, n_output_dims) in the compute dtype.
    Example: `MLP(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2})(torch.rand(8, 3))`.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        config: Any = None,
        *,
        seed: int | None = None,
        dtype: torch.dtype = torch.float16,
        backend: str = "auto",
        strict: bool = True,
        where: str = "network",
    ):
        super().__init__()
        for name, value in (("n_input_dims", n_input_dims), ("n_output_dims", n_output_dims)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"{where}: dtype must be one of float32, float16, bfloat16, got {dtype}")
        if isinstance(config, MLPConfig):
            self.otype, self.config = "CutlassMLP", config
        else:
            config = dict(config or {})
            self.otype = network_type(config.pop("otype", "MLP"), f"{where}.otype")
            self.config = from_dict(MLPConfig, config, where, strict=strict)
        self.unknown_keys: tuple[str, ...] = getattr(self.config, "__unknown_keys__", ())
        cfg = self.config
        if self.otype == "FullyFusedMLP":
            if cfg.n_neurons not in FULLY_FUSED_WIDTHS:
                raise ConfigError(
                    f"{where}.n_neurons: FullyFusedMLP supports multiples of 16 up to 128 neurons, "
                    f"got {cfg.n_neurons} (use otype CutlassMLP for other widths)"
                )
            if cfg.n_hidden_layers < 1:
                raise ConfigError(f"{where}.n_hidden_layers: FullyFusedMLP needs at least 1 hidden layer, "
                                  "got 0")
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        self.spec = MLPSpec(
            n_input_dims=n_input_dims,
            n_output_dims=n_output_dims,
            padded_input_dims=next_multiple(n_input_dims, ALIGNMENT),
            padded_output_dims=next_multiple(n_output_dims, ALIGNMENT),
            n_neurons=cfg.n_neurons,
            n_hidden_layers=cfg.n_hidden_layers,
            activation=cfg.activation,
            output_activation=cfg.output_activation,
        )
        self.dtype = dtype
        self.loss_scale = 128.0  # tcnn's default loss scale for fp16 parameters (used only in fp16)
        self.backend = ops.check_backend(backend, f"{where}.backend")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.seed = seed
        self.params = nn.Parameter(torch.from_numpy(initial_params(self.spec, Pcg32(seed))))

    @property
    def n_params(self) -> int:
        return self.spec.n_params

    def weights(self) -> list[torch.Tensor]:
        """Views of `params` as the (out, in) weight matrices of `spec.layer_shapes()`."""
        return split_params(self.params, self.spec)

    def config_dict(self) -> dict:
        return {"otype": self.otype, **dataclasses.asdict(self.config)}

    def compute_dtype(self, x: torch.Tensor, params: torch.Tensor) -> torch.dtype:
        if torch.float64 in (x.dtype, params.dtype):
            return torch.float64
        return self.dtype if x.device.type == "cuda" else torch.float32

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, n_input_dims) float -> (N, n_output_dims). `params` replaces self.params (same layout)."""
        if x.dim() != 2 or x.shape[1] != self.n_input_dims or not x.is_floating_point():
            raise ValueError(f"MLP: input must be (N, {self.n_input_dims}) float, "
                             f"got {tuple(x.shape)} {x.dtype}")
        params = self.params if params is None else params
        dtype = self.compute_dtype(x, params)
        if dtype == torch.float16 and torch.is_grad_enabled():
            # tcnn's loss scaling: fp16 gradients inside the network are multiplied by loss_scale (so that
            # small ones do not flush to zero) and divided again once they are back in float32.
            params = _ScaleGrad.apply(params, 1.0 / self.loss_scale)
            if x.requires_grad:
                x = _ScaleGrad.apply(x, 1.0 / self.loss_scale)
        pad = self.spec.padded_input_dims - self.n_input_dims
        h = x.to(dtype)
        if pad:
            h = torch.cat([h, h.new_ones(h.shape[0], pad)], dim=1)
        weights = split_params(params.to(dtype), self.spec)
        if ops.use_kernel("mlp_forward", self.backend, x.device, h, weights, self.spec):
            out = ops.kernel("mlp_forward")(h, weights, self.spec)
        else:
            out = mlp_forward_torch(h, weights, self.spec)
        if dtype == torch.float16 and out.requires_grad:
            out = _ScaleGrad.apply(out, self.loss_scale)
        return out

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"otype={self.otype}, n_input_dims={s.n_input_dims}, n_output_dims={s.n_output_dims}, "
            f"n_neurons={s.n_neurons}, n_hidden_layers={s.n_hidden_layers}, activation={s.activation}, "
            f"output_activation={s.output_activation}, n_params={s.n_params}, dtype={self.dtype}"
        )


def initial_params(spec: MLPSpec, rng: Pcg32) -> np.ndarray:
    """tcnn's initial weights drawn from `rng` (advanced by spec.n_params), as a (spec.n_params,) float32
    numpy array in storage order (see the module docstring for the distributions)."""
    chunks = []
    for i, (rows, cols) in enumerate(spec.layer_shapes()):
        if spec.activation == "Sine":
            if i == 0:
                scale = np.float32(30.0) / np.float32(cols)
            else:
                scale = np.sqrt(np.float32(6.0) / np.float32(cols))
        else:
            scale = np.sqrt(np.float32(6.0) / np.float32(rows + cols))
        chunks.append(uniform_matrix(rng, rows * cols, scale))
    return np.concatenate(chunks)


def create_network(n_input_dims: int, n_output_dims: int, config: dict, **kwargs) -> MLP:
    """Build the network described by a tcnn network dict (see `MLP` for the keyword arguments)."""
    if not isinstance(config, (dict, MLPConfig)):
        raise ConfigError(f"network: expected a mapping with an otype key, got {type(config).__name__}")
    return MLP(n_input_dims, n_output_dims, config, **kwargs)


__all__ = [
    "MLP", "MLPConfig", "MLPSpec", "ACTIVATIONS", "NETWORK_TYPES", "activation_torch", "mlp_forward_torch",
    "split_params", "initial_params", "create_network", "network_type", "next_multiple",
]

"""Instant-NGP's radiance field: a hash-grid density network and a colour network on spherical harmonics.

    x (world) --box--> u in [0, 1]^3 --HashGrid--> (N, L*F) --density MLP--> h (N, 16)
    sigma = exp(h[:, 0])                                  (truncated-exponential gradient, as in nerfacc)
    d (unit) --SphericalHarmonics(degree 4) on (d + 1) / 2--> (N, 16)
    rgb = sigmoid(colour MLP([SH(d), h]))                 (N, 3)

The hash grid covers the field's box (for unbounded scenes the outermost occupancy cascade, instant-ngp's
aabb_scale cube); its finest resolution is `max_resolution` (instant-ngp: 2048 x aabb_scale), which fixes
per_level_scale unless the encoding block sets it. The MLPs compute in fp16 on CUDA (tcnn's precision, with its
loss scaling), bf16 or fp32 by `precision`; the grid in fp32 unless `grid_precision` / `grid_gradient_precision`
ask for tcnn's fp16 (CUDA only: `NeRF` builds the field in fp32 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ngraphics.config import deep_merge, from_dict
from ngraphics.encodings import create_encoding, encoding_class
from ngraphics.errors import ConfigError
from ngraphics.networks import MLPConfig, create_network
from ngraphics.networks.mlp import network_type

DEFAULT_ENCODING = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                    "base_resolution": 16}
DEFAULT_DENSITY_NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                           "n_neurons": 64, "n_hidden_layers": 1}
DEFAULT_COLOR_NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                         "n_neurons": 64, "n_hidden_layers": 2}
DEFAULT_DIRECTION_ENCODING = {"otype": "SphericalHarmonics", "degree": 4}
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def merged(default: dict, given: dict) -> dict:
    """`given` over `default` when both name the same otype (or `given` names none); else `given` alone,
    so switching otype does not drag in keys of another type."""
    if "otype" in given and str(given["otype"]).lower() != str(default["otype"]).lower():
        return dict(given)
    return deep_merge(default, given)


@dataclass(frozen=True)
class NerfFieldConfig:
    """Keys of the `model.field` block. The four tcnn dicts merge over the defaults key by key.

    encoding: position encoding (tcnn dict), default HashGrid 16 levels x 2 features, 2^19 entries, base 16.
    max_resolution: finest grid resolution over the field's box, per unit of aabb_scale; sets per_level_scale.
    density_network: tcnn MLP dict, 16 outputs (log-density first), default 64 neurons x 1 hidden layer.
    direction_encoding: tcnn dict for view directions, default SphericalHarmonics degree 4.
    color_network: tcnn MLP dict, default 64 neurons x 2 hidden layers.
    precision: MLP compute dtype on CUDA (fp16 = tcnn); CPU always computes fp32.
    grid_precision: hash-grid tables and features on CUDA: fp32, or fp16 (tcnn's per-call fp16 copy of the
        fp32 master tables); CPU always fp32.
    grid_gradient_precision: how the Triton grid kernels sum the table gradient on CUDA: fp32, or fp16
        (tcnn's half2 atomics: half the bytes; needs loss scaling, which fp16 MLPs already bring).
    backend: auto | torch | triton for the encodings and MLPs.
    """

    encoding: dict = field(default_factory=dict)
    max_resolution: int = 2048
    density_network: dict = field(default_factory=dict)
    direction_encoding: dict = field(default_factory=dict)
    color_network: dict = field(default_factory=dict)
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    grid_precision: Literal["fp32", "fp16"] = "fp32"
    grid_gradient_precision: Literal["fp32", "fp16"] = "fp32"
    backend: Literal["auto", "torch", "triton"] = "auto"

    def validate(self, where: str) -> None:
        if self.max_resolution < 2:
            raise ConfigError(f"{where}.max_resolution: expected an integer >= 2, got {self.max_resolution}")
        # check the tcnn dicts now, at load, rather than when the networks are built
        for key, default in (("encoding", DEFAULT_ENCODING), ("direction_encoding", DEFAULT_DIRECTION_ENCODING)):
            config = merged(default, getattr(self, key))
            cls = encoding_class(config["otype"], f"{where}.{key}.otype")
            keys = {k: v for k, v in config.items() if k not in ("otype", "n_dims_to_encode", "n_features", "n_grid_features")}
            from_dict(cls.Config, keys, f"{where}.{key}")
        for key, default in (("density_network", DEFAULT_DENSITY_NETWORK), ("color_network", DEFAULT_COLOR_NETWORK)):
            config = merged(default, getattr(self, key))
            network_type(config.get("otype"), f"{where}.{key}.otype")
            from_dict(MLPConfig, {k: v for k, v in config.items() if k != "otype"}, f"{where}.{key}")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): stops early density spikes from blowing up."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class NerfField(nn.Module):
    """Density and colour at world points.

    Args:
        config: NerfFieldConfig.
        aabb: the box the hash grid covers, world units. (2, 3) float32
        aabb_scale: how many times larger than the scene's unit box that is (scales the finest resolution).
        where: config path for error messages.
    """

    def __init__(self, config: NerfFieldConfig, aabb: torch.Tensor, aabb_scale: float = 1.0, where: str = "model.field"):
        super().__init__()
        self.config = config
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        encoding = merged(DEFAULT_ENCODING, config.encoding)
        if encoding["otype"].lower() in ("hashgrid", "grid", "densegrid", "tiledgrid") and "per_level_scale" not in encoding:
            levels = int(encoding.get("n_levels", 16))
            finest = config.max_resolution * aabb_scale
            encoding["per_level_scale"] = math.exp(math.log(finest / encoding.get("base_resolution", 16)) / max(levels - 1, 1))
        dtype = PRECISIONS[config.precision]
        grid_dtypes = {"fp32": None, "fp16": torch.float16}
        self.encoding = create_encoding(3, encoding, backend=config.backend, where=f"{where}.encoding",
                                        dtype=grid_dtypes[config.grid_precision],
                                        gradient_dtype=grid_dtypes[config.grid_gradient_precision])
        self.density_net = create_network(self.encoding.n_output_dims, 16, merged(DEFAULT_DENSITY_NETWORK, config.density_network),
                                          dtype=dtype, backend=config.backend, where=f"{where}.density_network", seed=1337)
        self.direction_encoding = create_encoding(3, merged(DEFAULT_DIRECTION_ENCODING, config.direction_encoding),
                                                  backend=config.backend, where=f"{where}.direction_encoding")
        self.color_net = create_network(self.direction_encoding.n_output_dims + 16, 3,
                                        merged(DEFAULT_COLOR_NETWORK, config.color_network),
                                        dtype=dtype, backend=config.backend, where=f"{where}.color_network", seed=7331)

    def mlp_parameters(self) -> list[nn.Parameter]:
        return [*self.density_net.parameters(), *self.color_net.parameters(), *self.direction_encoding.parameters()]

    def encoding_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """World points (N, 3) -> [0, 1]^3 inside the box."""
        return (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 3) world -> sigma (N,) float32 per world unit, geometry features (N, 16) in the MLP dtype."""
        h = self.density_net(self.encoding(self.normalise(x)))
        return trunc_exp(h[:, 0].float()), h

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 3) world points, d: (N, 3) unit directions -> sigma (N,) float32, rgb (N, 3) float32 in [0, 1]."""
        sigma, h = self.density(x)
        sh = self.direction_encoding((d + 1.0) * 0.5)
        rgb = self.color_net(torch.cat([sh.to(h.dtype), h], dim=-1))
        return sigma, torch.sigmoid(rgb.float())

"""NeuS2's surface field: a hash-grid SDF network and a colour network on position, normal, view and feature.

    x (world) --box--> u in [0, 1]^3 --HashGrid--> (N, L*F) --x level mask--> g
    [x, g] --SDF MLP (softplus beta 100, geometric init)--> (sdf (N,), feature (N, n_geometry_features))
    normal = grad_x sdf                               (autograd; create_graph=True for the eikonal loss)
    [x, normal, d, feature] --colour MLP (ReLU)--> sigmoid --> rgb (N, 3)

Geometric initialisation (Atzmon & Lipman's SAL, as in IDR/NeuS): the SDF MLP starts as sdf(x) ~ |x - c| - r,
a sphere of `init_radius` around the box centre c, with the grid features' input weights zero, so the first
renders already have a surface to refine. The SDF MLP sees world positions relative to c (SDF values are in
world units, so the eikonal target |grad f| = 1 holds in world units).

Progressive training of the hash levels (NeuS2 sec. 3.3): only the first `active_levels` levels' features reach
the MLP; the method raises the count during training (`set_active_levels`). Masked levels get no gradient.
The MLPs are plain torch layers (cuBLAS on CUDA): the geometric initialisation needs biases, and the double
backward of the eikonal loss runs through them on any device; the grid runs the Triton kernels on CUDA
(`backend`), whose double backward feeds the eikonal loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ngraphics.config import deep_merge
from ngraphics.encodings import create_encoding
from ngraphics.errors import ConfigError

DEFAULT_SDF_ENCODING = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                        "base_resolution": 16}


@dataclass(frozen=True)
class SDFFieldConfig:
    """Keys of the `model.field` block for `method: neus`.

    encoding: tcnn dict of the position encoding over the box (default HashGrid 16 x 2, 2^19, base 16);
        HashGrid, DenseGrid, TiledGrid or Simplex.
    max_resolution: finest grid resolution over the box; sets per_level_scale unless the encoding does.
    sdf_neurons, sdf_hidden_layers: SDF MLP width and hidden layers (NeuS2: 64 x 1).
    geometry_features: features the SDF MLP hands the colour network besides the SDF value (NeuS2: 15).
    color_neurons, color_hidden_layers: colour MLP (NeuS2: 64 x 2).
    init_radius: radius of the initial sphere, world units.
    softplus_beta: sharpness of the SDF MLP's softplus (NeuS: 100).
    backend: auto | torch | triton for the encoding.
    """

    encoding: dict = field(default_factory=dict)
    max_resolution: int = 2048
    sdf_neurons: int = 64
    sdf_hidden_layers: int = 1
    geometry_features: int = 15
    color_neurons: int = 64
    color_hidden_layers: int = 2
    init_radius: float = 0.5
    softplus_beta: float = 100.0
    backend: str = "auto"

    def validate(self, where: str) -> None:
        for key in ("max_resolution", "sdf_neurons", "color_neurons"):
            if getattr(self, key) < 2:
                raise ConfigError(f"{where}.{key}: expected an integer >= 2, got {getattr(self, key)}")
        if self.sdf_hidden_layers < 1:
            raise ConfigError(f"{where}.sdf_hidden_layers: expected an integer >= 1, got {self.sdf_hidden_layers}")
        for key in ("color_hidden_layers", "geometry_features"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: expected an integer >= 0, got {getattr(self, key)}")
        if not self.init_radius > 0 or not self.softplus_beta > 0:
            raise ConfigError(f"{where}: init_radius and softplus_beta must be positive, got {self.init_radius}, "
                              f"{self.softplus_beta}")

    def encoding_config(self) -> dict:
        config = dict(self.encoding) if "otype" in self.encoding and \
            str(self.encoding["otype"]).lower() != "hashgrid" else deep_merge(DEFAULT_SDF_ENCODING, self.encoding)
        if "per_level_scale" not in config and "n_levels" in config and str(config["otype"]).lower() != "simplex":
            n = int(config["n_levels"])
            base = float(config.get("base_resolution", 16))
            config["per_level_scale"] = math.exp(math.log(self.max_resolution / base) / max(n - 1, 1))
        return config


def _mlp(widths: list[int], activation: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation)
    return nn.Sequential(*layers)


class SDFField(nn.Module):
    """Hash-grid SDF + colour network (see the module docstring).

    Args:
        config: SDFFieldConfig.
        aabb: the box the grid covers, world units. (2, 3) float32.
        where: config path for error messages.
    """

    def __init__(self, config: SDFFieldConfig, aabb: torch.Tensor, where: str = "model.field"):
        super().__init__()
        self.config = config
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.encoding = create_encoding(3, config.encoding_config(), backend=config.backend, where=f"{where}.encoding")
        spec = getattr(self.encoding, "spec", None)
        self.n_levels = int(spec.n_levels) if spec is not None else 1
        self.n_features = self.encoding.n_output_dims // self.n_levels
        self.register_buffer("active_levels", torch.tensor(self.n_levels, dtype=torch.int64))  # checkpoints
        self.active = self.n_levels  # the same count as a host int: no GPU sync per call
        n_in = 3 + self.encoding.n_output_dims
        self.sdf_net = _mlp([n_in] + [config.sdf_neurons] * config.sdf_hidden_layers
                            + [1 + config.geometry_features], nn.Softplus(beta=config.softplus_beta))
        self.color_net = _mlp([9 + config.geometry_features] + [config.color_neurons] * config.color_hidden_layers
                              + [3], nn.ReLU())
        self.geometric_init()

    @torch.no_grad()
    def geometric_init(self) -> None:
        """IDR/NeuS sphere initialisation: sdf(x) ~ |x - centre| - init_radius at the start."""
        linears = [m for m in self.sdf_net if isinstance(m, nn.Linear)]
        for i, layer in enumerate(linears):
            out_dim, in_dim = layer.weight.shape
            if i == len(linears) - 1:
                nn.init.normal_(layer.weight, mean=math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -self.config.init_radius)
            else:
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                nn.init.zeros_(layer.bias)
                if i == 0:
                    layer.weight[:, 3:] = 0.0  # grid features start silent: the sphere comes from x alone

    @property
    def centre(self) -> torch.Tensor:
        return self.aabb.mean(0)

    def set_active_levels(self, n: int) -> None:
        """Feed the first n hash levels (1 .. n_levels) to the SDF MLP, mask the finer ones."""
        self.active = max(1, min(int(n), self.n_levels))
        self.active_levels.fill_(self.active)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "active_levels"
        if key in state_dict:
            self.active = int(state_dict[key])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Grid features of world points with the finer levels masked. (N, 3) -> (N, L*F) float32."""
        u = ((x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)
        g = self.encoding(u).float()
        if self.active < self.n_levels:
            mask = (torch.arange(self.n_levels, device=x.device) < self.active).float()
            g = g * mask.repeat_interleave(self.n_features)
        return g

    def sdf_and_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF (N,) world units and geometry feature (N, geometry_features) at world points (N, 3)."""
        out = self.sdf_net(torch.cat([x - self.centre, self.features(x)], -1))
        return out[:, 0], out[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF at world points. (N, 3) -> (N,)."""
        return self.sdf_and_feature(x)[0]

    def sdf_with_gradient(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SDF, its gradient (the unnormalised normal) and the geometry feature at world points (N, 3).

        create_graph: keep the gradient differentiable (training: eikonal loss, NeuS alpha); False for renders.
        Returns: sdf (N,), gradient (N, 3), feature (N, geometry_features).
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sdf, feature = self.sdf_and_feature(x)
            (gradient,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)
        if not create_graph:
            sdf, feature = sdf.detach(), feature.detach()
        return sdf, gradient, feature

    def color(self, x: torch.Tensor, normals: torch.Tensor, directions: torch.Tensor,
              feature: torch.Tensor) -> torch.Tensor:
        """Colour at world points seen along unit directions. (N, 3) x 3, (N, G) -> (N, 3) in [0, 1]."""
        return torch.sigmoid(self.color_net(torch.cat([x - self.centre, normals, directions, feature], -1)))

    def encoding_parameters(self) -> list[nn.Parameter]:
        return list(self.encoding.parameters())

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.sdf_net.parameters()) + list(self.color_net.parameters())


__all__ = ["SDFField", "SDFFieldConfig"]

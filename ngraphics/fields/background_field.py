"""NeRF++'s background (Zhang et al. 2020, as NeuS uses it): a radiance field outside a sphere, in inverted-sphere
coordinates, composited behind the surface inside the sphere.

A point x outside the sphere of radius rho around c, at distance r = |x - c| / rho >= 1 (in radii), is

    (x - c) / (rho r) (its direction, a unit vector),   1 / r in (0, 1]

so the whole unbounded outside maps into the bounded cylinder S^2 x (0, 1] (`inverted_sphere`), which a
4D grid encoding covers: u = ((dir + 1) / 2, 1 / r) in [0, 1]^4. Samples along a ray outside the sphere are
evenly spaced in 1 / t from where the ray leaves the sphere to 1000 times that distance (`outside_bins`,
NeuS's `z_vals_outside`), so far-away space costs as much as near space per unit of 1 / r.

    u --grid (4D)--> features --MLP--> (density (softplus), feature) ; [feature, view dir] --MLP--> rgb
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ngraphics.encodings import create_encoding
from ngraphics.errors import ConfigError

DEFAULT_BACKGROUND_ENCODING = {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2,
                               "log2_hashmap_size": 17, "base_resolution": 4, "per_level_scale": 2.0}


def inverted_sphere(x: torch.Tensor, centre: torch.Tensor, radius: float) -> torch.Tensor:
    """NeRF++'s inverted-sphere coordinates of points outside a sphere (module docstring).

    x: world points. (N, 3) float; centre: (3,); radius: rho, world units.
    Returns (N, 4): (x - c) / |x - c| and rho / |x - c| (1 / r, clamped to [0, 1]: points inside the sphere
    map onto its surface).
    """
    p = (x - centre) / radius
    r = p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.cat([p / r, (1.0 / r).clamp(max=1.0)], -1)


def outside_bins(t_start: torch.Tensor, n: int, jitter: bool) -> torch.Tensor:
    """n + 1 bin edges per ray from t_start, evenly spaced in 1 / t down to 1 / (1000 t_start).

    t_start: (R,) float > 0, where the background begins (the sphere's exit). Returns (R, n + 1) ascending.
    """
    u = torch.linspace(1.0, 1e-3, n + 1, device=t_start.device, dtype=t_start.dtype).expand(t_start.shape[0], n + 1)
    if jitter:
        shift = (torch.rand(t_start.shape[0], n + 1, device=t_start.device) - 0.5) * ((1.0 - 1e-3) / n)
        shift[:, 0] = 0.0
        shift[:, -1] = 0.0
        u = u + shift.to(u.dtype)
    return t_start.clamp_min(1e-6)[:, None] / u


@dataclass(frozen=True)
class BackgroundFieldConfig:
    """Keys of the `model.background_field` block (used with `model.background: nerf++`).

    encoding: tcnn dict of the 4D encoding of (direction, 1 / r) (default HashGrid 8 x 2, 2^17, base 4, x2).
    neurons: width of the density and colour MLPs (one hidden layer each); features: density MLP -> colour.
    n_samples: samples per ray outside the sphere (NeuS: 32).
    backend: auto | torch | triton for the encoding.
    """

    encoding: dict = field(default_factory=dict)
    neurons: int = 64
    features: int = 15
    n_samples: int = 32
    backend: str = "auto"

    def validate(self, where: str) -> None:
        for key in ("neurons", "features", "n_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")


class BackgroundField(nn.Module):
    """Density and colour outside a sphere, in inverted-sphere coordinates (module docstring).

    Args:
        config: BackgroundFieldConfig; centre (3,), radius: the sphere, world units.
    """

    def __init__(self, config: BackgroundFieldConfig, centre: torch.Tensor, radius: float,
                 where: str = "model.background_field"):
        super().__init__()
        self.config, self.radius = config, float(radius)
        self.register_buffer("centre", centre.detach().clone().float())
        encoding = {**DEFAULT_BACKGROUND_ENCODING, **config.encoding} if \
            str(config.encoding.get("otype", "HashGrid")).lower() == "hashgrid" else dict(config.encoding)
        self.encoding = create_encoding(4, encoding, backend=config.backend, where=f"{where}.encoding")
        n = config.neurons
        self.density_net = nn.Sequential(nn.Linear(self.encoding.n_output_dims, n), nn.ReLU(),
                                         nn.Linear(n, 1 + config.features))
        self.color_net = nn.Sequential(nn.Linear(config.features + 3, n), nn.ReLU(), nn.Linear(n, 3))

    def forward(self, x: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (N,) >= 0 per world unit and colour (N, 3) in [0, 1] at world points seen along directions."""
        q = inverted_sphere(x, self.centre, self.radius)
        u = torch.cat([0.5 * (q[:, :3] + 1.0), q[:, 3:]], -1).clamp(0.0, 1.0)
        h = self.density_net(self.encoding(u).float())
        sigma = F.softplus(h[:, 0] - 1.0)
        rgb = torch.sigmoid(self.color_net(torch.cat([h[:, 1:], directions], -1)))
        return sigma, rgb


__all__ = ["BackgroundField", "BackgroundFieldConfig", "inverted_sphere", "outside_bins"]

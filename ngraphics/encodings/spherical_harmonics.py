"""`SphericalHarmonics`: real spherical harmonics of a direction, as in tiny-cuda-nn.

Input: unit directions v mapped into the unit cube, `x = (v + 1) / 2`; tcnn maps back with `v = 2x - 1`.
Output column `l^2 + l + m` (l = 0..degree-1, m = -l..l) is the real SH of band l, order m, in tcnn's
convention: with the complex Y_l^m including the Condon-Shortley phase (as scipy's), column value is
sqrt(2) Im Y_l^|m| for m < 0, Y_l^0 for m = 0 and sqrt(2) Re Y_l^m for m > 0 (so band 1 is
-c*y, c*z, -c*x with c = sqrt(3 / 4 pi)). The polynomials and constants are tcnn's (generated from the
recurrences of Sloan's "Stupid SH tricks"); they assume |v| = 1 and are evaluated as written otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngraphics.encodings.base import Encoding
from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class SphericalHarmonicsConfig:
    degree: int = 4

    def validate(self, where: str) -> None:
        if not 1 <= self.degree <= 8:
            raise ConfigError(f"{where}.degree: must be in 1..8 (tcnn implements up to 8), got {self.degree}")


def _band(l: int, x, y, z):
    """The 2l + 1 functions of band l, m = -l..l, in tcnn's order; x, y, z: (N,) on the unit sphere."""
    xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
    x4, y4, z4 = x2 * x2, y2 * y2, z2 * z2
    x6, y6, z6 = x4 * x2, y4 * y2, z4 * z2
    if l == 0:
        return [torch.full_like(x, 0.28209479177387814)]
    if l == 1:
        return [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if l == 2:
        return [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * z2 - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * x2 - 0.54627421529603959 * y2,
        ]
    if l == 3:
        return [
            0.59004358992664352 * y * (-3.0 * x2 + y2),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * z2),
            0.3731763325901154 * z * (5.0 * z2 - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * z2),
            1.4453057213202769 * z * (x2 - y2),
            0.59004358992664352 * x * (-x2 + 3.0 * y2),
        ]
    if l == 4:
        return [
            2.5033429417967046 * xy * (x2 - y2),
            1.7701307697799304 * yz * (-3.0 * x2 + y2),
            0.94617469575756008 * xy * (7.0 * z2 - 1.0),
            0.66904654355728921 * yz * (3.0 - 7.0 * z2),
            -3.1735664074561294 * z2 + 3.7024941420321507 * z4 + 0.31735664074561293,
            0.66904654355728921 * xz * (3.0 - 7.0 * z2),
            0.47308734787878004 * (x2 - y2) * (7.0 * z2 - 1.0),
            1.7701307697799304 * xz * (-x2 + 3.0 * y2),
            -3.7550144126950569 * x2 * y2 + 0.62583573544917614 * x4 + 0.62583573544917614 * y4,
        ]
    if l == 5:
        return [
            0.65638205684017015 * y * (10.0 * x2 * y2 - 5.0 * x4 - y4),
            8.3026492595241645 * xy * z * (x2 - y2),
            -0.48923829943525038 * y * (3.0 * x2 - y2) * (9.0 * z2 - 1.0),
            4.7935367849733241 * xy * z * (3.0 * z2 - 1.0),
            0.45294665119569694 * y * (14.0 * z2 - 21.0 * z4 - 1.0),
            0.1169503224534236 * z * (-70.0 * z2 + 63.0 * z4 + 15.0),
            0.45294665119569694 * x * (14.0 * z2 - 21.0 * z4 - 1.0),
            2.3967683924866621 * z * (x2 - y2) * (3.0 * z2 - 1.0),
            -0.48923829943525038 * x * (x2 - 3.0 * y2) * (9.0 * z2 - 1.0),
            2.0756623148810411 * z * (-6.0 * x2 * y2 + x4 + y4),
            0.65638205684017015 * x * (10.0 * x2 * y2 - x4 - 5.0 * y4),
        ]
    if l == 6:
        return [
            1.3663682103838286 * xy * (-10.0 * x2 * y2 + 3.0 * x4 + 3.0 * y4),
            2.3666191622317521 * yz * (10.0 * x2 * y2 - 5.0 * x4 - y4),
            2.0182596029148963 * xy * (x2 - y2) * (11.0 * z2 - 1.0),
            -0.92120525951492349 * yz * (3.0 * x2 - y2) * (11.0 * z2 - 3.0),
            0.92120525951492349 * xy * (-18.0 * z2 + 33.0 * z4 + 1.0),
            0.58262136251873131 * yz * (30.0 * z2 - 33.0 * z4 - 5.0),
            6.6747662381009842 * z2 - 20.024298714302954 * z4 + 14.684485723822165 * z6 - 0.31784601133814211,
            0.58262136251873131 * xz * (30.0 * z2 - 33.0 * z4 - 5.0),
            0.46060262975746175 * (x2 - y2) * (11.0 * z2 * (3.0 * z2 - 1.0) - 7.0 * z2 + 1.0),
            -0.92120525951492349 * xz * (x2 - 3.0 * y2) * (11.0 * z2 - 3.0),
            0.50456490072872406 * (11.0 * z2 - 1.0) * (-6.0 * x2 * y2 + x4 + y4),
            2.3666191622317521 * xz * (10.0 * x2 * y2 - x4 - 5.0 * y4),
            10.247761577878714 * x2 * y4
            - 10.247761577878714 * x4 * y2
            + 0.6831841051919143 * x6
            - 0.6831841051919143 * y6,
        ]
    if l == 7:
        return [
            0.70716273252459627 * y * (-21.0 * x2 * y4 + 35.0 * x4 * y2 - 7.0 * x6 + y6),
            5.2919213236038001 * xy * z * (-10.0 * x2 * y2 + 3.0 * x4 + 3.0 * y4),
            -0.51891557872026028 * y * (13.0 * z2 - 1.0) * (-10.0 * x2 * y2 + 5.0 * x4 + y4),
            4.1513246297620823 * xy * z * (x2 - y2) * (13.0 * z2 - 3.0),
            -0.15645893386229404 * y * (3.0 * x2 - y2) * (13.0 * z2 * (11.0 * z2 - 3.0) - 27.0 * z2 + 3.0),
            0.44253269244498261 * xy * z * (-110.0 * z2 + 143.0 * z4 + 15.0),
            0.090331607582517306 * y * (-135.0 * z2 + 495.0 * z4 - 429.0 * z6 + 5.0),
            0.068284276912004949 * z * (315.0 * z2 - 693.0 * z4 + 429.0 * z6 - 35.0),
            0.090331607582517306 * x * (-135.0 * z2 + 495.0 * z4 - 429.0 * z6 + 5.0),
            0.07375544874083044 * z * (x2 - y2) * (143.0 * z2 * (3.0 * z2 - 1.0) - 187.0 * z2 + 45.0),
            -0.15645893386229404 * x * (x2 - 3.0 * y2) * (13.0 * z2 * (11.0 * z2 - 3.0) - 27.0 * z2 + 3.0),
            1.0378311574405206 * z * (13.0 * z2 - 3.0) * (-6.0 * x2 * y2 + x4 + y4),
            -0.51891557872026028 * x * (13.0 * z2 - 1.0) * (-10.0 * x2 * y2 + x4 + 5.0 * y4),
            2.6459606618019 * z * (15.0 * x2 * y4 - 15.0 * x4 * y2 + x6 - y6),
            0.70716273252459627 * x * (-35.0 * x2 * y4 + 21.0 * x4 * y2 - x6 + 7.0 * y6),
        ]
    raise ValueError(f"no SH band {l}")


def spherical_harmonics_encode(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Args: x: directions mapped to the unit cube, (v + 1) / 2 with |v| = 1. (N, 3) float.
    degree: 1..8. Returns: (N, degree^2), column l^2 + l + m for band l < degree, order m = -l..l."""
    v = x * 2 - 1  # (N, 3) back to [-1, 1]^3
    vx, vy, vz = v.unbind(dim=1)
    return torch.stack([f for l in range(degree) for f in _band(l, vx, vy, vz)], dim=1)


class SphericalHarmonics(Encoding):
    """Directions (N, 3) as (v + 1) / 2 -> (N, degree^2) real spherical harmonics (tcnn's order and signs)."""

    otype = "SphericalHarmonics"
    Config = SphericalHarmonicsConfig

    def __init__(self, n_input_dims: int, config=None, **kwargs):
        super().__init__(n_input_dims, config, **kwargs)
        if n_input_dims != 3:
            raise ConfigError(
                f"SphericalHarmonics: encodes 3D directions only, got n_input_dims={n_input_dims}"
            )
        self.n_output_dims = self.config.degree**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return spherical_harmonics_encode(x, self.config.degree)

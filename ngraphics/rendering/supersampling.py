"""Supersampling: average renders at several points inside each pixel.

Photographs and Blender renders such as NeRF-synthetic integrate light over each pixel's area, while one
ray per pixel samples its centre, so edges and fine texture come out aliased against them. Rendering the
image `spp` times, each time with the cameras shifted by a sub-pixel offset, and averaging matches the
pixel's box filter (instant-ngp evaluates its NeRF-synthetic numbers with 8 samples per pixel). Any method
with `render(cameras, background)` can be supersampled this way: the shift lives in the cameras.
"""

from __future__ import annotations

import math

import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError

GOLDEN_RATIO = (1 + math.sqrt(5)) / 2


def subpixel_offsets(spp: int) -> torch.Tensor:
    """`spp` points in the pixel, as offsets from its centre in (-0.5, 0.5)^2. (spp, 2) float64.

    A rank-1 lattice: point k sits at ((k + 0.5) / n, ((a k mod n) + 0.5) / n) - 0.5 with n = spp and a the
    integer nearest n / golden ratio that is coprime with n. Each row and each column of an n x n grid of
    cells holds exactly one point (so near-horizontal and near-vertical edges get n levels of coverage, like
    the rotated-grid pattern that 4 gives), the points spread over the square for any count, and their mean
    is exactly the pixel centre (no shift of the image). 1 gives the centre."""
    if spp < 1:
        raise ConfigError(f"samples per pixel: expected a positive integer, got {spp}")
    candidates = [a for a in range(1, spp) if math.gcd(a, spp) == 1] or [0]
    a = min(candidates, key=lambda c: abs(c - spp / GOLDEN_RATIO))
    k = torch.arange(spp, dtype=torch.float64)
    return torch.stack([(k + 0.5) / spp, ((a * k) % spp + 0.5) / spp], -1) - 0.5


def render_supersampled(method, cameras: Cameras, background: torch.Tensor | None = None,
                        spp: int = 1) -> dict[str, torch.Tensor]:
    """`method.render` averaged over `spp` sub-pixel offsets (see `subpixel_offsets`); spp = 1 is one
    plain render. Returns the method's dict with every tensor averaged (images: (C, H, W, ch) each)."""
    offsets = subpixel_offsets(spp)
    if spp == 1:
        return method.render(cameras, background=background)
    total: dict[str, torch.Tensor] = {}
    for du, dv in offsets.tolist():
        out = method.render(cameras.shifted(du, dv), background=background)
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                total[key] = value.float() if key not in total else total[key] + value.float()
    return {key: value / spp for key, value in total.items()}

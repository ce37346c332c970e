"""Rendering from per-sample opacities (nerfacc's `render_weight_from_alpha` / `accumulate_along_rays`).

Methods whose samples carry an opacity alpha_i rather than a density (NeuS: alpha from SDF values, see
`ngraphics.rendering.sdf`) composite with these. Samples are packed as in `ngraphics.rendering.compositing`:
`ray_indices (N,)` sorted ascending, `offsets (R + 1,)`, the samples of ray r at offsets[r]:offsets[r + 1],
front to back.

    T_i = prod_{j < i} (1 - alpha_j)        transmittance in front of sample i
    w_i = T_i alpha_i                       its weight
    value(ray) = sum_i w_i v_i              (`accumulate_along_rays`)

The product is a per-ray exclusive sum of log(1 - alpha) (float64, `exclusive_sum_packed`); alpha is clamped
below 1 - 1e-7 inside the log only, so an opaque sample (alpha = 1) ends its ray with T = ~1e-7 behind it.
"""

from __future__ import annotations

import torch

from ngraphics.rendering.compositing import exclusive_sum_packed

_ALPHA_MAX = 1.0 - 1e-7


def transmittance_from_alpha(alphas: torch.Tensor, ray_indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Transmittance in front of each sample.

    Args:
        alphas: opacities. (N,) float in [0, 1].
        ray_indices, offsets: packing (module docstring).
    Returns: T (N,) float32 in [0, 1], differentiable w.r.t. alphas.
    """
    log_keep = torch.log1p(-alphas.clamp(0.0, _ALPHA_MAX).to(torch.float64))
    return torch.exp(exclusive_sum_packed(log_keep, ray_indices, offsets)).float()


def render_weight_from_alpha(alphas: torch.Tensor, ray_indices: torch.Tensor,
                             offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights w_i = T_i alpha_i of packed samples.

    Args:
        alphas: opacities. (N,) float in [0, 1].
        ray_indices, offsets: packing (module docstring).
    Returns: weights (N,) float32, transmittances T (N,) float32; differentiable w.r.t. alphas.
    """
    T = transmittance_from_alpha(alphas, ray_indices, offsets)
    return T * alphas.float(), T


def accumulate_along_rays(weights: torch.Tensor, ray_indices: torch.Tensor, n_rays: int,
                          values: torch.Tensor | None = None) -> torch.Tensor:
    """Per-ray weighted sums of sample values.

    Args:
        weights: (N,) float.
        ray_indices: (N,) int64.
        n_rays: R.
        values: (N, D) float, or None to sum the weights themselves (accumulated opacity).
    Returns: (R, D) float32, or (R,) when values is None. Rays without samples get 0.
    """
    w = weights.float()
    if values is None:
        return torch.zeros(n_rays, dtype=torch.float32, device=w.device).index_add(0, ray_indices, w)
    out = torch.zeros(n_rays, values.shape[-1], dtype=torch.float32, device=w.device)
    return out.index_add(0, ray_indices, w[:, None] * values.float())


def composite_over(front: torch.Tensor, front_alpha: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """Colour of a front layer over what lies behind it: front + (1 - front_alpha) back.

    front: premultiplied colour accumulated along the front part of the rays (`accumulate_along_rays`). (R, 3)
    front_alpha: its accumulated opacity. (R,) in [0, 1]
    back: premultiplied colour behind it, opaque backgrounds included. (R, 3) or (3,)
    Returns (R, 3). The same as compositing the front samples, then the back ones, along one ray.
    """
    return front + (1.0 - front_alpha)[:, None] * back


__all__ = ["accumulate_along_rays", "composite_over", "render_weight_from_alpha", "transmittance_from_alpha"]

"""NeuS volume rendering of a signed distance field (Wang et al. 2021): opacities from SDF values, and the
sampling along rays that goes with it (uniform, then importance samples near the zero crossing).

Discrete opacity of the section [t_i, t_{i+1}] of a ray (NeuS eq. 13), with Phi_s(x) = sigmoid(s x) and s the
learned sharpness ("inv_s", the inverse standard deviation of the logistic density):

    alpha_i = max((Phi_s(f(t_i)) - Phi_s(f(t_{i+1}))) / Phi_s(f(t_i)), 0)

NeuS does not evaluate the SDF at both ends: it takes one value f at the section's midpoint and estimates
the ends from the directional derivative `cos` = <d, grad f> over the section length delta:

    f(t_i) ~ f - cos delta / 2,   f(t_{i+1}) ~ f + cos delta / 2

with cos annealed from "always facing the ray" (-|cos|, and -(1 - cos) / 2 early on, so back faces still get
gradients) to the true value (`anneal` from 0 to 1; NeuS's `cos_anneal_ratio`).
Weights from these opacities: `ngraphics.rendering.alpha.render_weight_from_alpha`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neus_alpha(sdf_prev: torch.Tensor, sdf_next: torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """NeuS's discrete opacity from the SDF at both ends of each section.

    Args:
        sdf_prev, sdf_next: f(t_i), f(t_{i+1}). (...) float, same shape.
        inv_s: sharpness s > 0, a float or a 0-dim / broadcastable tensor (learned: differentiable).
    Returns: alpha (...) float in [0, 1].
    """
    prev_cdf = torch.sigmoid(sdf_prev * inv_s)
    next_cdf = torch.sigmoid(sdf_next * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def annealed_cos(true_cos: torch.Tensor, anneal: float) -> torch.Tensor:
    """NeuS's `iter_cos`: the directional derivative used to estimate section ends, <= 0.

    true_cos: <d, grad f>. (...) float; anneal: in [0, 1] (0: -(1 - cos) / 2 clamped, 1: -relu(-cos)).
    """
    return -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - anneal) + F.relu(-true_cos) * anneal)


def neus_alpha_midpoint(sdf: torch.Tensor, true_cos: torch.Tensor, deltas: torch.Tensor,
                        inv_s: torch.Tensor | float, anneal: float = 1.0) -> torch.Tensor:
    """NeuS's opacity from the SDF at section midpoints (see the module docstring).

    Args:
        sdf: f at each section's midpoint. (N,) float.
        true_cos: <ray direction, grad f> there. (N,) float.
        deltas: section lengths. (N,) float, >= 0.
        inv_s: sharpness s; anneal: cos annealing in [0, 1].
    Returns: alpha (N,) in [0, 1], differentiable w.r.t. sdf, true_cos and inv_s.
    """
    cos = annealed_cos(true_cos, anneal)
    return neus_alpha(sdf - cos * deltas * 0.5, sdf + cos * deltas * 0.5, inv_s)


def ray_box_range(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor,
                  near: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays enter and leave a box (slab test).

    Args:
        origins, directions: (R, 3) float.
        aabb: (2, 3) float, min row, max row.
        near: rays start no closer than this.
    Returns: t_near (R,), t_far (R,), hit (R,) bool (t_far > t_near; misses get t_near = t_far = near).
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0, t1 = (aabb[0] - origins) * inv, (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(near)
    t_far = torch.maximum(t0, t1).amin(-1)
    hit = t_far > t_near
    t_near = torch.where(hit, t_near, torch.full_like(t_near, near))
    return t_near, torch.where(hit, t_far, t_near), hit


def ray_sphere_range(origins: torch.Tensor, directions: torch.Tensor, centre: torch.Tensor, radius: float,
                     near: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays enter and leave a sphere (NeuS's foreground region with a NeRF++ background).

    Args:
        origins, directions: (R, 3) float, unit directions.
        centre: (3,) float; radius: world units.
        near: rays start no closer than this.
    Returns: t_near (R,), t_far (R,), hit (R,) bool (t_far > t_near; misses get t_near = t_far = the point of
    closest approach, clamped to near: where a background behind the sphere starts).
    """
    mid = -((origins - centre) * directions).sum(-1)  # closest approach
    d2 = ((origins - centre) + mid[:, None] * directions).square().sum(-1)
    half = torch.sqrt((radius * radius - d2).clamp_min(0.0))
    t_far = (mid + half).clamp_min(near)
    t_near = (mid - half).clamp_min(near)
    hit = (d2 < radius * radius) & (t_far > t_near)
    return torch.where(hit, t_near, t_far), t_far, hit


def stratified_bins(t_near: torch.Tensor, t_far: torch.Tensor, n: int, jitter: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """n + 1 bin edges per ray from t_near to t_far, the inner edges jittered within their bins.

    t_near, t_far: (R,) float. Returns (R, n + 1) float, ascending per ray.
    """
    u = torch.linspace(0.0, 1.0, n + 1, device=t_near.device, dtype=t_near.dtype).expand(t_near.shape[0], n + 1)
    if jitter:
        shift = (torch.rand(t_near.shape[0], n + 1, device=t_near.device, generator=generator) - 0.5) / n
        shift[:, 0] = 0.0
        shift[:, -1] = 0.0
        u = u + shift.to(u.dtype)
    return t_near[:, None] + (t_far - t_near)[:, None] * u


def sample_pdf(edges: torch.Tensor, weights: torch.Tensor, n: int, jitter: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverse-transform samples from the piecewise-constant density of `weights` over bins `edges`.

    Args:
        edges: (R, S + 1) ascending; weights: (R, S) >= 0 (a small constant is added: no empty pdf).
        n: samples per ray; jitter: random (True) or evenly spaced (False) quantiles.
    Returns: (R, n) positions, ascending per ray, no gradient.
    """
    weights = weights.detach() + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, S + 1)
    R = edges.shape[0]
    if jitter:
        u = torch.rand(R, n, device=edges.device, generator=generator).to(cdf.dtype)
        u = torch.sort(u, -1).values
    else:
        u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=edges.device, dtype=cdf.dtype).expand(R, n).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    e0, e1 = edges.gather(1, idx - 1), edges.gather(1, idx)
    frac = (u - c0) / (c1 - c0).clamp_min(1e-12)
    return (e0 + frac * (e1 - e0)).detach()


def importance_weights(t: torch.Tensor, sdf: torch.Tensor, inv_s: float) -> torch.Tensor:
    """NeuS's `up_sample` weights: opacities of the sections between consecutive samples from the SDF at
    both ends, with the slope taken as the smaller (more negative) of its own and the previous section's,
    clamped to [-1e3, 0] (entering a surface only). No gradient.

    t: (R, S) ascending positions; sdf: (R, S) values there; inv_s: fixed sharpness.
    Returns: weights (R, S - 1) of the sections.
    """
    with torch.no_grad():
        dt = (t[:, 1:] - t[:, :-1]).clamp_min(1e-6)
        mid = 0.5 * (sdf[:, 1:] + sdf[:, :-1])
        slope = (sdf[:, 1:] - sdf[:, :-1]) / dt
        prev = torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], -1)
        slope = torch.minimum(slope, prev).clamp(-1e3, 0.0)
        alpha = neus_alpha(mid - slope * dt * 0.5, mid + slope * dt * 0.5, inv_s)
        keep = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], -1), -1)[:, :-1]
        return alpha * keep


__all__ = ["annealed_cos", "importance_weights", "neus_alpha", "neus_alpha_midpoint", "ray_box_range",
           "ray_sphere_range", "sample_pdf", "stratified_bins"]

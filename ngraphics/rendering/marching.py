"""Ray marching through an occupancy grid: skip empty cells, stop where the ray is used up.

`march` places samples along each ray with Instant-NGP's step rule (a fixed `step_size`, growing with distance
as `t * cone_angle` when cone_angle > 0, capped at `max_step`), keeps those whose midpoint lies in an occupied
cell, and, given a density callback, drops the samples behind the point where transmittance falls below
`early_stop_eps` (and those with opacity below `alpha_thre`). The caller owns the field: like nerfacc's
estimator, the callback gets `(t_starts, t_ends, ray_indices)` and returns densities, so any model fits.

`march` dispatches through `ngraphics.ops` (op `march`). `march_torch` is the torch reference: it builds
every candidate step of every ray, (R, S) at once, and compacts with `nonzero` (one host sync per
compaction); `ngraphics.kernels.marching.march_triton` is its twin. Samples are packed: see
`ngraphics.rendering.compositing`.

Fixed-size buffers (training). With `capacity`, the samples come back in buffers of exactly that many
entries, so nothing downstream needs the sample count on the host (no sync; shapes known in advance).
Rays are kept whole, in order, while they fit: the first `n_valid_rays` rays own their samples as usual,
the rays after them own none (and are excluded from the loss by the caller), and the tail of the buffer is
padding: zero-length segments [0, 0) of the last ray, past `offsets[-1]`, which no compositing reads and
which carry zero weight and zero gradient anyway (alpha = 1 - exp(-sigma * 0) = 0). Instant-NGP sizes its
training batches the same way. `fit_to_capacity` does the packing, in torch ops without host syncs, for
both backends.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ngraphics import ops
from ngraphics.rendering.compositing import offsets_from_counts, transmittance_packed
from ngraphics.rendering.occupancy import OccupancyGrid


@dataclass
class RaySamples:
    """Packed samples of R rays.

    Attributes:
        ray_indices: ray of each sample. (N,) int64, sorted ascending.
        t_starts, t_ends: segment bounds along the ray. (N,) float32, world units.
        offsets: samples of ray r are offsets[r]:offsets[r + 1]. (R + 1,) int64
        n_valid_rays, n_candidates: fixed-size buffers only (`fit_to_capacity`), 0-dim int64: the rays that
            own all their samples, and their samples before the early-stop test.
    """

    ray_indices: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor
    offsets: torch.Tensor
    n_valid_rays: torch.Tensor | None = None
    n_candidates: torch.Tensor | None = None

    def __len__(self) -> int:
        """Buffer length: the sample count, or the capacity for fixed-size buffers (see `fit_to_capacity`)."""
        return self.ray_indices.shape[0]

    @property
    def n_samples(self) -> torch.Tensor:
        """Samples in use (excluding padding), 0-dim int64 on the samples' device (no host sync)."""
        return self.offsets[-1]

    def ray_valid(self) -> torch.Tensor:
        """Rays that own all their samples. (R,) bool: all True unless the samples were fit to a capacity."""
        rays = torch.arange(self.n_rays, device=self.offsets.device)
        return rays < (self.n_rays if self.n_valid_rays is None else self.n_valid_rays)

    @property
    def n_rays(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def counts(self) -> torch.Tensor:
        """Samples per ray. (R,) int64"""
        return self.offsets[1:] - self.offsets[:-1]

    def select(self, keep: torch.Tensor) -> RaySamples:
        """The samples where `keep` (N,) bool is True (order kept; one host sync)."""
        ray_indices = self.ray_indices[keep]
        counts = torch.zeros(self.n_rays, dtype=torch.int64, device=keep.device)
        counts.index_add_(0, self.ray_indices, keep.to(torch.int64))
        return RaySamples(ray_indices, self.t_starts[keep], self.t_ends[keep], offsets_from_counts(counts))


def fit_to_capacity(samples: RaySamples, capacity: int, keep: torch.Tensor | None = None) -> RaySamples:
    """The kept samples in fixed-size buffers of `capacity` entries, whole rays in order while they fit.

    No host sync: every size is known in advance, the counts stay on the device.

    Args:
        samples: packed samples, possibly already padded (entries past `offsets[-1]` are ignored, and so are
            the samples of rays past `n_valid_rays`). R >= 1 rays.
        capacity: entries of the returned buffers.
        keep: (N,) bool, samples to keep (default all), e.g. the early-stop test; order is preserved.
    Returns: RaySamples with (capacity,) buffers: rays 0 .. n_valid_rays - 1 own their kept samples at
        offsets[r]:offsets[r + 1]; later rays own none; entries past offsets[-1] are zero-length segments
        [0, 0) of ray R - 1. n_valid_rays: 0-dim int64 (the rays whose kept samples all fit);
        n_candidates: 0-dim int64, their samples before `keep`.
    """
    N, R, device = len(samples), samples.n_rays, samples.offsets.device
    if R < 1:
        raise ValueError("fit_to_capacity: needs at least one ray")
    live = torch.arange(N, device=device) < samples.offsets[-1]
    keep = live if keep is None else keep & live
    if samples.n_valid_rays is not None:
        keep = keep & (samples.ray_indices < samples.n_valid_rays)
    counts = torch.zeros(R, dtype=torch.int64, device=device).index_add_(0, samples.ray_indices, keep.long())
    n_fit = (torch.cumsum(counts, 0) <= capacity).sum()  # counts >= 0, so the fitting rays are a prefix
    if samples.n_valid_rays is not None:
        n_fit = torch.minimum(n_fit, samples.n_valid_rays)
    n_candidates = (live & (samples.ray_indices < n_fit)).sum()
    keep = keep & (samples.ray_indices < n_fit)
    counts = torch.where(torch.arange(R, device=device) < n_fit, counts, 0)
    dest = torch.where(keep, torch.cumsum(keep, 0) - 1, capacity)  # dropped samples land in a spare slot
    out = []
    for src, fill in ((samples.ray_indices, R - 1), (samples.t_starts, 0.0), (samples.t_ends, 0.0)):
        buffer = torch.full((capacity + 1,), fill, dtype=src.dtype, device=device)
        out.append(buffer.index_copy_(0, dest, src)[:capacity])
    return RaySamples(*out, offsets_from_counts(counts), n_fit, n_candidates)


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through a box (slab method).

    Args:
        origins, directions: rays. (R, 3) float32; directions need not be unit length (t is in their units).
        aabb: (2, 3) float32, min row, max row.
    Returns: t_near, t_far (R,) float32; rays that miss the box have t_far < t_near. t_near may be negative
    for origins inside the box.
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def step_edges(
    t0: torch.Tensor, n_steps: int, step_size: float, cone_angle: float = 0.0, max_step: float = math.inf
) -> torch.Tensor:
    """Segment edges t_0 < t_1 < ... < t_S of each ray under the step rule dt = clamp(t * cone_angle, step_size,
    max_step), in closed form: constant steps until t * cone_angle reaches step_size, geometric growth
    (t_{k+1} = t_k (1 + cone_angle)) until it reaches max_step, constant max_step after that.

    Args:
        t0: start of each ray. (R,) float32
        n_steps: S.
    Returns: (R, S + 1) float32.
    """
    k = torch.arange(n_steps + 1, device=t0.device, dtype=torch.float32)[None, :]
    t0 = t0[:, None]
    if cone_angle <= 0.0:
        return t0 + k * step_size
    max_step = max(max_step, step_size)
    t_a, t_b = step_size / cone_angle, max_step / cone_angle
    n1 = torch.ceil((t_a - t0).clamp_min(0.0) / step_size)
    s1 = t0 + n1 * step_size
    growth = math.log1p(cone_angle)
    n2 = torch.ceil(torch.log((t_b / s1.clamp_min(1e-12)).clamp_min(1.0)) / growth)
    s2 = s1 * torch.exp(n2 * growth)
    linear = t0 + k * step_size
    geometric = s1 * torch.exp((k - n1) * growth)
    far = s2 + (k - n1 - n2) * max_step
    return torch.where(k <= n1, linear, torch.where(k <= n1 + n2, geometric, far))


@functools.lru_cache(maxsize=64)
def steps_to_cover(t0: float, length: float, step_size: float, cone_angle: float, max_step: float) -> int:
    """How many steps of the rule in `step_edges` cover [t0, t0 + length] (host-side, for buffer sizes)."""
    if cone_angle <= 0.0:
        return max(1, math.ceil(length / step_size))
    max_step = max(max_step, step_size)
    t_end = t0 + length
    t_a, t_b = step_size / cone_angle, max_step / cone_angle
    n1 = math.ceil(max(t_a - t0, 0.0) / step_size)
    s1 = t0 + n1 * step_size
    growth = math.log1p(cone_angle)
    n2 = math.ceil(math.log(max(t_b / max(s1, 1e-12), 1.0)) / growth)
    s2 = s1 * math.exp(n2 * growth)
    if t_end <= s1:
        return max(1, math.ceil((t_end - t0) / step_size))
    if t_end <= s2:
        return n1 + math.ceil(math.log(t_end / s1) / growth)
    return n1 + n2 + math.ceil((t_end - s2) / max_step)


DensityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def march(
    origins: torch.Tensor,
    directions: torch.Tensor,
    grid: OccupancyGrid,
    *,
    step_size: float,
    near: float = 0.0,
    far: float = 1e10,
    cone_angle: float = 0.0,
    max_step: float = math.inf,
    density_fn: DensityFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    jitter: bool = False,
    max_steps: int = 4096,
    capacity: int | None = None,
    candidate_capacity: int | None = None,
    backend: str = "auto",
) -> RaySamples:
    """Samples along rays in occupied space, front to back.

    Args:
        origins, directions: rays. (R, 3) float32, unit directions (t is then a distance).
        grid: occupancy grid; nothing outside `grid.outer_aabb` is sampled.
        step_size: smallest step, world units (instant-ngp: sqrt(3) * box size / 1024).
        near, far: ray range, world units.
        cone_angle: step growth with distance (0 = constant steps; instant-ngp uses 1/256 for large scenes).
        max_step: largest step, world units.
        density_fn: optional `(t_starts (N,), t_ends (N,), ray_indices (N,)) -> sigmas (N,)`, called once under
            no_grad to drop samples behind the early-stop point and transparent ones.
        early_stop_eps: drop samples whose transmittance T is below this (needs density_fn).
        alpha_thre: drop samples whose opacity 1 - exp(-sigma dt) is below this (needs density_fn).
        jitter: move each ray's first step by a random fraction of step_size (training).
        max_steps: cap on candidate steps per ray (keeps the (R, S) buffer bounded).
        capacity: None, or return fixed-size buffers of this many samples (`fit_to_capacity`; no host sync
            on the Triton path).
        candidate_capacity: with capacity, the buffer for the samples before the early-stop test (default
            capacity); rays that do not fit in it are dropped before the density callback runs.
        backend: auto | torch | triton (`ngraphics.ops`, op `march`: `march_torch` or
            `ngraphics.kernels.marching.march_triton`, same samples).
    Returns: RaySamples. Not differentiable (distances only).
    """
    impl = ops.kernel("march") if ops.use_kernel("march", backend, origins.device) else march_torch
    return impl(origins, directions, grid, step_size=step_size, near=near, far=far, cone_angle=cone_angle,
                max_step=max_step, density_fn=density_fn, early_stop_eps=early_stop_eps,
                alpha_thre=alpha_thre, jitter=jitter, max_steps=max_steps, capacity=capacity,
                candidate_capacity=candidate_capacity)


def march_torch(
    origins: torch.Tensor,
    directions: torch.Tensor,
    grid: OccupancyGrid,
    *,
    step_size: float,
    near: float = 0.0,
    far: float = 1e10,
    cone_angle: float = 0.0,
    max_step: float = math.inf,
    density_fn: DensityFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    jitter: bool = False,
    max_steps: int = 4096,
    capacity: int | None = None,
    candidate_capacity: int | None = None,
) -> RaySamples:
    """The torch reference of `march` (same arguments but `backend`, same samples): every candidate step of
    every ray, (R, S) at once, compacted with `nonzero`. Twin of `ngraphics.kernels.marching.march_triton`."""
    R = origins.shape[0]
    aabb = grid.outer_aabb.to(origins.device)
    t_near, t_far = ray_aabb(origins, directions, aabb)
    t_near = t_near.clamp_min(near)
    t_far = t_far.clamp_max(far)
    hit = t_far > t_near
    if jitter:
        t_near = t_near + torch.rand_like(t_near) * step_size
    S = min(max_steps, steps_to_cover(float(near), grid.outer_diagonal, step_size, cone_angle, max_step))

    with torch.no_grad():
        edges = step_edges(t_near, S, step_size, cone_angle, max_step)  # (R, S + 1)
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        t_mid = 0.5 * (t_starts + t_ends)
        x = origins[:, None, :] + directions[:, None, :] * t_mid[..., None]  # (R, S, 3)
        mask = grid.query(x.reshape(-1, 3)).reshape(R, S)
        mask &= (t_starts < t_far[:, None]) & hit[:, None]
        counts = mask.sum(1)
        ray_idx, step_idx = mask.nonzero(as_tuple=True)  # row-major: rays ascending, steps ascending
        samples = RaySamples(
            ray_idx, t_starts[ray_idx, step_idx].contiguous(), t_ends[ray_idx, step_idx].contiguous(),
            offsets_from_counts(counts),
        )
        if capacity is not None:
            samples = fit_to_capacity(samples, candidate_capacity or capacity)
        early_stop = density_fn is not None and (early_stop_eps > 0.0 or alpha_thre > 0.0)
        if not early_stop or len(samples) == 0:
            return samples if capacity is None else fit_to_capacity(samples, capacity)
        sigmas = density_fn(samples.t_starts, samples.t_ends, samples.ray_indices).reshape(-1)
        keep = early_stop_mask(sigmas, samples, early_stop_eps, alpha_thre)
        return samples.select(keep) if capacity is None else fit_to_capacity(samples, capacity, keep)


def early_stop_mask(sigmas: torch.Tensor, samples: RaySamples, early_stop_eps: float, alpha_thre: float) -> torch.Tensor:
    """Samples to keep: transmittance T >= early_stop_eps and opacity alpha >= alpha_thre (either test off at
    <= 0). sigmas: (N,) densities of the samples. Returns (N,) bool."""
    T, alpha = transmittance_packed(sigmas, samples.t_starts, samples.t_ends, samples.ray_indices, samples.offsets)
    keep = torch.ones_like(T, dtype=torch.bool)
    if early_stop_eps > 0.0:
        keep &= T >= early_stop_eps
    if alpha_thre > 0.0:
        keep &= alpha >= alpha_thre
    return keep

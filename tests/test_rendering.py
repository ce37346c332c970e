"""Compositing, marching, occupancy grid and camera paths against float64 loops and analytic cases."""

from __future__ import annotations

import math

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.rendering.camera_paths import focus_point, make_path, orbit
from ngraphics.rendering.compositing import composite, offsets_from_counts
from ngraphics.rendering.marching import (
    RaySamples,
    fit_to_capacity,
    march,
    ray_aabb,
    step_edges,
    steps_to_cover,
)
from ngraphics.rendering.occupancy import OccupancyGrid


def _packed(counts: list[int], dtype=torch.float32):
    counts_t = torch.tensor(counts, dtype=torch.int64)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), counts_t)
    N = int(counts_t.sum())
    dt = torch.rand(N, dtype=dtype) * 0.2 + 0.01
    t_starts = torch.zeros(N, dtype=dtype)
    for r in range(len(counts)):  # increasing segments along each ray
        idx = (ray_indices == r).nonzero()[:, 0]
        if len(idx):
            t_starts[idx] = 1.0 + torch.cumsum(dt[idx], 0) - dt[idx]
    return ray_indices, offsets_from_counts(counts_t), t_starts, t_starts + dt


def _composite_loop(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, background):
    """Independent float64 oracle: march each ray front to back, T *= 1 - alpha."""
    rgb_out, alpha_out, depth_out, weights = [], [], [], [None] * len(sigmas)
    for r in range(n_rays):
        T = torch.ones((), dtype=torch.float64)
        c = torch.zeros(3, dtype=torch.float64)
        acc = torch.zeros((), dtype=torch.float64)
        dep = torch.zeros((), dtype=torch.float64)
        for i in range(len(sigmas)):
            if int(ray_indices[i]) != r:
                continue
            a = 1 - torch.exp(-sigmas[i] * (t_ends[i] - t_starts[i]))
            w = T * a
            weights[i] = w
            c = c + w * rgbs[i]
            acc = acc + w
            dep = dep + w * 0.5 * (t_starts[i] + t_ends[i])
            T = T * (1 - a)
        rgb_out.append(c + (1 - acc) * background[r])
        alpha_out.append(acc)
        depth_out.append(dep / acc if acc > 0 else dep)
    return torch.stack(rgb_out), torch.stack(alpha_out), torch.stack(depth_out), torch.stack(weights)


def test_composite_matches_float64_loop_forward_and_backward():
    counts = [3, 0, 1, 17, 5, 0, 37]
    ray_indices, offsets, t_starts, t_ends = _packed(counts)
    N, R = len(ray_indices), len(counts)
    sigmas = (torch.rand(N) * 20).requires_grad_()
    rgbs = torch.rand(N, 3).requires_grad_()
    bg = torch.rand(R, 3).requires_grad_()
    out = composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, bg)

    s64, c64, b64 = (v.detach().double().requires_grad_() for v in (sigmas, rgbs, bg))
    ref = _composite_loop(s64, c64, t_starts.double(), t_ends.double(), ray_indices, R, b64)
    for got, want in zip((out["rgb"], out["alpha"], out["depth"], out["weights"]), ref):
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)

    g_rgb, g_alpha, g_depth = torch.randn(R, 3), torch.randn(R), torch.randn(R)
    (out["rgb"] * g_rgb).sum().add((out["alpha"] * g_alpha).sum()).add((out["depth"] * g_depth).sum()).backward()
    (ref[0] * g_rgb.double()).sum().add((ref[1] * g_alpha.double()).sum()).add((ref[2] * g_depth.double()).sum()).backward()
    for got, want in ((sigmas, s64), (rgbs, c64), (bg, b64)):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-4, rtol=1e-4)


def test_composite_opaque_first_sample_and_empty_rays():
    ray_indices = torch.tensor([0, 0])
    out = composite(torch.tensor([1e4, 1e4]), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([0.0, 1.0]),
                    torch.tensor([1.0, 2.0]), ray_indices, torch.tensor([0, 2, 2]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out["rgb"], torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    torch.testing.assert_close(out["alpha"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out["depth"][0], torch.tensor(0.5))


def test_step_edges_follow_the_sequential_rule():
    dmin, cone, dmax = 0.01, 1 / 64, 0.08
    t0 = torch.tensor([0.0, 0.3, 0.9, 7.0])
    edges = step_edges(t0, 300, dmin, cone, dmax).double()
    steps = edges[:, 1:] - edges[:, :-1]
    assert (steps > 0).all()
    # every step is the rule's clamp(t * cone, dmin, dmax) up to one step of growth (the closed form rounds
    # the phase boundaries up to whole steps)
    rule = (edges[:, :-1] * cone).clamp(dmin, dmax)
    assert (steps >= rule * (1 - 1e-4) - 1e-7).all() and (steps <= rule * (1 + cone) + 1e-6).all()
    # steps_to_cover is the host-side count of the same sequence
    for r in range(len(t0)):
        n = steps_to_cover(float(t0[r]), 2.0, dmin, cone, dmax)
        assert edges[r, n] >= t0[r] + 2.0 - 1e-5 and edges[r, n - 1] < t0[r] + 2.0


def test_ray_aabb_analytic():
    o = torch.tensor([[-2.0, 0.5, 0.5], [0.5, 0.5, 0.5], [-2.0, 3.0, 0.5]])
    d = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    t0, t1 = ray_aabb(o, d, torch.tensor([[0.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(t0[:2], torch.tensor([2.0, -0.5]))
    torch.testing.assert_close(t1[:2], torch.tensor([3.0, 0.5]))
    assert t1[2] < t0[2]  # miss


def _slab_grid(res: int = 16) -> OccupancyGrid:
    """Unit-cube grid whose only occupied cells are those with x in [0.5, 0.75)."""
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), resolution=res, levels=1)
    ijk = grid._grid_coords(torch.arange(res**3))
    grid.binary[0] = (ijk[:, 0] >= res // 2) & (ijk[:, 0] < 3 * res // 4)
    return grid


def test_march_skips_empty_cells():
    grid = _slab_grid()
    R = 37
    origins = torch.cat([torch.full((R, 1), -1.0), torch.rand(R, 2) * 0.9 + 0.05], 1)
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(R, 3)
    step = 1 / 256
    s = march(origins, directions, grid, step_size=step)
    mid = 0.5 * (s.t_starts + s.t_ends)
    x = origins[s.ray_indices, 0] + mid  # world x of each sample
    assert ((x >= 0.5) & (x < 0.75)).all()  # only occupied cells
    # every ray crosses the slab: 0.25 / step samples, give or take the cell-boundary one
    assert ((s.counts - 0.25 / step).abs() <= 1).all()
    assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()
    # rays missing the box get nothing
    miss = march(torch.tensor([[-1.0, 2.0, 0.5]]), torch.tensor([[1.0, 0, 0]]), grid, step_size=step)
    assert len(miss) == 0 and miss.counts.tolist() == [0]


def test_march_stops_early_at_the_transmittance_threshold():
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), resolution=8, levels=1)  # all occupied
    sigma0, a, eps, step = 40.0, 0.3, 1e-3, 1 / 512
    origins = torch.tensor([[-1.0, 0.5, 0.5], [-1.0, 0.2, 0.7]])
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3)

    def sigma_fn(t_starts, t_ends, ray_indices):  # an opaque slab from x = a on (analytic transmittance)
        x = origins[ray_indices, 0] + 0.5 * (t_starts + t_ends)
        return torch.where(x >= a, sigma0, 0.0)

    s = march(origins, directions, grid, step_size=step, density_fn=sigma_fn, early_stop_eps=eps)
    t_stop = 1.0 + a + math.log(1 / eps) / sigma0  # where exp(-sigma0 (t - t_a)) = eps
    for r in range(2):
        t = s.t_starts[s.ray_indices == r]
        assert abs(float(t.max()) - t_stop) <= 2 * step  # stops at the threshold, not at the box exit
        assert float(t.min()) <= 1.0 + step  # empty space in front is kept (alpha_thre = 0)
    # with an opacity threshold, the transparent samples in front go too
    s2 = march(origins, directions, grid, step_size=step, density_fn=sigma_fn, early_stop_eps=eps, alpha_thre=1e-3)
    assert float(s2.t_starts.min()) >= 1.0 + a - step
    # without a density callback, nothing is dropped
    s3 = march(origins, directions, grid, step_size=step)
    assert ((s3.counts - 512).abs() <= 1).all()


def _fit_loop(counts: list[int], keep: list[bool], capacity: int, n_valid: int | None):
    """fit_to_capacity by hand: kept samples of whole rays, in order, while their total fits."""
    kept, total, n_fit, start = [], 0, 0, 0
    for r, n in enumerate(counts):
        mine = [start + i for i in range(n) if keep[start + i]]
        start += n
        if (n_valid is not None and r >= n_valid) or total + len(mine) > capacity:
            break
        kept += mine
        total += len(mine)
        n_fit = r + 1
    return kept, n_fit


@pytest.mark.parametrize("trial", range(4))
def test_fit_to_capacity_matches_a_loop(trial):
    gen = torch.Generator().manual_seed(trial)
    R = 9
    counts = torch.randint(0, 7, (R,), generator=gen)
    counts[torch.rand(R, generator=gen) < 0.2] = 0
    ray_indices, offsets, t_starts, t_ends = _packed(counts.tolist())
    N = len(ray_indices)
    pad = 5  # already padded input (a previous fit): entries past offsets[-1] must be ignored
    samples = RaySamples(torch.cat([ray_indices, torch.full((pad,), R - 1)]), torch.cat([t_starts, torch.rand(pad)]),
                         torch.cat([t_ends, torch.rand(pad) + 1]), offsets,
                         torch.tensor(R - trial % 2))  # odd trials: the last ray is already cut
    keep = torch.rand(N + pad, generator=gen) < 0.7
    capacity = int(torch.randint(1, N + 3, (), generator=gen))
    got = fit_to_capacity(samples, capacity, keep)
    want, n_fit = _fit_loop(counts.tolist(), keep[:N].tolist(), capacity, R - trial % 2)
    n = len(want)
    assert len(got) == capacity and int(got.n_valid_rays) == n_fit and int(got.n_samples) == n
    assert torch.equal(got.ray_indices[:n], ray_indices[want]) and torch.equal(got.t_starts[:n], t_starts[want])
    assert torch.equal(got.t_ends[:n], t_ends[want])
    assert (got.ray_indices[n:] == R - 1).all() and (got.t_starts[n:] == 0).all() and (got.t_ends[n:] == 0).all()
    assert torch.equal(got.offsets[1:] - got.offsets[:-1],
                       torch.bincount(ray_indices[want], minlength=R))  # packing agrees with the samples
    assert int(got.n_candidates) == int(counts[:n_fit].sum())
    assert got.ray_valid().tolist() == [r < n_fit for r in range(R)]


def test_padded_samples_composite_like_the_unpadded_ones():
    ray_indices, offsets, t_starts, t_ends = _packed([3, 0, 4, 2])
    samples = RaySamples(ray_indices, t_starts, t_ends, offsets)
    padded = fit_to_capacity(samples, len(samples) + 6)
    sig = torch.rand(len(padded)) * 5
    rgb = torch.rand(len(padded), 3)
    bg = torch.rand(4, 3)

    def run(s, sigmas, rgbs):
        sigmas, rgbs = sigmas.clone().requires_grad_(True), rgbs.clone().requires_grad_(True)
        out = composite(sigmas, rgbs, s.t_starts, s.t_ends, s.ray_indices, s.offsets, bg, backend="torch")
        (out["rgb"].sum() + out["depth"].sum()).backward()
        return out, sigmas.grad, rgbs.grad

    a, ga_s, ga_c = run(samples, sig[: len(samples)], rgb[: len(samples)])
    b, gb_s, gb_c = run(padded, sig, rgb)
    for key in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(b[key], a[key])
    n = len(samples)
    torch.testing.assert_close(gb_s[:n], ga_s)
    torch.testing.assert_close(gb_c[:n], ga_c)
    assert (gb_s[n:] == 0).all() and (gb_c[n:] == 0).all() and (b["weights"][n:] == 0).all()


def test_march_with_capacity_is_the_fit_of_the_full_march():
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), resolution=8, levels=1)
    origins = torch.cat([torch.full((6, 1), -1.0), torch.rand(6, 2)], 1)
    directions = torch.tensor([[1.0, 0.0, 0.0]]).expand(6, 3)

    def sigma_fn(t_starts, t_ends, ray_indices):
        x = origins[ray_indices, 0] + 0.5 * (t_starts + t_ends)
        return torch.where(x >= 0.4 + 0.05 * ray_indices, 30.0, 0.0)

    kw = dict(step_size=1 / 64, density_fn=sigma_fn, early_stop_eps=1e-2)
    full = march(origins, directions, grid, **dict(kw, density_fn=None))  # 64 candidates per ray
    stopped = march(origins, directions, grid, **kw)
    got = march(origins, directions, grid, capacity=100, candidate_capacity=4 * 64 + 10, **kw)
    # the candidate buffer holds 4 whole rays; of those, the early-stopped samples of as many as fit in 100
    assert full.counts.tolist() == [64] * 6 and int(got.n_candidates) == int(got.n_valid_rays) * 64
    ends = torch.cumsum(stopped.counts[:4], 0)
    n_fit = int((ends <= 100).sum())
    assert 1 <= n_fit < 4 and int(got.n_valid_rays) == n_fit  # the test cuts rays at both stages' limits
    keep_rays = stopped.ray_indices < n_fit
    assert int(got.n_samples) == int(keep_rays.sum())
    assert torch.equal(got.t_starts[: int(got.n_samples)], stopped.t_starts[keep_rays])
    assert torch.equal(got.offsets[: n_fit + 1], stopped.offsets[: n_fit + 1])


def test_occupancy_update_marks_a_sphere_and_decays():
    res = 16
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=res, levels=1)
    radius = 0.5

    def occ_fn(x):
        return torch.where(x.norm(dim=-1) < radius, 1.0, 0.0)

    grid.update(0, occ_fn, threshold=0.01, warmup_steps=10)
    centers = grid._cell_points(0, torch.arange(res**3), jitter=False)
    half_diag = math.sqrt(3) / res  # half a cell diagonal (cells are 2/res wide)
    inside = centers.norm(dim=-1) < radius - half_diag
    outside = centers.norm(dim=-1) > radius + half_diag
    assert grid.binary[0][inside].all() and not grid.binary[0][outside].any()
    assert torch.equal(grid.query(centers), grid.binary[0])
    before = grid.occs.clone()
    for k in range(3):  # density gone: every cell decays by ema_decay per update
        grid.update(1 + k, lambda x: torch.zeros(x.shape[0]), ema_decay=0.9, warmup_steps=10)
    torch.testing.assert_close(grid.occs, before * 0.9**3)
    # the threshold is min(mean, threshold): still the same cells
    assert torch.equal(grid.binary, before > min(float(before.mean()), 0.01))


def test_occupancy_cascades_pick_the_finest_level():
    grid = OccupancyGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), resolution=8, levels=3)
    x = torch.tensor([[0.5, 0.5, 0.5], [1.2, 0.5, 0.5], [-1.2, 0.5, 0.5], [3.0, 0.5, 0.5], [2.4, 2.4, -1.4]])
    assert grid.level_of(x).tolist() == [0, 1, 2, 2, 2]
    torch.testing.assert_close(grid.outer_aabb, torch.tensor([[-1.5] * 3, [2.5] * 3]))
    q = grid.query(x)
    assert q.tolist() == [True, True, True, False, True]  # x = 3.0 lies outside the outer box
    # the cells of level 1 covered by level 0 are never used
    assert not grid.valid[1].all() and grid.valid[0].all()
    grid.update(0, lambda p: torch.ones(p.shape[0]), warmup_steps=1)
    assert grid.binary[1].sum() == grid.valid[1].sum()


def _ring_cameras(n: int = 12) -> Cameras:
    from ngraphics.rendering.camera_paths import look_at

    angles = torch.arange(n) * (2 * math.pi / n)
    center = torch.tensor([0.3, -0.2, 0.1])
    positions = center + torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), torch.full((n,), 1.0)], -1)
    c2w = look_at(positions, center, torch.tensor([0.0, 0.0, 1.0]))
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(n, 3, 3)
    return Cameras(c2w, K.clone(), torch.full((n,), 64), torch.full((n,), 48))


def test_orbit_circles_the_focus_point():
    cams = _ring_cameras()
    center = focus_point(cams)
    torch.testing.assert_close(center, torch.tensor([0.3, -0.2, 0.1]), atol=1e-4, rtol=0)
    path = orbit(cams, 30)
    assert len(path) == 30 and int(path.width[0]) == 64 and int(path.height[0]) == 48
    R = path.c2w[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(30, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(30), atol=1e-5)
    to_center = center - path.origins
    cos = (torch.nn.functional.normalize(to_center, dim=-1) * R[:, :, 2]).sum(-1)
    torch.testing.assert_close(cos, torch.ones(30), atol=1e-5, rtol=0)  # optical axes hit the centre
    torch.testing.assert_close(to_center.norm(dim=-1), torch.full((30,), math.sqrt(10.0)), atol=1e-4, rtol=0)
    assert (R[:, 2, 1] < 0).all()  # image y (down) points against world up (+z)
    torch.testing.assert_close(path.origins[0], cams.origins[0], atol=1e-4, rtol=0)  # starts at camera 0
    half = make_path("orbit", cams, 10, scale=0.5)
    assert int(half.width[0]) == 32


def test_unknown_path_name_is_one_line():
    from ngraphics.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean orbit"):
        make_path("orbitt", _ring_cameras(), 4)

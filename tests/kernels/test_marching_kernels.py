"""Parity of `ngraphics.kernels.marching.march_triton` with the torch reference `march` (backend="torch").

Each case draws fresh random occupancy grids (a lego-like one: a few solid boxes and balls plus a sprinkle of
isolated cells; or independent random cells on every cascade) and fresh random rays (from outside the box,
from inside it, some missing it), and compares the packed sample sets ray by ray: the same samples in the
same order, t_starts / t_ends within 1e-5 (1 + |t|). A sample may be present in one set only if the reference
sits on a knife edge there, checked independently in float64: its midpoint within 1e-4 cells of a cell face
(cell faces include the cascade boundaries), its t_start within 1e-5 of t_far, or (with a density callback)
its transmittance within 1e-4 of early_stop_eps or its opacity within 1e-4 of alpha_thre. On CUDA the
kernel repeats the reference's arithmetic op for op (libdevice exp/log2, IEEE division, no FMA contraction),
so in practice the sets are identical; under the interpreter numpy's exp/log2 may differ by an ulp.

- CPU: the checks run in a child process under the Triton interpreter (TRITON_INTERPRET=1 is read when
  `triton.jit` decorates, so a fresh process is the reliable way) on tiny grids (8^3, 40 rays).
- CUDA (`gpu`): 2^14 rays on 128^3 grids with 1 and 3 cascades, constant and growing steps, jitter, early
  stop.
Both also check the fixed-size buffers of training (`capacity`, `candidate_capacity`) against the torch
reference's `fit_to_capacity`, with buffers small enough to cut rays at either stage.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from harness import run_in_interpreter

from ngraphics.rendering.compositing import transmittance_packed
from ngraphics.rendering.marching import RaySamples, march
from ngraphics.rendering.occupancy import OccupancyGrid

T_TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------
# Inputs


def lego_like_grid(res: int, levels: int, device, gen: torch.Generator) -> OccupancyGrid:
    """Box [-1.5, 1.5]^3 (level 0): a few random solid boxes and balls near the centre, 0.1% random cells
    anywhere, and on coarser cascades 2% random cells (their used part)."""
    grid = OccupancyGrid(torch.tensor([[-1.5] * 3, [1.5] * 3]), resolution=res, levels=levels)
    ijk = grid._grid_coords(torch.arange(res**3))
    u = (ijk.float() + 0.5) / res * 2 - 1  # cell centres in [-1, 1]^3 of level 0
    occ = torch.zeros(res**3, dtype=torch.bool)
    for _ in range(4):
        c = (torch.rand(3, generator=gen) - 0.5) * 0.8
        h = torch.rand(3, generator=gen) * 0.3 + 0.05
        occ |= ((u - c).abs() <= h).all(-1)
        c = (torch.rand(3, generator=gen) - 0.5) * 0.8
        occ |= (u - c).norm(dim=-1) <= float(torch.rand((), generator=gen)) * 0.3 + 0.05
    occ |= torch.rand(res**3, generator=gen) < 1e-3
    grid.binary[0] = occ
    for level in range(1, levels):
        grid.binary[level] = (torch.rand(res**3, generator=gen) < 0.02) & grid.valid[level]
    return grid.to(device)


def random_grid(res: int, levels: int, device, gen: torch.Generator, p: float = 0.3) -> OccupancyGrid:
    """Off-centre box [-0.7, 1.3] x [-1, 1] x [0, 1.5] with independent random cells on every cascade."""
    grid = OccupancyGrid(torch.tensor([[-0.7, -1.0, 0.0], [1.3, 1.0, 1.5]]), resolution=res, levels=levels)
    grid.binary.copy_(torch.rand(grid.binary.shape, generator=gen) < p)
    return grid.to(device)


def random_rays(R: int, grid: OccupancyGrid, device, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rays: 3/4 from a sphere around the level-0 box aimed at points inside it (some miss: aimed
    outside), 1/4 starting inside the outer box in random directions."""
    box = grid.aabb.cpu()
    center, size = box.mean(0), float((box[1] - box[0]).max())
    n_out = R * 3 // 4
    o_out = torch.randn(n_out, 3, generator=gen)
    o_out = center + o_out / o_out.norm(dim=-1, keepdim=True) * size * 1.6
    target = center + (torch.rand(n_out, 3, generator=gen) - 0.5) * size * 1.3
    outer = grid.outer_aabb.cpu()
    o_in = outer[0] + torch.rand(R - n_out, 3, generator=gen) * (outer[1] - outer[0])
    d = torch.cat([target - o_out, torch.randn(R - n_out, 3, generator=gen)])
    d = d / d.norm(dim=-1, keepdim=True)
    return torch.cat([o_out, o_in]).to(device), d.to(device)


def density(origins, directions):
    """A smooth density callback of world position (ripples; zero in places, up to ~60 per unit)."""

    def fn(t_starts, t_ends, ray_indices):
        x = origins[ray_indices] + directions[ray_indices] * (0.5 * (t_starts + t_ends))[:, None]
        return 60.0 * torch.relu(torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1] + x[:, 2]))

    return fn


# ---------------------------------------------------------------------------------------------------------
# Comparison


def _match(a: RaySamples, b: RaySamples, span: float) -> torch.Tensor:
    """For each sample of `a`, the index of the sample of `b` on the same ray with t_start and t_end within
    T_TOL (1 + |t|), or -1. (N_a,) int64"""
    out = torch.full((len(a),), -1, dtype=torch.int64, device=a.ray_indices.device)
    if len(a) == 0 or len(b) == 0:
        return out
    ka = a.ray_indices.double() * span + a.t_starts.double()
    kb = b.ray_indices.double() * span + b.t_starts.double()
    pos = torch.searchsorted(kb, ka)
    tol = T_TOL * (1 + a.t_starts.double().abs())
    for cand in (pos - 1, pos):
        c = cand.clamp(0, len(b) - 1)
        same = b.ray_indices[c] == a.ray_indices
        same &= (b.t_starts[c].double() - a.t_starts.double()).abs() <= tol
        same &= (b.t_ends[c].double() - a.t_ends.double()).abs() <= tol
        out = torch.where(same & (out < 0), c, out)
    return out


def _on_knife_edge(s: RaySamples, idx, grid, origins, directions, t_far) -> torch.Tensor:
    """Float64, independent of both paths: does sample idx of s lie within 1e-4 cells of a cell face of
    any cascade (cascade boundaries are cell faces), or start within 1e-5 of t_far?"""
    ri = s.ray_indices[idx]
    ts, te = s.t_starts[idx].double(), s.t_ends[idx].double()
    x = origins[ri].double() + directions[ri].double() * (0.5 * (ts + te))[:, None]
    box = grid.aabb.double()
    center, half = box.mean(0), 0.5 * (box[1] - box[0])
    edge = (ts - t_far[ri].double()).abs() < 1e-5 * (1 + ts.abs())
    for level in range(grid.levels):
        cells = (x - (center - half * 2.0**level)) / (2 * half * 2.0**level) * grid.resolution
        edge |= ((cells - torch.round(cells)).abs() < 1e-4).any(-1)
    return edge


def check_march(grid, origins, directions, seed: int, max_mismatch: float, **kw) -> dict:
    """Run both paths (same random draw for jitter) and compare; returns counts for the log."""
    from ngraphics.kernels.marching import march_triton

    from ngraphics.rendering.marching import ray_aabb

    torch.manual_seed(seed)
    want = march(origins, directions, grid, backend="torch", **kw)
    torch.manual_seed(seed)
    got = march_triton(origins, directions, grid, **kw)
    R = origins.shape[0]
    # packing is consistent: offsets from counts, ray indices sorted and matching the offsets
    assert got.offsets.shape == (R + 1,) and int(got.offsets[0]) == 0 and int(got.offsets[-1]) == len(got)
    rays = torch.arange(R, device=origins.device)
    assert torch.equal(got.ray_indices, torch.repeat_interleave(rays, got.counts))
    assert (got.t_ends > got.t_starts).all()
    assert len(want) > 0
    span = float(max(want.t_ends.max(), got.t_ends.max() if len(got) else 0)) + 2.0
    t_far = ray_aabb(origins, directions, grid.outer_aabb.to(origins.device))[1]
    t_far = t_far.clamp_max(kw.get("far", 1e10))
    sigma_fn = kw.get("density_fn")
    if sigma_fn is not None:  # the candidates before early stop, with their transmittance and opacity
        torch.manual_seed(seed)
        pre = march(origins, directions, grid, backend="torch", **dict(kw, density_fn=None))
        T, alpha = transmittance_packed(sigma_fn(pre.t_starts, pre.t_ends, pre.ray_indices).float(),
                                        pre.t_starts, pre.t_ends, pre.ray_indices, pre.offsets)
    n_miss = 0
    for s, other in ((got, want), (want, got)):
        idx = torch.nonzero(_match(s, other, span) < 0)[:, 0]
        if len(idx) == 0:
            continue
        n_miss += len(idx)
        edge = _on_knife_edge(s, idx, grid, origins, directions, t_far)
        if sigma_fn is not None:
            j = _match(RaySamples(s.ray_indices[idx], s.t_starts[idx], s.t_ends[idx], s.offsets), pre, span)
            eps, thre = kw.get("early_stop_eps", 1e-4), kw.get("alpha_thre", 0.0)
            if eps > 0:
                edge |= (j >= 0) & ((T[j].double() - eps).abs() < 1e-4 * eps)
            if thre > 0:
                edge |= (j >= 0) & ((alpha[j].double() - thre).abs() < 1e-4)
        # a knife-edge sample kept on one side only changes T behind it: later differences on its ray follow
        ri = s.ray_indices[idx]
        for r in ri[edge].unique().tolist():
            first = s.t_starts[idx][edge & (ri == r)].min()
            edge |= (ri == r) & (s.t_starts[idx] >= first)
        assert edge.all(), (f"{int((~edge).sum())} samples differ away from any cell face / threshold: rays "
                            f"{ri[~edge][:8].tolist()}, t {s.t_starts[idx][~edge][:8].tolist()}")
    assert n_miss <= max_mismatch * len(want), f"{n_miss} of {len(want)} samples differ"
    if n_miss == 0:
        assert torch.equal(got.offsets, want.offsets) and torch.equal(got.ray_indices, want.ray_indices)
    return {"samples": len(want), "differ": n_miss}


def check_capacity(grid, origins, directions, seed, **kw) -> dict:
    """Fixed-size buffers (`capacity`, `candidate_capacity`): where the two backends agree without them
    (identical sample sets, the usual case), they must agree exactly with them, for buffers that cut rays
    at the candidate stage, at the output stage, and none. Returns counts (skipped: the sets differed)."""
    from ngraphics.kernels.marching import march_triton

    def run(fn, **extra):
        torch.manual_seed(seed)
        return fn(origins, directions, grid, **{**kw, **extra})

    def torch_march(*a, **k):
        return march(*a, backend="torch", **k)

    want, got = run(torch_march), run(march_triton)
    if not (torch.equal(want.offsets, got.offsets) and torch.equal(want.ray_indices, got.ray_indices)):
        return {"skipped": 1}
    n = len(want)
    n_candidates = len(run(torch_march, **dict(density_fn=None)))
    for capacity, candidates in ((n // 2 + 1, None), (n + 7, n_candidates // 2 + 1), (n + 7, n_candidates + 3)):
        a = run(torch_march, capacity=capacity, candidate_capacity=candidates)
        b = run(march_triton, capacity=capacity, candidate_capacity=candidates)
        assert len(a) == len(b) == capacity
        for key in ("offsets", "ray_indices", "n_valid_rays", "n_candidates"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        torch.testing.assert_close(b.t_starts, a.t_starts, rtol=T_TOL, atol=T_TOL)
        torch.testing.assert_close(b.t_ends, a.t_ends, rtol=T_TOL, atol=T_TOL)
    return {"samples": n, "valid_rays_at_half": int(run(march_triton, capacity=n // 2 + 1).n_valid_rays)}


# Cases: (grid maker, levels, march keywords as functions of the grid)
def _cases(res: int):
    def steps(grid, n):
        return math.sqrt(3.0) * float((grid.aabb[1] - grid.aabb[0]).max()) / n

    return [
        ("lego_1level", lambda d, g: lego_like_grid(res, 1, d, g),
         lambda grid, o, dr, n: dict(step_size=steps(grid, n), near=0.05)),
        ("lego_1level_jitter_earlystop", lambda d, g: lego_like_grid(res, 1, d, g),
         lambda grid, o, dr, n: dict(step_size=steps(grid, n), jitter=True, density_fn=density(o, dr),
                                     early_stop_eps=1e-3)),
        ("random_3levels_cone", lambda d, g: random_grid(res, 3, d, g),
         lambda grid, o, dr, n: dict(step_size=steps(grid, n), cone_angle=1 / 64, near=0.1, far=9.0,
                                     max_step=grid.cell_size(2) * math.sqrt(3))),
        ("random_2levels_cone_alpha", lambda d, g: random_grid(res, 2, d, g, p=0.5),
         lambda grid, o, dr, n: dict(step_size=steps(grid, n), cone_angle=1 / 16, jitter=True,
                                     density_fn=density(o, dr), early_stop_eps=1e-2, alpha_thre=0.05,
                                     max_step=grid.cell_size(1), max_steps=n // 2)),
    ]


def run_cases(device, res: int, R: int, n_steps: int, max_mismatch: float) -> list[str]:
    lines = []
    for name, make_grid, make_kw in _cases(res):
        seed = int(torch.randint(0, 2**31, ()).item())
        gen = torch.Generator().manual_seed(seed)
        grid = make_grid(device, gen)
        o, d = random_rays(R, grid, device, gen)
        stats = check_march(grid, o, d, seed, max_mismatch, **make_kw(grid, o, d, n_steps))
        stats.update(check_capacity(grid, o, d, seed, **make_kw(grid, o, d, n_steps)))
        lines.append(f"{name}: {stats}")
    return lines


def interpreted_checks() -> None:
    """Tiny cases under the interpreter (run in a child process with TRITON_INTERPRET=1)."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from ngraphics.kernels import marching as km

    assert type(km._march_kernel).__name__ == "InterpretedFunction"
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    print("\n".join(run_cases("cpu", res=8, R=40, n_steps=64, max_mismatch=0.05)))
    # no rays; rays that all miss
    grid = random_grid(8, 1, "cpu", torch.Generator().manual_seed(1))
    assert len(km.march_triton(torch.zeros(0, 3), torch.zeros(0, 3), grid, step_size=0.1)) == 0
    s = km.march_triton(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[1.0, 0.0, 0.0]]), grid, step_size=0.1)
    assert len(s) == 0 and s.offsets.tolist() == [0, 0]


def test_march_triton_interpreter_matches_torch():
    run_in_interpreter(__file__)


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(4))
def test_march_triton_matches_torch_gpu(case):
    name, make_grid, make_kw = _cases(128)[case]
    seed = int(torch.randint(0, 2**31, ()).item())
    gen = torch.Generator().manual_seed(seed)
    grid = make_grid("cuda", gen)
    o, d = random_rays(1 << 14, grid, "cuda", gen)
    stats = check_march(grid, o, d, seed, 1e-4, **make_kw(grid, o, d, 1024))
    stats.update(check_capacity(grid, o, d, seed, **make_kw(grid, o, d, 1024)))
    assert "skipped" not in stats  # on CUDA the kernel repeats the reference's arithmetic exactly
    print(name, stats)


@pytest.mark.gpu
def test_march_dispatch_auto_uses_triton_on_cuda(monkeypatch):
    import ngraphics.kernels.marching as km

    calls = []
    real = km.march_triton
    monkeypatch.setattr(km, "march_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    grid = lego_like_grid(16, 1, "cuda", torch.Generator().manual_seed(0))
    o, d = random_rays(64, grid, "cuda", torch.Generator().manual_seed(1))
    march(o, d, grid, step_size=0.01)
    assert calls == [1]


if __name__ == "__main__":
    globals()[sys.argv[1]]()

"""Benchmark of NeRF ray marching and compositing, torch reference vs Triton, on one CUDA GPU:
`python -m ngraphics.kernels.bench_rendering [--rays 2^18] [--sweep] [--json PATH]`.

Scene: a lego-like occupancy grid (128^3 cells over [-1.5, 1.5]^3, one cascade; a dozen random solid boxes
and balls in the central [-1, 1]^3 plus a sprinkle of isolated cells, about 1% of cells occupied), rays from a
sphere of radius 4 aimed at random points of [-1, 1]^3, near 2, far 6, instant-ngp's step sqrt(3) * 3 / 1024,
the NeRF method's settings. The density callback is the same cheap function for both paths: 50 inside
occupied cells (a grid lookup), so rays go opaque and early stop bites as with a trained model.

Timed, CUDA events, median of `--reps` after warm-up:
  march         march(), no density callback (empty-space skipping and packing only)
  march+stop    march() with the density callback and early_stop_eps 1e-4 (what training calls)
  composite     composite() forward, on the march+stop samples, random sigma / rgb
  comp f+b      composite() forward + backward of an rgb loss (d sigma, d rgb)
  total         march+stop + comp f+b
`--sweep` first times the kernels' launch shapes (rays per program x warps) and uses the fastest.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from ngraphics.kernels import compositing as kc
from ngraphics.kernels import marching as km

from ngraphics.profiling.timing import time_fn
from ngraphics.rendering.compositing import composite
from ngraphics.rendering.marching import march
from ngraphics.rendering.occupancy import OccupancyGrid


def cuda_time(fn, warmup: int = 3, reps: int = 20) -> float:
    """Median milliseconds of `fn()` between CUDA events, synchronised after each call, after `warmup`
    calls."""
    return time_fn(fn, "cuda", warmup=warmup, min_repeats=reps, max_repeats=reps).median_ms


def lego_like_scene(n_rays: int, res: int = 128, seed: int = 0):
    """(grid, origins (R, 3), directions (R, 3)) on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    grid = OccupancyGrid(torch.tensor([[-1.5] * 3, [1.5] * 3]), resolution=res, levels=1)
    ijk = grid._grid_coords(torch.arange(res**3))
    u = (ijk.float() + 0.5) / res * 3 - 1.5  # cell centres, world units
    occ = torch.zeros(res**3, dtype=torch.bool)
    for _ in range(6):
        c = (torch.rand(3, generator=gen) - 0.5) * 1.4
        occ |= ((u - c).abs() <= torch.rand(3, generator=gen) * 0.25 + 0.05).all(-1)
        c = (torch.rand(3, generator=gen) - 0.5) * 1.4
        occ |= (u - c).norm(dim=-1) <= float(torch.rand((), generator=gen)) * 0.25 + 0.05
    occ |= torch.rand(res**3, generator=gen) < 2e-3
    grid.binary[0] = occ
    o = torch.randn(n_rays, 3, generator=gen)
    o = o / o.norm(dim=-1, keepdim=True) * 4.0
    d = (torch.rand(n_rays, 3, generator=gen) * 2 - 1) - o
    d = d / d.norm(dim=-1, keepdim=True)
    return grid.cuda(), o.cuda(), d.cuda()


def run(n_rays: int, reps: int, sweep: bool) -> dict:
    grid, o, d = lego_like_scene(n_rays)
    step = math.sqrt(3.0) * 3.0 / 1024
    kw = dict(step_size=step, near=2.0, far=6.0)

    def sigma_fn(t_starts, t_ends, ray_indices):
        x = o[ray_indices] + d[ray_indices] * (0.5 * (t_starts + t_ends))[:, None]
        return grid.query(x).float() * 50.0

    result = {"rays": n_rays, "occupied": float(grid.binary.float().mean()), "sweep": []}
    if sweep:
        best = {}
        for block, warps in ((32, 1), (64, 1), (64, 2), (128, 2), (128, 4)):
            km.TUNING.update(block=block, warps=warps)
            kc.TUNING.update(block=block, warps=warps)
            s = march(o, d, grid, **kw, backend="triton")
            sig = torch.rand(len(s), device="cuda", requires_grad=True)
            rgb = torch.rand(len(s), 3, device="cuda", requires_grad=True)

            def fb():
                out = composite(sig, rgb, s.t_starts, s.t_ends, s.ray_indices, s.offsets, backend="triton")
                out["rgb"].sum().backward()

            row = {"block": block, "warps": warps,
                   "march_ms": cuda_time(lambda: march(o, d, grid, **kw, backend="triton"), reps=reps),
                   "comp_fb_ms": cuda_time(fb, reps=reps)}
            result["sweep"].append(row)
            print(row, flush=True)
            for key in ("march_ms", "comp_fb_ms"):
                if key not in best or row[key] < best[key][0]:
                    best[key] = (row[key], block, warps)
        km.TUNING.update(block=best["march_ms"][1], warps=best["march_ms"][2])
        kc.TUNING.update(block=best["comp_fb_ms"][1], warps=best["comp_fb_ms"][2])
    result["tuning"] = {"march": dict(km.TUNING), "composite": dict(kc.TUNING)}

    rows = []
    samples = {}
    for backend in ("torch", "triton"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = {}
        t["march"] = cuda_time(lambda: march(o, d, grid, **kw, backend=backend), reps=reps)
        t["march+stop"] = cuda_time(lambda: march(o, d, grid, **kw, density_fn=sigma_fn, backend=backend),
                                    reps=reps)
        s = march(o, d, grid, **kw, density_fn=sigma_fn, backend=backend)
        samples[backend] = (len(march(o, d, grid, **kw, backend=backend)), len(s))
        gen = torch.Generator(device="cuda").manual_seed(1)
        sig = (torch.rand(len(s), device="cuda", generator=gen) * 50).requires_grad_()
        rgb = torch.rand(len(s), 3, device="cuda", generator=gen).requires_grad_()
        bg = torch.ones(3, device="cuda")

        def fwd():
            with torch.no_grad():
                composite(sig, rgb, s.t_starts, s.t_ends, s.ray_indices, s.offsets, bg, backend=backend)

        def fwd_bwd():
            out = composite(sig, rgb, s.t_starts, s.t_ends, s.ray_indices, s.offsets, bg, backend=backend)
            out["rgb"].square().sum().backward()

        t["composite"] = cuda_time(fwd, reps=reps)
        t["comp f+b"] = cuda_time(fwd_bwd, reps=reps)
        t["total"] = t["march+stop"] + t["comp f+b"]
        t["peak GB"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append((backend, t))
    result["samples"] = samples
    result["times_ms"] = {b: t for b, t in rows}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rays", default="2^18", help="number of rays, e.g. 2^18 or 262144")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--sweep", action="store_true", help="time launch shapes first and use the fastest")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    n = 2 ** int(args.rays[2:]) if args.rays.startswith("2^") else int(args.rays)
    import triton

    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    res = run(n, args.reps, args.sweep)
    print(f"rays {res['rays']}, occupied cells {res['occupied']:.1%}, samples (march, march+stop): "
          f"{res['samples']}, launch shapes {res['tuning']}")
    torch_t, triton_t = res["times_ms"]["torch"], res["times_ms"]["triton"]
    print(f"{'op':<12} {'torch ms':>10} {'triton ms':>10} {'torch/triton':>13}")
    for key in ("march", "march+stop", "composite", "comp f+b", "total"):
        ratio = torch_t[key] / triton_t[key]
        print(f"{key:<12} {torch_t[key]:>10.3f} {triton_t[key]:>10.3f} {ratio:>12.1f}x")
    print(f"{'peak GB':<12} {torch_t['peak GB']:>10.2f} {triton_t['peak GB']:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the Gaussian-splat rasterizer, forward + backward, ours (Triton) side by side with gsplat on one
CUDA GPU: `python -m ngraphics.kernels.bench_splat [--gaussians 1M,4M] [--width 1920 --height 1080] [--json PATH]`.

Scene: N Gaussians spread through one pinhole camera's frustum (depth 2..12 world units, 60 degree vertical
field of view, 1080p), sizes log-uniform between 0.004 and 0.04 world units (a few pixels on screen, like a
trained scene), random rotations, opacities in [0.05, 0.95], spherical-harmonics colour of degree 3 (16
coefficients per channel, small random values). The same tensors go to both libraries.

Timed, CUDA events, median of `--reps` after warm-up, for each library:
  forward        rasterization(...) of one 1080p view: projection, tile binning and sort, blending
  fwd+bwd        forward + backward of sum(rgb * w) for a fixed random w (gradients to means, quats, scales,
                 opacities and SH coefficients)
  peak MB        the largest extra GPU memory during fwd+bwd (torch.cuda.max_memory_allocated above the inputs)
ngraphics always blends a depth channel beside the colour (its `rasterization` returns depth); gsplat runs in
its default render_mode "RGB" (colour only) and in "RGB+ED" (colour + expected depth, the like-for-like row).
gsplat's `packed` mode is timed both ways (its trainer's default is packed=False). The images of the two
libraries are compared (mean absolute difference of rgb) as a sanity check that both rendered the same scene.

`--sweep` first times ngraphics' rasterizer over its pixels per program and warp counts (on the first count) (`TUNING` in
kernels/splat_rasterize.py) and uses the fastest; `--profile` prints where ngraphics' fwd+bwd time goes
(CUDA kernels, torch.profiler).

gsplat 1.5.3's wheel compiles its CUDA code the first time `gsplat` is imported (minutes); time that apart
(e.g. `time python -c "from gsplat.cuda._backend import _C"`), before this benchmark.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from ngraphics.cameras import Cameras
from ngraphics.profiling.timing import time_fn
from ngraphics.splatting import rasterization


def parse_count(text: str) -> int:
    """'1M' -> 1_000_000, '500k' -> 500_000, '2^20' -> 1_048_576, '12345' -> 12345."""
    text = text.strip()
    if "^" in text:
        base, exp = text.split("^")
        return int(base) ** int(exp)
    scale = {"k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def frustum_scene(n: int, width: int, height: int, seed: int = 0, device: str = "cuda") -> dict:
    """N random Gaussians inside one camera's view; the camera sits at the origin looking down +z (OpenCV).
    Returns: means (N, 3), quats (N, 4), scales (N, 3), opacities (N,), sh (N, 16, 3), K (3, 3) and the
    camera's c2w (4, 4), all float32 on `device`."""
    gen = torch.Generator().manual_seed(seed)
    focal = 0.5 * height / math.tan(math.radians(30.0))  # 60 degree vertical field of view
    z = 2.0 + 10.0 * torch.rand(n, generator=gen)
    u = (torch.rand(n, generator=gen) * 1.1 - 0.05) * width
    v = (torch.rand(n, generator=gen) * 1.1 - 0.05) * height
    means = torch.stack([(u - width / 2) * z / focal, (v - height / 2) * z / focal, z], dim=-1)
    scales = torch.exp(math.log(0.004) + (math.log(0.04) - math.log(0.004)) * torch.rand(n, 3, generator=gen))
    sh = 0.1 * torch.randn(n, 16, 3, generator=gen)
    sh[:, 0] = (torch.rand(n, 3, generator=gen) - 0.5) / 0.28209479177387814  # DC term: colours in [0, 1]
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    scene = {"means": means, "quats": torch.randn(n, 4, generator=gen), "scales": scales,
             "opacities": 0.05 + 0.9 * torch.rand(n, generator=gen), "sh": sh, "K": K, "c2w": torch.eye(4)}
    return {k: t.to(device) for k, t in scene.items()}


def ours(scene: dict, width: int, height: int):
    """The ngraphics rasterizer as `render(params) -> rgb (H, W, 3)`."""
    cameras = Cameras(scene["c2w"][None], scene["K"][None], torch.tensor([width]), torch.tensor([height]))

    def render(p: dict) -> torch.Tensor:
        return rasterization(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], cameras,
                             sh_degree=3, backend="triton")["rgb"][0]
    return render


def theirs(scene: dict, width: int, height: int, packed: bool, render_mode: str):
    """gsplat's `rasterization` as `render(params) -> rgb (H, W, 3)`."""
    import gsplat

    viewmats = torch.linalg.inv(scene["c2w"])[None]

    def render(p: dict) -> torch.Tensor:
        colors, _, _ = gsplat.rasterization(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"],
                                            viewmats, scene["K"][None], width, height, sh_degree=3,
                                            packed=packed, render_mode=render_mode)
        return colors[0, ..., :3]
    return render


def measure(render, scene: dict, weight: torch.Tensor, reps: int) -> dict:
    """Median forward and forward+backward milliseconds and the peak extra memory of one fwd+bwd."""
    params = {k: scene[k].detach().clone().requires_grad_(True)
              for k in ("means", "quats", "scales", "opacities", "sh")}

    def forward():
        with torch.no_grad():
            return render(params)

    def forward_backward():
        loss = (render(params) * weight).sum()
        loss.backward()
        for p in params.values():
            p.grad = None

    fwd = time_fn(forward, "cuda", warmup=3, min_repeats=reps, max_repeats=reps).median_ms
    fb = time_fn(forward_backward, "cuda", warmup=3, min_repeats=reps, max_repeats=reps).median_ms
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward_backward()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.no_grad():
        image = render(params).float()
    return {"forward_ms": fwd, "fwd_bwd_ms": fb, "peak_mb": peak_mb, "image": image}


def sweep(scene: dict, width: int, height: int, weight: torch.Tensor, reps: int) -> dict:
    """Time ngraphics' fwd+bwd for each rasterizer TUNING (pixels per program, warps); set and return the
    fastest."""
    from ngraphics.kernels import splat_rasterize

    best = None
    for pixels, warps in ((256, 4), (256, 8), (128, 4), (64, 2), (32, 1), (64, 1), (128, 2)):
        splat_rasterize.TUNING.update(pixels=pixels, warps=warps)
        ms = measure(ours(scene, width, height), scene, weight, reps)["fwd_bwd_ms"]
        print(f"  sweep: pixels per program {pixels:>3}, warps {warps}: fwd+bwd {ms:.2f} ms")
        if best is None or ms < best[0]:
            best = (ms, pixels, warps)
    splat_rasterize.TUNING.update(pixels=best[1], warps=best[2])
    print(f"  sweep: using {dict(splat_rasterize.TUNING)}")
    return dict(splat_rasterize.TUNING)


def profile(scene: dict, width: int, height: int, weight: torch.Tensor) -> None:
    """Print the CUDA kernels of 5 ngraphics fwd+bwd calls by total time."""
    render = ours(scene, width, height)
    params = {k: scene[k].detach().clone().requires_grad_(True)
              for k in ("means", "quats", "scales", "opacities", "sh")}
    (render(params) * weight).sum().backward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            (render(params) * weight).sum().backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", default="1M,4M", help="comma-separated counts (1M, 500k, 2^20)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="pick the rasterizer's chunk size and warps first")
    parser.add_argument("--profile", action="store_true", help="print ngraphics' CUDA kernels by time")
    parser.add_argument("--no-gsplat", action="store_true", help="time ngraphics alone")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.width}x{args.height}, SH degree 3")
    print(f"{'gaussians':>10} {'library':<28} {'forward ms':>11} {'fwd+bwd ms':>11} {'peak MB':>9} "
          f"{'vs ours f+b':>11} {'|rgb - ours|':>12}")
    for count in (parse_count(c) for c in args.gaussians.split(",")):
        scene = frustum_scene(count, args.width, args.height)
        weight = torch.rand(args.height, args.width, 3, device="cuda",
                            generator=torch.Generator("cuda").manual_seed(1))
        if args.sweep and not rows:  # on the first count; the others use its choice
            sweep(scene, args.width, args.height, weight, args.reps)
        if args.profile:
            profile(scene, args.width, args.height, weight)
        cases = [("ngraphics (triton)", ours(scene, args.width, args.height))]
        if not args.no_gsplat:
            for packed in (False, True):
                for mode in ("RGB", "RGB+ED"):
                    cases.append((f"gsplat {mode} packed={packed}",
                                  theirs(scene, args.width, args.height, packed, mode)))
        reference = None
        for name, render in cases:
            result = measure(render, scene, weight, args.reps)
            image = result.pop("image")
            if reference is None:
                reference, ours_fb = image, result["fwd_bwd_ms"]
            row = {"gaussians": count, "library": name, **result,
                   "ours_speedup": result["fwd_bwd_ms"] / ours_fb,
                   "rgb_mean_abs_diff": float((image - reference).abs().mean())}
            rows.append(row)
            print(f"{count:>10} {name:<28} {row['forward_ms']:>11.2f} {row['fwd_bwd_ms']:>11.2f} "
                  f"{row['peak_mb']:>9.0f} {row['ours_speedup']:>10.2f}x {row['rgb_mean_abs_diff']:>12.2e}")
        del scene, cases
        torch.cuda.empty_cache()
    print("'vs ours f+b' = that row's fwd+bwd time / ngraphics' (above 1: ngraphics is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

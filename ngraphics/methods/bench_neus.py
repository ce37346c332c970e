"""Device benchmark of `method: neus` (issue 15, item 5): a program that prints its numbers and writes them
(results.json) and its pictures (PNG) into an output folder. Not a test; `--quick` runs every part at toy sizes
on a CPU (tests/test_bench_neus.py does), so the device run is only a matter of the GPU.

    python -m ngraphics.methods.bench_neus OUT [--parts armadillo dtu step] [--data ../shared/data] [--quick]

armadillo  configs/neus/armadillo.yaml: 100 views at 800x800 generated from meshes/armadillo.obj (the generation
           is timed), trained for the config's time budget (120 s); at each of its `eval_times` (15/30/60/120 s
           of training; the clock stops while measuring) a marching-cubes mesh (`--mesh-resolution`) against the
           true surface: Chamfer-L1 relative to the bounding-box diagonal (goal <= 0.3 % in <= 2 min), normal
           consistency, F-score. Writes armadillo_mesh.png (three grey renders of the final mesh).
dtu        configs/neus/dtu.yaml on dtu_scan65, every 8th view held out, trained for `--dtu-budget` s: held-out
           PSNR and mask IoU of the rendered opacity (> 0.5) at `--eval-downscale`, the largest component's
           watertightness, and grey renders of the mesh from three held-out viewpoints (dtu_mesh.png), beside
           the held-out renders (dtu_heldout.png: photo, render, normals).
step       on the trained DTU model (or a fresh one when dtu is not run): steps/s, rays/s, peak memory, and the
           split of one step by phase (CUDA events between sampling, forward, backward, optimizer: the
           backward holds the double backward of the eikonal loss and the gradient-dependent opacities) and by
           kernel (torch.profiler, grouped by Neus.profile_categories: grid_bwd_bwd is the grid's double
           backward), with the occupancy grid and without it (stratified + importance sampling).

Every part's numbers go to OUT/results.json as they are measured (a later failure keeps the earlier ones).

The device machine takes at most 64 MiB of files per call and DTU scan 65's PNGs are 119 MiB:
`--pack-dtu SRC DST` writes a copy with the images as JPEG (quality 95, ~27 MiB; masks and cameras as they are)
for the device run to read (docs/neus.md has the command lines).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ngraphics.data import load_dataset
from ngraphics.data.mesh_scene import rasterize
from ngraphics.devices import peak_gpu_gb
from ngraphics.errors import DataError, NgraphicsError
from ngraphics.io.atomic import atomic_write_bytes, atomic_write_text
from ngraphics.io.images import write_image
from ngraphics.methods.neus import Neus
from ngraphics.metrics.image import psnr
from ngraphics.training.run_config import find_config, load_run_config, load_split

PARTS = ("armadillo", "dtu", "step")
# toy sizes for --quick (a 2-core CPU, seconds per part)
QUICK_MODEL = ["model.field.encoding={n_levels: 4, log2_hashmap_size: 12, base_resolution: 4}",
               "model.field.max_resolution=32", "model.field.geometry_features=3", "model.field.color_neurons=16",
               "model.rays_per_batch=128", "model.n_samples=16", "model.n_importance=8", "model.importance_rounds=2",
               "model.render_chunk=1024", "model.eval_mesh_resolution=32", "model.warmup_steps=2",
               "model.occupancy.resolution=16", "model.occupancy.march_steps=96", "model.occupancy.update_every=2",
               "model.occupancy.warmup_steps=2", "model.occupancy.samples_per_ray=48",
               "model.background_field.encoding={n_levels: 4, log2_hashmap_size: 10}",
               "model.background_field.neurons=16", "model.background_field.n_samples=8"]


class Clock:
    """Training time: wall time with the device synchronised, paused while measuring."""

    def __init__(self, device: torch.device):
        self.device, self.total, self.start = device, 0.0, None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def resume(self) -> None:
        self.sync()
        self.start = time.perf_counter()

    def pause(self) -> float:
        self.sync()
        self.total += time.perf_counter() - self.start
        self.start = None
        return self.total

    def now(self) -> float:
        self.sync()
        return self.total + (time.perf_counter() - self.start if self.start is not None else 0.0)


def train(method: Neus, scene, device: torch.device, budget_s: float, max_steps: int, marks=(), on_mark=None,
          check_every: int | None = None) -> tuple[int, float, dict]:
    """Train for budget_s seconds (or max_steps), calling on_mark(step, seconds) once the training time passes
    one or more of `marks` (clock paused meanwhile) and at the end. Progress for the schedules =
    max(step / max_steps, elapsed / budget_s), as the trainer's. Returns (steps, training seconds, the last
    step's statistics as floats).
    check_every: steps between clock reads (each a device sync); default 8 on CUDA, 1 elsewhere."""
    sampler = method.sampler(scene, device)
    check_every = check_every or (8 if device.type == "cuda" else 1)
    clock, marks, step, elapsed, marked = Clock(device), sorted(marks), 0, 0.0, -1
    clock.resume()
    while step < max_steps and elapsed < budget_s:
        batch = sampler.sample()
        batch.update(step=step, progress=min(max(step / max_steps, elapsed / budget_s), 1.0))
        stats = method.train_step(batch)
        step += 1
        if step % check_every == 0 or step == max_steps:
            elapsed = clock.now()
            if marks and elapsed >= marks[0]:
                while marks and elapsed >= marks[0]:
                    marks.pop(0)
                seconds = clock.pause()
                if on_mark is not None:
                    on_mark(step, seconds)
                marked = step
                clock.resume()
    seconds = clock.pause()
    if on_mark is not None and marked != step:  # the end of the run is the last mark
        on_mark(step, seconds)
    return step, seconds, {k: round(float(v), 5) for k, v in stats.items()} if step else {}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def mesh_pictures(mesh, cameras, path: Path) -> None:
    """Grey Lambert renders (headlight) of a mesh from C cameras of one size, side by side, as one PNG."""
    device = cameras.device
    vertices, faces = mesh.vertices.to(device), mesh.faces.to(device)
    tri = vertices[faces]
    normals = torch.nn.functional.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    images = []
    for i in range(len(cameras)):
        H, W = int(cameras.height[i]), int(cameras.width[i])
        _, face = rasterize(vertices, faces, cameras.c2w[i], cameras.K[i], H, W)
        _, directions = cameras.image_rays(i)
        hit = face >= 0
        shade = (normals[face.clamp_min(0)] * -directions).sum(-1).abs() * 0.8 + 0.15
        images.append(torch.where(hit, shade, torch.ones_like(shade)).reshape(H, W, 1).expand(H, W, 3))
    write_image(path, torch.cat(images, 1).cpu())


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.results: dict = {"device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                              else "cpu", "torch": torch.__version__, "quick": bool(args.quick),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "set": list(args.set or [])}
        try:
            import triton

            self.results["triton"] = triton.__version__
        except ImportError:
            pass
        self.dtu_method = self.dtu_scene = None

    def save(self) -> None:
        atomic_write_text(self.out / "results.json", json.dumps(self.results, indent=1) + "\n")

    def say(self, *parts) -> None:
        print(*parts, flush=True)

    def config(self, name: str, overrides: list[str]):
        quick = QUICK_MODEL if self.args.quick else []
        return load_run_config(find_config(name), overrides + quick + list(self.args.set or []))

    # --- (a) Armadillo: Chamfer over training time -----------------------------------------------------------

    def armadillo(self) -> None:
        a = self.args
        path = Path(a.data) / "meshes" / "armadillo.obj"
        overrides = [f"data.path={path}"]
        if a.quick:
            overrides += ["data.options={resolution: 32, n_views: 8}", "trainer.eval_times=[1, 2]",
                          "trainer.time_budget_s=3"]
        config = self.config("neus/armadillo", overrides)
        start = time.perf_counter()
        scene = load_split(config.data, "train")
        generate_s = time.perf_counter() - start
        H = int(scene.cameras.height[0])
        self.say(f"armadillo: {len(scene)} views at {H}x{H} generated in {generate_s:.1f} s on {self.device}")
        torch.manual_seed(0)
        reset_peak(self.device)
        method = Neus(config.model, scene, self.device)
        resolution = a.mesh_resolution if not a.quick else 32
        curve = []

        def on_mark(step: int, seconds: float) -> None:
            t0 = time.perf_counter()
            m = _with_resolution(method, resolution).metrics(scene, [])
            row = {"train_s": round(seconds, 2), "step": step, "eval_s": round(time.perf_counter() - t0, 2),
                   **{k: m[k] for k in ("chamfer_l1", "chamfer_l1_rel_diagonal", "normal_consistency", "fscore")
                      if k in m}}
            curve.append(row)
            rel = row.get("chamfer_l1_rel_diagonal", math.inf)
            self.say(f"  {seconds:7.1f} s  step {step:6d}  Chamfer-L1 / diagonal {100 * rel:.3f} %  "
                     f"NC {row.get('normal_consistency', 0):.3f}  F {row.get('fscore', 0):.3f}")
            self.results["armadillo"] = {"views": len(scene), "resolution": H, "generate_s": round(generate_s, 2),
                                         "mesh_resolution": resolution, "curve": curve}
            self.save()

        steps, seconds, stats = train(method, scene, self.device, config.trainer.time_budget_s,
                                      config.trainer.steps, config.trainer.eval_times, on_mark)
        goal = next((r for r in curve if r.get("chamfer_l1_rel_diagonal", 1) <= 0.003), None)
        self.results["armadillo"].update(steps=steps, train_s=round(seconds, 2), steps_per_s=round(steps / seconds, 2),
                                         peak_memory_gb=peak_gpu_gb(self.device),
                                         goal_0_3_percent_at_s=goal and goal["train_s"], last_step=stats)
        mesh = method.mesh(resolution, colors=False, world=False)
        mesh_pictures(mesh, _views(scene, 3, 512 if not a.quick else 32).to(self.device), self.out / "armadillo_mesh.png")
        self.save()

    # --- (b) DTU scan 65: held-out PSNR, mask IoU, mesh renders ------------------------------------------------

    def dtu(self) -> None:
        a = self.args
        root = Path(a.data) / "dtu" / "dtu_scan65"
        if not root.is_dir():
            self.say(f"dtu: skipped, {root} not found")
            self.results["dtu"] = {"skipped": f"{root} not found"}
            return
        overrides = [f"data.path={root}"] + (["data.downscale=16", "data.options={max_frames: 8}"] if a.quick else [])
        config = self.config("neus/dtu", overrides)
        start = time.perf_counter()
        scene = load_split(config.data, "train")
        down = a.eval_downscale if not a.quick else 32
        test = load_dataset(root, "test", downscale=down, background=config.data.eval_background,
                            max_frames=2 if a.quick else None)
        self.say(f"dtu: {len(scene)} training views at {int(scene.cameras.width[0])}x{int(scene.cameras.height[0])}, "
                 f"{len(test)} held out (rendered at 1/{down}), loaded in {time.perf_counter() - start:.1f} s")
        torch.manual_seed(0)
        reset_peak(self.device)
        method = Neus(config.model, scene, self.device)
        budget = a.dtu_budget if not a.quick else 3.0
        steps, seconds, stats = train(method, scene, self.device, budget, 10**9 if not a.quick else 12)
        train_peak = peak_gpu_gb(self.device)
        self.dtu_method, self.dtu_scene = method, scene
        t0 = time.perf_counter()
        bg = torch.tensor([0.0, 0.0, 0.0] if config.data.eval_background == "black" else [1.0, 1.0, 1.0])
        renders = []
        for i in range(len(test)):
            out = method.render(test.cameras[i : i + 1], bg)
            renders.append({k: v[0].cpu() for k, v in out.items()})
        render_s = time.perf_counter() - t0
        psnrs = [psnr(r["rgb"], test.rgb_on(i, bg)) for i, r in enumerate(renders)]
        m = method.metrics(test, renders)
        t0 = time.perf_counter()
        resolution = a.mesh_resolution if not a.quick else 32
        mesh = method.mesh(resolution, largest_component=True, colors=False, world=False)
        mesh_s = time.perf_counter() - t0
        tm = mesh.to_trimesh()
        self.results["dtu"] = {
            "train_views": len(scene), "heldout_views": len(test), "eval_downscale": down, "steps": steps,
            "train_s": round(seconds, 2), "steps_per_s": round(steps / seconds, 2), "peak_memory_gb": train_peak,
            "heldout_psnr": round(sum(psnrs) / len(psnrs), 3), "heldout_psnr_per_view": [round(p, 3) for p in psnrs],
            "mask_iou": round(m.get("mask_iou", float("nan")), 4), "render_s": round(render_s, 2),
            "mesh_resolution": resolution, "mesh_s": round(mesh_s, 2), "mesh_faces": int(mesh.faces.shape[0]),
            "mesh_watertight": bool(tm.is_watertight), "last_step": stats}
        self.say(f"  {steps} steps in {seconds:.1f} s; held-out PSNR {self.results['dtu']['heldout_psnr']:.2f} dB, "
                 f"mask IoU {self.results['dtu']['mask_iou']:.4f}; mesh {mesh.faces.shape[0]} faces, "
                 f"watertight {tm.is_watertight}")
        views = test.cameras[: min(3, len(test))].to(self.device)
        mesh_pictures(mesh, views, self.out / "dtu_mesh.png")
        r = renders[0]
        photo = test.rgb_on(0, bg)
        write_image(self.out / "dtu_heldout.png", torch.cat([photo, r["rgb"], 0.5 + 0.5 * r["normal"]], 1))
        self.save()

    # --- (c) one step: rates, memory, split ---------------------------------------------------------------------

    def step(self) -> None:
        a = self.args
        method, scene = self.dtu_method, self.dtu_scene
        if method is None:
            root = Path(a.data) / "dtu" / "dtu_scan65"
            name, overrides = ("neus/dtu", [f"data.path={root}"]) if root.is_dir() else ("neus/default", [])
            if a.quick and root.is_dir():
                overrides += ["data.downscale=16", "data.options={max_frames: 8}"]
            config = self.config(name, overrides)
            scene = load_split(config.data, "train")
            torch.manual_seed(0)
            method = Neus(config.model, scene, self.device)
            train(method, scene, self.device, math.inf, a.step_warmup if not a.quick else 4)  # a surface, a grid
        sampler = method.sampler(scene, self.device)
        rows = {}
        modes = ["grid", "no_grid"] if method.grid is not None else ["no_grid"]
        grid = method.grid
        for mode in modes:
            method.grid = grid if mode == "grid" else None  # no grid: stratified + importance sampling
            try:
                rows[mode] = self.measure_steps(method, sampler, a.step_count if not a.quick else 4)
            finally:
                method.grid = grid
            self.say(f"step ({mode}): {rows[mode]['steps_per_s']:.1f} steps/s, {rows[mode]['rays_per_s']:.3g} rays/s, "
                     f"{rows[mode]['step_ms']:.2f} ms: " + ", ".join(f"{k} {v:.1f} %" for k, v in
                                                                 rows[mode]["phase_percent"].items()))
            kernels = rows[mode].get("kernel_percent", {})
            if kernels:
                self.say("  kernels: " + ", ".join(f"{k} {v:.1f} %" for k, v in kernels.items()))
        self.results["step"] = {"rays_per_batch": sampler.batch_size, **rows}
        self.save()

    def measure_steps(self, method: Neus, sampler, n: int) -> dict:
        """steps/s, rays/s, peak memory, per-phase share (events) and per-kernel-group share (profiler)."""
        device, cuda = self.device, self.device.type == "cuda"
        step0 = 10**6  # past every warm-up: the grid (if any) is used, updates every update_every steps

        last: dict = {}

        def run(k: int, hook=None) -> None:
            method.phase_hook = hook
            for i in range(k):
                batch = sampler.sample()
                batch.update(step=step0 + i, progress=0.5)
                if hook is not None:
                    hook("start")
                last.update(method.train_step(batch))
            method.phase_hook = None

        run(3)  # warm up (compiles, caches)
        reset_peak(device)
        clock = Clock(device)
        clock.resume()
        run(n)
        seconds = clock.pause()
        marks: list[tuple[str, object]] = []

        def hook(name: str) -> None:
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append((name, event))
            else:
                marks.append((name, time.perf_counter()))

        run(n, hook)
        clock.sync()
        phases: dict[str, float] = {}
        for (_, a), (name, b) in itertools.pairwise(marks):
            if name == "start":
                continue
            ms = a.elapsed_time(b) if cuda else (b - a) * 1e3
            phases[name] = phases.get(name, 0.0) + ms / n
        total = sum(phases.values())
        row = {"steps_per_s": round(n / seconds, 2), "rays_per_s": round(n * sampler.batch_size / seconds),
               "step_ms": round(1e3 * seconds / n, 3), "peak_memory_gb": peak_gpu_gb(device),
               "phase_ms": {k: round(v, 3) for k, v in phases.items()},
               "phase_percent": {k: round(100 * v / total, 1) for k, v in phases.items()}}
        row["kernel_percent"] = self.kernel_split(method, lambda: run(n))
        row["last_step"] = {k: round(float(v), 5) for k, v in last.items()}  # samples_per_ray, rays_fit (grid)
        return row

    def kernel_split(self, method: Neus, work) -> dict[str, float]:
        """Device time (CPU time on a CPU) per Neus.profile_categories group, in % of the total."""
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            work()
            Clock(self.device).sync()
        split = {name: 0.0 for name in method.profile_categories}
        split["rest"] = 0.0
        for e in prof.key_averages():
            if cuda and e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.self_device_time_total if cuda else e.self_cpu_time_total
            if us <= 0:
                continue
            name = next((c for c, keys in method.profile_categories.items() if any(k in e.key for k in keys)), "rest")
            split[name] += us
        total = sum(split.values()) or 1.0
        return {k: round(100 * v / total, 1) for k, v in split.items()}


def _with_resolution(method: Neus, resolution: int) -> Neus:
    """The method seen with another eval_mesh_resolution (a shallow copy; the fields are shared)."""
    import copy
    import dataclasses

    view = copy.copy(method)
    view.config = dataclasses.replace(method.config, eval_mesh_resolution=resolution)
    return view


def _views(scene, n: int, size: int):
    """n of the scene's cameras, evenly spaced, resized to size x size pixels (square images)."""
    index = torch.linspace(0, len(scene) - 1, n).round().long()
    cameras = scene.cameras[index]
    scale = size / cameras.width.float()
    K = cameras.K.clone()
    K[:, :2] *= scale[:, None, None]
    return type(cameras)(c2w=cameras.c2w, K=K, width=torch.full_like(cameras.width, size),
                         height=torch.full_like(cameras.height, size))


def pack_dtu(src: str | Path, dst: str | Path, quality: int = 95) -> int:
    """Copy a NeuS-format scene with its images re-encoded as JPEG (masks and camera files copied as they are).
    Returns the bytes written."""
    import shutil

    import cv2

    src, dst = Path(src), Path(dst)
    if not (src / "cameras_sphere.npz").is_file() or not (src / "image").is_dir():
        raise DataError(f"{src}: not a NeuS scene (cameras_sphere.npz and image/ expected)")
    (dst / "image").mkdir(parents=True, exist_ok=True)
    for name in ("cameras_sphere.npz", "mask"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for image in sorted((src / "image").iterdir()):
        pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DataError(f"{image}: not a readable image")
        _, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        atomic_write_bytes(dst / "image" / f"{image.stem}.jpg", data.tobytes())
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ngraphics.methods.bench_neus", description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", help="output folder (results.json, PNGs)")
    parser.add_argument("--pack-dtu", nargs=2, metavar=("SRC", "DST"),
                        help="write a JPEG copy of a NeuS scene for the device (then exit)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--data", default=os.environ.get("NGRAPHICS_DATA", "../shared/data"),
                        help="the shared data folder with meshes/ and dtu/ (default: $NGRAPHICS_DATA or ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: every part in seconds on a CPU")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="config override for every part, as `ngraphics train --set` (e.g. "
                             "model.occupancy.resolution=0: no occupancy grid)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--mesh-resolution", type=int, default=256, help="marching-cubes grid of the measurements")
    parser.add_argument("--dtu-budget", type=float, default=120.0, help="DTU training seconds")
    parser.add_argument("--eval-downscale", type=float, default=4.0, help="held-out DTU views rendered at 1/this")
    parser.add_argument("--step-count", type=int, default=50, help="steps per timing of the step part")
    parser.add_argument("--step-warmup", type=int, default=300, help="training steps before the step part "
                        "when the DTU part did not run")
    args = parser.parse_args(argv)
    try:
        if args.pack_dtu:
            size = pack_dtu(*args.pack_dtu)
            print(f"wrote {args.pack_dtu[1]} ({size / 2**20:.1f} MiB)")
            return 0
        if args.out is None:
            parser.error("the output folder is required")
        return run(args)
    except NgraphicsError as err:  # missing data, bad configs: one line, like the CLI
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    bench.say(f"bench_neus on {bench.results['device']}, torch {torch.__version__}, output {bench.out}")
    for part in PARTS:
        if part in args.parts:
            start = time.perf_counter()
            getattr(bench, part)()
            bench.results.setdefault("wall_s", {})[part] = round(time.perf_counter() - start, 1)
            bench.save()
    bench.say(f"wrote {bench.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

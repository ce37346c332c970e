"""Render a trained run, or a splat file trained elsewhere, along a camera path to an MP4 (or a PNG sequence).

    ngraphics render runs/nerf-default-20261124-101500 --path orbit --frames 120
    ngraphics render my-run --path orbit --format png --scale 0.5
    ngraphics render garden.ply                          # a .ply/.splat/.spz file: orbit around its Gaussians
    ngraphics render garden.spz --data path/to/colmap_scene --path train   # the dataset's cameras instead

MP4 goes through imageio-ffmpeg (a dependency of ngraphics, with its own ffmpeg binary); should it be missing,
the frames are written as PNGs and the command says so. Output goes to RUN/video/<path>.mp4 or
RUN/video/<path>/frame_0000.png; for a splat file, to <file stem>_<path>.mp4 in the current folder.
A splat file needs no run folder: without --data the path circles the bulk of its Gaussians (8 cameras on a
ring about --up, 640x480 x --scale, 60 degrees wide); with --data it is built from that dataset's training
cameras, which must be in the file's frame (if no camera of the path sees a Gaussian, that is one error).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir), or a splat file "
                        "(.ply, .splat, .spz)")
    parser.add_argument("--path", default="orbit", help="camera path: orbit (default) or train (the training views)")
    parser.add_argument("--frames", type=int, default=120, help="number of frames (default 120)")
    parser.add_argument("--format", choices=("mp4", "png"), default="mp4", help="mp4 (default) or png")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor (0.5 halves width and height)")
    parser.add_argument("--spp", type=int, default=1, help="rays per pixel, averaged over sub-pixel offsets "
                        "(anti-aliasing; default 1)")
    parser.add_argument("--out", metavar="PATH", help="output file (mp4) or folder (png)")
    parser.add_argument("--background", choices=("white", "black"),
                        help="behind the scene (default: the run's data.eval_background; black for a splat file)")
    parser.add_argument("--data", metavar="PATH", help="splat file only: take the camera path from this "
                        "dataset's training cameras (default: a ring around the Gaussians)")
    parser.add_argument("--up", type=float, nargs=3, default=(0.0, -1.0, 0.0), metavar=("X", "Y", "Z"),
                        help="splat file without --data: the world's up direction (default 0 -1 0, the 3DGS/COLMAP "
                        "frame; 0 0 1 for Blender scenes)")
    parser.add_argument("--output", choices=OUTPUTS, default="rgb",
                        help="what to show: rgb (default), depth (turbo colour map, one range for the whole path), "
                             "alpha, or normal ((n + 1) / 2 of the world-space normals; surface runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR")


def ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ngraphics.errors import ConfigError
    from ngraphics.io.atomic import atomic_path
    from ngraphics.io.images import write_image
    from ngraphics.rendering.supersampling import render_supersampled

    if args.frames < 1 or args.scale <= 0 or args.spp < 1:
        raise ConfigError(f"--frames and --spp must be >= 1 and --scale > 0, got {args.frames}, {args.spp} and "
                          f"{args.scale}")
    if Path(args.run).suffix.lower() in SPLAT_SUFFIXES:
        method, cameras, background, default_out = _splat_file(args)
    else:
        if args.data:
            raise ConfigError("--data is for rendering a splat file; a run renders with its own dataset")
        method, cameras, background, default_out = _run_folder(args)
    fmt = args.format
    if fmt == "mp4" and not ffmpeg_available():
        print("imageio-ffmpeg is not installed (pip install imageio-ffmpeg): writing PNG frames instead of MP4",
              file=sys.stderr)
        fmt = "png"
    seconds = [0.0]
    depth_range: list[tuple[float, float]] = []  # the first frame's, kept for the whole path

    def render(i: int) -> torch.Tensor:  # timed, synchronised: frames/s counts rendering only, not encoding
        start = time.perf_counter()
        out = render_supersampled(method, cameras[i], background, args.spp)
        if i == 0 and args.output not in out:
            have = ", ".join(k for k in OUTPUTS if k in out)
            raise ConfigError(f"--output {args.output}: this run's method ({type(method).__name__}) renders {have}")
        image = out[args.output][0]
        if image.is_cuda:
            torch.cuda.synchronize(image.device)
        seconds[0] += time.perf_counter() - start
        alpha = out["alpha"][0].float().cpu() if "alpha" in out else None
        return frame_picture(image.float().cpu(), args.output, alpha, depth_range)

    frames = tqdm((render(i) for i in range(len(cameras))), total=len(cameras), unit="frame", file=sys.stderr)
    if fmt == "mp4":
        import imageio.v2 as imageio

        out = Path(args.out) if args.out else default_out.with_name(default_out.name + ".mp4")
        with atomic_path(out) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=args.fps, codec="libx264", quality=8,
                                        macro_block_size=1)
            try:
                for frame in frames:
                    writer.append_data((frame.numpy() * 255 + 0.5).astype(np.uint8))
            finally:
                writer.close()
    else:
        out = Path(args.out) if args.out else default_out
        for i, frame in enumerate(frames):
            write_image(out / f"frame_{i:04d}.png", frame)
    print(f"{len(cameras)} frames ({int(cameras.width[0])}x{int(cameras.height[0])}) in {seconds[0]:.2f} s of "
          f"rendering ({len(cameras) / max(seconds[0], 1e-9):.2f} frames/s): {out}", file=sys.stderr)
    return 0


SPLAT_SUFFIXES = (".ply", ".splat", ".spz")
OUTPUTS = ("rgb", "depth", "alpha", "normal")


def frame_picture(image, output: str, alpha, depth_range: list):
    """One frame of `--output` as an (H, W, 3) float picture in [0, 1]. image: the render's (H, W, k) output;
    alpha: its (H, W, 1) opacity (depth fades to black where nothing was hit) or None; depth_range: [] before
    the first depth frame, which fills it with its 1st..99th percentiles, then reused (no flicker). CPU tensors."""
    import torch

    from ngraphics.training.evaluation import normal_picture
    from ngraphics.viewer.frames import depth_picture
    from ngraphics.viewer.frames import depth_range as percentiles

    if output == "rgb":
        return image.clamp(0, 1)
    if output == "normal":
        return normal_picture(image)
    if output == "alpha":
        return image.clamp(0, 1).repeat(1, 1, 3)
    if not depth_range:
        depth_range.append(percentiles(image, alpha))
    return torch.from_numpy(depth_picture(image, alpha, depth_range[0])).float() / 255


def _run_folder(args: argparse.Namespace):
    """(method, path cameras, background (3,), output stem) of a trained run."""
    import torch

    from ngraphics.rendering.camera_paths import make_path
    from ngraphics.training.evaluation import BACKGROUNDS
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run

    folder = resolve_run(args.run, args.runs_dir)
    config, method, scene, _ = restore_run(folder, None, args.device)
    cameras = make_path(args.path, scene.cameras, args.frames, scale=args.scale)
    background = torch.tensor(BACKGROUNDS[args.background or config.data.eval_background])
    return method, cameras, background, folder.video_dir / args.path


def _splat_file(args: argparse.Namespace):
    """(method, path cameras, background (3,), output stem) of a .ply/.splat/.spz file, no run folder."""
    import torch

    from ngraphics.data.load import load_dataset
    from ngraphics.devices import pick_device
    from ngraphics.io.splat_files import read_splats
    from ngraphics.methods.splat import Splat
    from ngraphics.rendering.camera_paths import make_path
    from ngraphics.splatting.views import cameras_around
    from ngraphics.training.evaluation import BACKGROUNDS

    path = Path(args.run)
    splats = read_splats(path)
    method = Splat.from_splats(splats, pick_device(args.device, "--device"))
    if args.data:
        base, where = load_dataset(args.data, "train").cameras, f"from the training cameras of {args.data}"
    else:
        base, where = cameras_around(splats.means, up=tuple(args.up)), f"around the Gaussians, up {tuple(args.up)}"
    cameras = make_path(args.path, base, args.frames, scale=args.scale)
    counts = method.check_in_view(cameras, f"{path}: the {len(cameras)} cameras of path {args.path} ({where})")
    print(f"{path}: {len(splats)} Gaussians of SH degree {splats.sh_degree}; {int((counts > 0).sum())} of "
          f"{len(cameras)} frames see some", file=sys.stderr)
    background = torch.tensor(BACKGROUNDS[args.background or "black"])
    return method, cameras, background, Path(f"{path.stem}_{args.path}")

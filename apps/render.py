"""Render a trained run along a camera path to an MP4 (or a PNG sequence).

    ngraphics render runs/nerf-default-20261124-101500 --path orbit --frames 120
    ngraphics render my-run --path orbit --format png --scale 0.5

MP4 goes through imageio-ffmpeg (a dependency of ngraphics, with its own ffmpeg binary); should it be missing,
the frames are written as PNGs and the command says so. Output goes to RUN/video/<path>.mp4 or RUN/video/<path>/frame_0000.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir)")
    parser.add_argument("--path", default="orbit", help="camera path: orbit (default) or train (the training views)")
    parser.add_argument("--frames", type=int, default=120, help="number of frames (default 120)")
    parser.add_argument("--format", choices=("mp4", "png"), default="mp4", help="mp4 (default) or png")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor (0.5 halves width and height)")
    parser.add_argument("--spp", type=int, default=1, help="rays per pixel, averaged over sub-pixel offsets "
                        "(anti-aliasing; default 1)")
    parser.add_argument("--out", metavar="PATH", help="output file (mp4) or folder (png)")
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
    from ngraphics.rendering.camera_paths import make_path
    from ngraphics.rendering.supersampling import render_supersampled
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.evaluation import BACKGROUNDS
    from ngraphics.training.trainer import restore_run

    if args.frames < 1 or args.scale <= 0 or args.spp < 1:
        raise ConfigError(f"--frames and --spp must be >= 1 and --scale > 0, got {args.frames}, {args.spp} and "
                          f"{args.scale}")
    folder = resolve_run(args.run, args.runs_dir)
    config, method, scene, _ = restore_run(folder, None, args.device)
    cameras = make_path(args.path, scene.cameras, args.frames, scale=args.scale)
    fmt = args.format
    if fmt == "mp4" and not ffmpeg_available():
        print("imageio-ffmpeg is not installed (pip install imageio-ffmpeg): writing PNG frames instead of MP4",
              file=sys.stderr)
        fmt = "png"
    background = torch.tensor(BACKGROUNDS[config.data.eval_background])
    seconds = [0.0]

    def render(i: int) -> torch.Tensor:  # timed, synchronised: frames/s counts rendering only, not encoding
        start = time.perf_counter()
        rgb = render_supersampled(method, cameras[i], background, args.spp)["rgb"][0]
        if rgb.is_cuda:
            torch.cuda.synchronize(rgb.device)
        seconds[0] += time.perf_counter() - start
        return rgb.clamp(0, 1).cpu()

    frames = tqdm((render(i) for i in range(len(cameras))), total=len(cameras), unit="frame", file=sys.stderr)
    if fmt == "mp4":
        import imageio.v2 as imageio

        out = Path(args.out) if args.out else folder.video_dir / f"{args.path}.mp4"
        with atomic_path(out) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=args.fps, codec="libx264", quality=8,
                                        macro_block_size=1)
            try:
                for frame in frames:
                    writer.append_data((frame.numpy() * 255 + 0.5).astype(np.uint8))
            finally:
                writer.close()
    else:
        out = Path(args.out) if args.out else folder.video_dir / args.path
        for i, frame in enumerate(frames):
            write_image(out / f"frame_{i:04d}.png", frame)
    print(f"{len(cameras)} frames ({int(cameras.width[0])}x{int(cameras.height[0])}) in {seconds[0]:.2f} s of "
          f"rendering ({len(cameras) / max(seconds[0], 1e-9):.2f} frames/s): {out}", file=sys.stderr)
    return 0

"""Evaluate a trained run on its test split: PSNR and SSIM per view and mean, images into RUN/eval/.

    ngraphics eval runs/nerf-default-20261124-101500
    ngraphics eval my-run --split val

LPIPS is not computed: it needs network weights downloaded at run time.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir)")
    parser.add_argument("--split", help="split to evaluate (default: the config's data.eval_split)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR")
    parser.add_argument("--no-images", action="store_true", help="metrics only")
    parser.add_argument("--spp", type=int, help="rays per pixel, averaged over sub-pixel offsets (default: the "
                        "run's trainer.eval_spp; instant-ngp evaluates NeRF-synthetic with 8)")


def run(args: argparse.Namespace) -> int:
    from ngraphics.errors import ConfigError
    from ngraphics.io.atomic import atomic_write_text
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.evaluation import evaluate_method
    from ngraphics.training.trainer import restore_run

    folder = resolve_run(args.run, args.runs_dir)
    config, method, scene, checkpoint = restore_run(folder, args.split, args.device)
    split = args.split or config.data.eval_split
    out_dir = None if args.no_images else folder.eval_dir
    spp = config.trainer.eval_spp if args.spp is None else args.spp
    if spp < 1:
        raise ConfigError(f"--spp: expected a positive integer, got {spp}")
    result = evaluate_method(method, scene, config.data.eval_background, None, out_dir, spp=spp, progress=True)
    step = int(checkpoint.stem.split("_")[-1])
    summary = {"split": split, "step": step, "checkpoint": str(checkpoint), "spp": spp, **result}
    atomic_write_text(folder.eval_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    numbers = {k: v for k, v in result.items() if k != "per_view"}  # PSNR, SSIM and the method's own metrics
    folder.log({"step": step, "split": split, "eval": True, **numbers, "spp": spp})
    for view in result["per_view"]:
        print(f"  {view['name']:<24} PSNR {view['psnr']:6.2f} dB  SSIM {view['ssim']:.4f}")
    own = "".join(f", {k} {v:.4g}" for k, v in numbers.items()  # the method's own metrics (Chamfer, IoU, ...)
                  if k not in ("psnr", "ssim", "n_views") and isinstance(v, float))
    print(f"{split}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}{own} over {result['n_views']} views "
          f"(step {step}, background {config.data.eval_background}, {spp} rays per pixel)")
    print(f"images and metrics.json: {folder.eval_dir}/", file=sys.stderr)
    return 0

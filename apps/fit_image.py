"""Fit an encoding + MLP to an image, like instant-ngp's / tiny-cuda-nn's image demo.

    ngraphics fit-image                                  # scikit-image's astronaut, HashGrid, CPU or CUDA
    ngraphics fit-image photo.jpg --encoding Simplex --steps 2000
    ngraphics fit-image albert.exr --config tiny-cuda-nn/data/config_hash.json
    ngraphics fit-image photo.png --encoding my_grid.yaml --set encoding.log2_hashmap_size=16

Config blocks and precedence: configs/image/hashgrid.json (tiny-cuda-nn's config_hash.json) < --config <
--encoding < --steps/--batch/--max-size < --set. JSON --config files are read as tinycudann configs (unknown
keys ignored with one warning); YAML configs and --encoding files are ngraphics configs (unknown keys are
errors). Results go to a new run folder (runs/fit-image-<image>-<encoding>, suffixed -2, -3, ... if taken).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ngraphics.errors import ConfigError

_NAMES = "HashGrid, Simplex, DenseGrid, TiledGrid, Frequency, OneBlob, TriangleWave, ..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", help="PNG/JPG/EXR to fit (default: scikit-image's astronaut)")
    parser.add_argument("--encoding", metavar="NAME|FILE", help=f"encoding name ({_NAMES}) or a JSON/YAML file")
    parser.add_argument("--config", metavar="FILE", help="whole config: tinycudann JSON or ngraphics YAML")
    parser.add_argument("--steps", type=int, help="training steps (default: 300 on CPU, 5000 on CUDA)")
    parser.add_argument("--batch", type=int, help="points per step (default: 2^13 on CPU, 2^18 on CUDA)")
    parser.add_argument("--max-size", type=int, help="downscale the image to this longer side (0: full size; "
                        "default 512)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/fit-image-<image>-<encoding>)")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="default: auto (cuda when available, else cpu)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set encoding.n_levels=8 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ngraphics.config import to_dict
    from ngraphics.devices import pick_device
    from ngraphics.training.image_fitting import (
        ImageFitter,
        fit,
        fit_image_config,
        load_target,
        resolve_config,
    )

    device = pick_device(args.device, "--device")
    overrides = list(args.overrides)
    for flag, key in ((args.steps, "fit.steps"), (args.batch, "fit.batch_size"), (args.max_size, "fit.max_size")):
        if flag is not None:
            overrides.insert(0, f"{key}={flag}")
    resolved = resolve_config(args.config, args.encoding, overrides)
    config, ignored = fit_image_config(resolved.data, resolved.where, strict=resolved.strict)
    config = dataclasses.replace(config, fit=config.fit.resolved(device))
    target = load_target(args.image, config.fit.max_size)
    fitter = ImageFitter(target.image, config, device=device, backend=args.backend, strict=resolved.strict)
    ignored += fitter.unknown_keys
    _check_overrides_used(args.overrides, ignored)
    if ignored:
        print(f"warning: {resolved.where}: ignoring keys ngraphics does not use: {', '.join(ignored)}", file=sys.stderr)
    out = args.out or f"runs/fit-image-{target.name}-{resolved.label}"
    h, w, c = target.image.shape
    print(f"fit-image: {target.source} -> {w}x{h}x{c}, {config.encoding['otype']} + {config.network.get('otype')}, "
          f"{fitter.n_params:,} params ({fitter.encoding_params:,} in the encoding), "
          f"{config.fit.steps} steps x {config.fit.batch_size} points on {device}", file=sys.stderr)
    resolved_dict = {**to_dict(config), "encoding": fitter.model.encoding.config_dict(),
                     "network": fitter.model.network.config_dict()}
    summary = fit(fitter, target, out, resolved_config=resolved_dict, progress=not args.quiet,
                  extra_summary={"backend": args.backend})
    state = "interrupted at" if summary["interrupted"] else "after"
    print(f"PSNR {summary['psnr']:.2f} dB {state} {summary['steps']} steps "
          f"(a constant colour reaches {summary['constant_colour_psnr']:.2f} dB); "
          f"results in {summary['folder']}/")
    return 130 if summary["interrupted"] else 0


def _check_overrides_used(overrides: list[str], ignored: list[str]) -> None:
    """--set keys are always strict, even on top of a tinycudann config."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in ignored:
            raise ConfigError(f"--set {key}: not a key ngraphics uses for this config")

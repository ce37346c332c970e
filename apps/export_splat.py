"""Export a trained splat run as a standard splat file: INRIA 3DGS .ply, antimatter15 .splat or Niantic .spz.

    ngraphics export splat runs/splat-default-20261202-053000 --format ply
    ngraphics export splat my-run --format spz --out my-run.spz

`add_arguments(parser)` and `export_splat(args)` are the `export splat` sub-verb (joined with `export mesh` in
apps/export.py). Gaussians with NaN or infinite parameters are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder of a splat run (path or name under --runs-dir)")
    parser.add_argument("--format", choices=("ply", "splat", "spz"), default="ply", help="file format (default: ply)")
    parser.add_argument("--out", metavar="PATH", help="output file (default: RUN/export/splats.<format>)")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR")


def export_splat(args: argparse.Namespace) -> int:
    from ngraphics.errors import ConfigError
    from ngraphics.io.splat_files import write_splats
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run

    folder = resolve_run(args.run, args.runs_dir)
    config, method, _, checkpoint = restore_run(folder, device="cpu")
    if args.format not in method.exports:
        raise ConfigError(f"{folder.path}: method {config.method!r} exports {', '.join(method.exports) or 'nothing'}, "
                          f"not {args.format!r}")
    out = Path(args.out) if args.out else folder.path / "export" / f"splats.{args.format}"
    splats = method.splats()
    dropped = write_splats(out, splats, args.format)
    note = f"; left out {dropped} with NaN or infinite parameters" if dropped else ""
    print(f"{out}: {len(splats) - dropped} Gaussians ({args.format}, from {checkpoint.name}){note}", file=sys.stderr)
    return 0


run = export_splat  # so that the module also works as a stand-alone verb

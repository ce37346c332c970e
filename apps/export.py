"""Export a trained run as a file: `ngraphics export mesh RUN` writes a marching-cubes mesh of a surface method.

    ngraphics export mesh runs/neus-default-20261202-050000
    ngraphics export mesh my-run --resolution 512 --format glb --largest-component
    ngraphics export mesh my-run --bounds -0.5 -0.5 -0.5 0.5 0.5 0.5 --out skull.ply

The mesh is in the dataset's world frame (DTU: through scale_mat), with vertex colours; --bounds are in the
frame the method trained in (the scene box by default). Output: RUN/export/mesh.<format> unless --out.
Bad input (an SDF that never crosses zero in the bounds, a resolution too large for memory, an empty mesh)
is a one-line error and no file is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("mesh",), help="what to export (mesh)")
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir)")
    parser.add_argument("--resolution", type=int, help="marching-cubes grid points per axis (default: the "
                        "run's model.export_resolution, 512 unless set)")
    parser.add_argument("--bounds", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                        help="box to mesh, in the training frame (default: the scene box)")
    parser.add_argument("--format", choices=("ply", "obj", "glb"), help="file format (default: from --out, else ply)")
    parser.add_argument("--largest-component", action="store_true", help="keep only the largest connected part")
    parser.add_argument("--out", metavar="PATH", help="output file (default RUN/export/mesh.<format>)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    import time

    from ngraphics.errors import ConfigError
    from ngraphics.export.mesh import check_bounds
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run

    folder = resolve_run(args.run, args.runs_dir)
    bounds = None if args.bounds is None else check_bounds(args.bounds)
    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "ply")
    out = Path(args.out) if args.out else folder.path / "export" / f"mesh.{fmt}"
    _, method, _, _ = restore_run(folder, None, args.device)
    if args.kind not in method.exports:
        raise ConfigError(f"export {args.kind}: {type(method).__name__} exports "
                          f"{', '.join(method.exports) or 'nothing'}")
    start = time.perf_counter()
    path = method.export(args.kind, out, resolution=args.resolution, bounds=bounds,
                         largest_component=args.largest_component, fmt=fmt)
    print(f"{path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    print(path)
    return 0

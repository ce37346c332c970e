"""Export a trained run as a file: a marching-cubes mesh of a surface run, or the Gaussians of a splat run.

    ngraphics export mesh runs/neus-default-20261202-050000
    ngraphics export mesh my-run --resolution 512 --format glb --largest-component
    ngraphics export mesh my-run --bounds -0.5 -0.5 -0.5 0.5 0.5 0.5 --out skull.ply
    ngraphics export splat runs/splat-default-20261202-053000 --format spz   # ply (INRIA 3DGS), splat, spz

The mesh is in the dataset's world frame (DTU: through scale_mat), with vertex colours; --bounds are in the
frame the method trained in (the scene box by default). Output: RUN/export/mesh.<format> unless --out.
Bad input (an SDF that never crosses zero in the bounds, a resolution too large for memory, an empty mesh)
is a one-line error and no file is written. Splats: RUN/export/splats.<format> unless --out; Gaussians with
NaN or infinite parameters are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MESH_FORMATS = ("ply", "obj", "glb")
SPLAT_FORMATS = ("ply", "splat", "spz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("mesh", "splat"), help="what to export: mesh (surface runs) or splat "
                        "(splat runs)")
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir)")
    parser.add_argument("--resolution", type=int, help="marching-cubes grid points per axis (default: the "
                        "run's model.export_resolution, 512 unless set)")
    parser.add_argument("--bounds", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                        help="box to mesh, in the training frame (default: the scene box)")
    parser.add_argument("--format", choices=MESH_FORMATS + SPLAT_FORMATS,
                        help="mesh: ply, obj or glb; splat: ply, splat or spz (default: from --out, else ply)")
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
    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "ply")
    formats = MESH_FORMATS if args.kind == "mesh" else SPLAT_FORMATS
    if fmt not in formats:
        raise ConfigError(f"--format: {fmt!r} is not a {args.kind} format ({', '.join(formats)})")
    if args.kind == "splat" and (args.resolution or args.bounds or args.largest_component):
        raise ConfigError("--resolution, --bounds and --largest-component are for meshes, not splats")
    bounds = None if args.bounds is None else check_bounds(args.bounds)
    name = "mesh" if args.kind == "mesh" else "splats"
    out = Path(args.out) if args.out else folder.path / "export" / f"{name}.{fmt}"
    _, method, _, checkpoint = restore_run(folder, None, args.device)
    kind = "mesh" if args.kind == "mesh" else fmt  # a splat method exports each file format as its own kind
    if kind not in method.exports:
        raise ConfigError(f"export {args.kind}: {type(method).__name__} exports "
                          f"{', '.join(method.exports) or 'nothing'}")
    start = time.perf_counter()
    if args.kind == "mesh":
        path = method.export(kind, out, resolution=args.resolution, bounds=bounds,
                             largest_component=args.largest_component, fmt=fmt)
    else:
        path = method.export(kind, out)
    print(f"{path} ({time.perf_counter() - start:.1f} s, from {checkpoint.name})", file=sys.stderr)
    print(path)
    return 0

"""Explore a trained run in the browser: `ngraphics view RUN` serves it with viser and prints the URL.

    ngraphics view runs/nerf-default-20261124-101500            # http://localhost:8080 (this machine only)
    ngraphics view my-run --port 9000 --host 0.0.0.0              # reachable from other machines

The browser shows the scene rendered from its camera (RGB, depth, alpha and whatever else the method
renders), the training cameras with their photos (click one to jump to it), a crop box, a time slider for
dynamic scenes, export buttons and a screenshot button (PNGs go to RUN/screenshots/). Ctrl-C stops it.
`ngraphics train --viewer` shows the same while training. docs/viewer.md has the details.
"""

from __future__ import annotations

import argparse


def add_viewer_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The viewer's flags, shared with `train --viewer` (there with the `--viewer-` prefix)."""
    from ngraphics.viewer.config import ViewerConfig

    d = ViewerConfig()
    parser.add_argument(f"--{prefix}host", default=d.host,
                        help=f"address to serve on (default {d.host}: this machine only; 0.0.0.0: every interface)")
    parser.add_argument(f"--{prefix}port", type=int, default=d.port,
                        help=f"first port to try (default {d.port}; a port in use moves to the next free one)")
    parser.add_argument(f"--{prefix}max-resolution", type=int, default=d.max_resolution, metavar="PIXELS",
                        help=f"longer side of a still frame (default {d.max_resolution})")


def viewer_config(args: argparse.Namespace, prefix: str = "", **extra):
    from ngraphics.viewer.config import ViewerConfig

    p = prefix.replace("-", "_")
    return ViewerConfig(host=getattr(args, f"{p}host"), port=getattr(args, f"{p}port"),
                        max_resolution=getattr(args, f"{p}max_resolution"), **extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder (path or name under --runs-dir)")
    parser.add_argument("--split", help="cameras and photos to show (default: the run's training split)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR")
    add_viewer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from ngraphics.training.evaluation import BACKGROUNDS
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run
    from ngraphics.viewer import Viewer

    folder = resolve_run(args.run, args.runs_dir)
    config = viewer_config(args)  # bad flags fail before the model loads
    mapping = folder.read_config()
    split = args.split or mapping.get("data", {}).get("train_split", "train")
    run_config, method, scene, checkpoint = restore_run(folder, split, args.device)
    print(f"viewing {checkpoint} ({type(method).__name__}, {len(scene)} {split} cameras); Ctrl-C to stop",
          file=sys.stderr)
    viewer = Viewer(method, scene, folder.path, config, BACKGROUNDS[run_config.data.eval_background])
    try:
        viewer.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0

"""Train a scene from a YAML config into a run folder (default: NeRF on the built-in procedural scene).

    ngraphics train                                   # configs/nerf/default.yaml: procedural scene, CPU-sized
    ngraphics train nerf/lego --data path/to/nerf_synthetic/lego
    ngraphics train configs/nerf/fox.yaml --data path/to/fox --set trainer.time_budget_s=60
    ngraphics train --resume runs/nerf-lego-20261124-101500 --set trainer.steps=40000
    ngraphics train --method splat                    # configs/splat/default.yaml
    ngraphics train splat/lego --data path/to/lego --init trained.ply     # fine-tune a splat file

CONFIG is a YAML file or a bundled name (nerf/default, nerf/lego, nerf/fox, nerf/colmap); lego, fox and colmap
are sized for a CUDA GPU: started on a CPU they print the `--set` flags that make them CPU-sized. `--set key=value`
overrides any key (`trainer.steps=2000`, `model.field.encoding.n_levels=8`). The run folder
runs/<name>/ gets config.yaml, metrics.jsonl, checkpoints/ and renders/. Ctrl-C saves a checkpoint;
`--resume RUN` continues from the newest one that verifies. `--check-finite` stops at the first NaN/inf entering
or leaving an encoding or network and names it. `--gpus N` trains with N processes (data parallel on
torch.distributed: one per GPU on CUDA, gloo processes on a CPU); `torchrun --nproc_per_node N -m
ngraphics.cli train ...` does the same; a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config or bundled name (default: nerf/default)")
    parser.add_argument("--method", help="train configs/<METHOD>/default.yaml (instead of CONFIG)")
    parser.add_argument("--init", metavar="FILE", help="start from a splat file: .ply, .splat or .spz (sets model.init)")
    parser.add_argument("--data", metavar="PATH", help="dataset folder or file (sets data.path)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set trainer.steps=2000 (repeatable)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run folder (path or name under --runs-dir)")
    parser.add_argument("--name", help="run folder name (default: <method>-<config>-<date>-<time>)")
    parser.add_argument("--runs-dir", default="runs", metavar="DIR", help="where run folders go (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--gpus", type=int, default=None, metavar="N",
                        help="train with N processes on torch.distributed (one per GPU; on a CPU: gloo)")
    parser.add_argument("--check-finite", action="store_true",
                        help="name the first encoding or network whose input or output has NaN/inf (slower)")
    from ngraphics.apps.view import add_viewer_arguments
    from ngraphics.viewer.config import ViewerConfig

    share = ViewerConfig().render_share
    parser.add_argument("--viewer", action="store_true",
                        help="watch training in the browser (viser; stays up after training until Ctrl-C)")
    parser.add_argument("--viewer-share", type=float, default=share, metavar="FRACTION",
                        help=f"share of wall time the viewer may spend rendering, 0.001 .. 1 (default {share})")
    add_viewer_arguments(parser, "viewer-")


def run(args: argparse.Namespace) -> int:
    from ngraphics.devices import pick_device
    from ngraphics.errors import ConfigError
    from ngraphics.methods import METHODS, method_class
    from ngraphics.training import distributed

    world = distributed.launched_world_size()
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus: expected a positive number of processes, got {args.gpus}")
    if args.gpus is not None and world > 1 and args.gpus != world:
        raise ConfigError(f"--gpus {args.gpus} under torchrun with {world} processes; drop --gpus or match")
    config, path, run_folder = _resolve_config(args)  # a mistake fails here, before processes start
    processes = world if args.gpus is None else args.gpus
    if processes > 1 and not method_class(config.method).data_parallel:
        able = ", ".join(name for name, cls in METHODS.items() if cls.data_parallel)
        raise ConfigError(f"--gpus {processes}: method {config.method!r} trains on one process so far "
                          f"(several: {able})")
    device = pick_device(config.trainer.device, "trainer.device")
    if processes > 1 and world == 1:  # start the processes; each runs this verb again
        distributed.check_gpus(processes, device)
        return distributed.launch(processes, getattr(args, "argv", sys.argv[1:]))
    dist = distributed.start(device)
    try:
        return _train_as(args, config, path, run_folder, dist)
    finally:
        distributed.stop(dist)


def _resolve_config(args: argparse.Namespace):
    """The run config from CONFIG (or --method, or --resume's run folder), --set and --data.
    Returns (config, its file, the run folder when resuming else None)."""
    from ngraphics.config import apply_overrides, load_mapping
    from ngraphics.errors import ConfigError
    from ngraphics.training.run_config import find_config, parse_run_config
    from ngraphics.training.run_folder import resolve_run

    overrides = list(args.overrides) + (["trainer.progress=false"] if args.quiet else [])
    overrides += ["trainer.check_finite=true"] if args.check_finite else []
    if args.init:
        overrides.append(f"model.init={Path(args.init).resolve()}")
    if args.method:
        if args.config:
            raise ConfigError(f"--method {args.method} picks configs/{args.method}/default.yaml; drop CONFIG or --method")
        args.config = f"{args.method}/default"
    run_folder = None
    if args.resume:
        if args.config:
            raise ConfigError("--resume takes the config from the run folder; drop CONFIG (use --set to change keys)")
        run_folder = resolve_run(args.resume, args.runs_dir)
        path, mapping = run_folder.config_path, run_folder.read_config()
    else:
        path = find_config(args.config)
        mapping = load_mapping(path)
        parse_run_config(mapping, str(path))  # errors in the file name the file
    mapping = apply_overrides(mapping, overrides)
    if args.data:
        mapping.setdefault("data", {})["path"] = args.data
    return parse_run_config(mapping, f"{path} with --set" if overrides else str(path)), path, run_folder


def _train_as(args: argparse.Namespace, config, path: Path, run_folder, dist) -> int:
    """Train `config` as this process (`dist`: one rank of a multi-process run, or the only process)."""
    from ngraphics.errors import ConfigError
    from ngraphics.training import distributed
    from ngraphics.training.run_config import default_run_name
    from ngraphics.training.run_folder import RunFolder
    from ngraphics.training.trainer import Trainer

    if args.resume:
        trainer = Trainer(config, run_folder, resume=True, dist=dist)
    else:
        name = args.name or config.name or default_run_name(Path(path), config.method)
        name = distributed.from_main(name, dist)  # a name made from the clock: the main rank's
        run_folder = RunFolder(Path(args.runs_dir) / name, keep_checkpoints=config.trainer.keep_checkpoints)
        exists = run_folder.config_path.exists()
        distributed.barrier(dist)  # every rank has looked before the main rank writes config.yaml
        if exists:
            raise ConfigError(f"{run_folder.path} already exists: continue it with --resume {run_folder.path} "
                              "or choose another --name")
        trainer = Trainer(config, run_folder, dist=dist)
    run_folder.checkpoints.keep = config.trainer.keep_checkpoints
    missing = [item for item in config.cpu_recipe if not _holds(config.to_dict(), item)]
    # after loading: a mistake in the data still gets one line
    if missing and trainer.device.type == "cpu" and dist.is_main:
        flags = " ".join(f"--set {item}" for item in missing)
        print(f"warning: {path} is sized for a CUDA GPU and would take hours on this CPU; CPU-sized: {flags}",
              file=sys.stderr)
    viewer = _start_viewer(args, trainer) if args.viewer and trainer.dist.is_main else None
    result = trainer.train()
    if not dist.is_main:  # the main rank reports
        return 130 if result.get("interrupted") else 0
    if result.get("interrupted"):
        if viewer is not None:
            viewer.close()
        return 130
    print(f"done: {trainer.step} steps in {trainer.elapsed:.1f} s of training; "
          f"{config.data.eval_split} PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}", file=sys.stderr)
    if config.trainer.render_final:
        print(f"renders: {run_folder.renders}/", file=sys.stderr)
    print(f"run folder: {run_folder.path}  (ngraphics eval {run_folder.path}; ngraphics render {run_folder.path} "
          "--path orbit)", file=sys.stderr)
    if viewer is not None:
        print(f"viewer still serving the trained scene at {viewer.url}; Ctrl-C to stop", file=sys.stderr)
        try:
            viewer.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _holds(config: dict, override: str) -> bool:
    """Does the resolved config already have the value `key=value` sets?"""
    from ngraphics.config import parse_override

    keys, value = parse_override(override)
    node = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return node == value


def _start_viewer(args: argparse.Namespace, trainer):
    """The live viewer as a trainer hook (ngraphics.viewer): renders between steps within its time share."""
    from ngraphics.apps.view import viewer_config
    from ngraphics.training.evaluation import BACKGROUNDS
    from ngraphics.viewer import Viewer

    config = viewer_config(args, "viewer-", render_share=args.viewer_share)
    viewer = Viewer(trainer.method, trainer.train_scene, trainer.run.path, config,
                    BACKGROUNDS[trainer.config.data.eval_background], lock=trainer.lock, training=True)
    trainer.hooks.append(viewer)
    return viewer

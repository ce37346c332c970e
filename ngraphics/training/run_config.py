"""A run's config: the `data`, `trainer` and `model` blocks as typed dataclasses, bundled-config lookup, and
loading the splits a run needs.

    config = load_run_config(find_config("nerf/lego"), ["trainer.steps=2000"])
    scene = load_split(config.data, "train")

Errors name the file (or `--set`) and the key: `lego.yaml: trainer: stpes is not a TrainerConfig key (did you
mean steps?)`. configs/README.md documents every key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ngraphics.config import apply_overrides, configs_root, from_dict, load_mapping, to_dict
from ngraphics.data import load_dataset
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError
from ngraphics.methods import method_class


@dataclass(frozen=True)
class DataConfig:
    """Keys of the `data` block.

    path: dataset folder or transforms file; null = the built-in procedural scene. A run stores it as an
        absolute path.
    path_from_run: set by the trainer: `path` relative to the run folder, tried when `path` is gone (a run
        folder moved or copied together with its data).
    downscale: image size divisor applied at load (2 = half width and height).
    background: what RGBA training images are composited on: random (a new colour per ray or view), white,
        black, auto (the dataset's choice).
    eval_background: background of RGBA test images and of renders (white is the NeRF-synthetic protocol).
    train_split, eval_split: split names passed to the loader.
    eval_views: periodic evaluations use this many evenly spaced eval views (the final one uses all); 0 = all.
    options: extra keyword arguments for the loader (e.g. {max_frames: 20}).
    """

    path: str | None = None
    path_from_run: str | None = None
    downscale: float = 1.0
    background: Literal["random", "white", "black", "auto"] = "random"
    eval_background: Literal["white", "black"] = "white"
    train_split: str = "train"
    eval_split: str = "test"
    eval_views: int = 4
    options: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if isinstance(self.downscale, bool) or not isinstance(self.downscale, (int, float)) or not self.downscale >= 1:
            raise ConfigError(f"{where}.downscale: expected a number >= 1, got {self.downscale!r}")
        if self.eval_views < 0:
            raise ConfigError(f"{where}.eval_views: expected >= 0, got {self.eval_views}")


@dataclass(frozen=True)
class TrainerConfig:
    """Keys of the `trainer` block: when to step, evaluate, log, save and stop (nothing method-specific).

    steps: optimisation steps.
    time_budget_s: if > 0, also stop after this many seconds of training (evaluation and saving excluded).
    eval_every: steps between evaluations on `data.eval_views` views; 0 = only the final one.
    eval_times: also evaluate once the training time passes each of these seconds (e.g. [15, 60]).
    log_every: steps between log records (and progress-bar updates).
    save_every: steps between checkpoints; 0 = only at the end (and on Ctrl-C).
    save_every_s: also save once this many seconds of training passed since the last checkpoint (a crash or
        SIGKILL loses at most that much); 0 = off.
    keep_checkpoints: how many checkpoints to keep.
    seed: random seed (offset by the process's rank in multi-process runs).
    device: auto (cuda if available), cpu, cuda, cuda:1, ...
    progress: show a progress bar.
    render_final: write the test views into runs/<name>/renders at the end.
    profile_at: if > 0, profile steps profile_at+1 .. profile_at+profile_steps with torch.profiler and write
        runs/<name>/profile.txt (GPU time per category of the method's `profile_categories`, top operations).
    profile_steps: how many steps the profile covers.
    eval_spp: rays per pixel when evaluating: > 1 averages renders at that many sub-pixel offsets, which
        matches images that integrate each pixel's area (instant-ngp evaluates NeRF-synthetic with 8).
    check_finite: check the inputs and outputs of every encoding and network for NaN/inf and stop with one
        line naming the module (`ngraphics train --check-finite`); off by default: the hot path pays nothing.
    """

    steps: int = 20000
    time_budget_s: float = 0.0
    eval_every: int = 0
    eval_times: tuple[float, ...] = ()
    log_every: int = 100
    save_every: int = 2000
    save_every_s: float = 300.0
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    render_final: bool = True
    profile_at: int = 0
    profile_steps: int = 10
    eval_spp: int = 1
    check_finite: bool = False

    def validate(self, where: str) -> None:
        for key in ("steps", "log_every", "keep_checkpoints", "eval_spp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        for key in ("eval_every", "save_every", "save_every_s", "time_budget_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: expected >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class _TopLevel:
    method: str = "nerf"
    name: str = ""
    cpu_recipe: tuple[str, ...] = ()
    data: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: `method` (a key of ngraphics.methods.METHODS), run `name`, and the typed blocks.

    cpu_recipe: `key=value` overrides that make a GPU-sized config CPU-sized; non-empty marks the config as
    GPU-sized, and `ngraphics train` prints them (as --set flags) when such a config starts on a CPU."""

    method: str
    name: str
    data: DataConfig
    trainer: TrainerConfig
    model: Any  # the method's Config dataclass
    cpu_recipe: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"method": self.method, "name": self.name, "cpu_recipe": list(self.cpu_recipe),
                "data": to_dict(self.data), "trainer": to_dict(self.trainer), "model": to_dict(self.model)}


def parse_run_config(mapping: dict, where: str) -> RunConfig:
    """Check and type a run config mapping; errors name `where` and the key (`lego.yaml: trainer: stpes ...`)."""
    top = from_dict(_TopLevel, mapping, where)
    cls = method_class(top.method, f"{where}: method")
    for item in top.cpu_recipe:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"{where}: cpu_recipe: expected key=value strings, got {item!r}")
    return RunConfig(
        method=top.method,
        name=top.name,
        cpu_recipe=tuple(top.cpu_recipe),
        data=from_dict(DataConfig, top.data, f"{where}: data"),
        trainer=from_dict(TrainerConfig, top.trainer, f"{where}: trainer"),
        model=from_dict(cls.Config, top.model, f"{where}: model"),
    )


def find_config(name: str | None) -> Path:
    """A config path: an existing file, or a bundled name like `nerf/lego` or `lego`; None = nerf/default."""
    if name is None:
        return configs_root() / "nerf" / "default.yaml"
    path = Path(name)
    if path.is_file():
        return path
    root = configs_root()
    for candidate in (root / name, root / f"{name}.yaml", root / "nerf" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    bundled = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    raise ConfigError(f"{name}: config file not found (bundled configs: {', '.join(bundled)})")


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config and apply `--set a.b=c` overrides. Errors name the file (or --set) and the key."""
    mapping = load_mapping(path)
    parse_run_config(mapping, str(path))  # file errors name the file
    return parse_run_config(apply_overrides(mapping, list(overrides)), f"{path} with --set" if overrides else str(path))


def load_split(data: DataConfig, split: str) -> SceneData:
    """Load one split with the data block's options (the loaders raise DataError naming the file).

    The scene's `background` (what samplers composite RGBA targets over) is `data.background`, or the
    loader's choice for `auto`."""
    scene = load_dataset(data.path, split, downscale=data.downscale, **data.options)
    if data.background != "auto":
        scene.background = data.background
    return scene


def anchor_data_path(config: RunConfig, run_path: str | Path) -> RunConfig:
    """`config` with `data.path` absolute and `data.path_from_run` relative to the run folder.

    A relative `data.path` is taken from the current directory. When the absolute path is gone but
    `path_from_run` leads to something from the run folder, that is used: a run folder moved together with its
    data still finds it."""
    if config.data.path is None or config.data.path == "procedural":  # the built-in scene has no files
        return config
    path = Path(config.data.path).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists() and config.data.path_from_run:
        moved = Path(run_path).absolute() / config.data.path_from_run
        if moved.exists():
            path = moved
    path = Path(os.path.normpath(path))
    relative = os.path.relpath(path, Path(run_path).absolute())
    return replace(config, data=replace(config.data, path=str(path), path_from_run=relative))


def default_run_name(config_path: Path, method: str) -> str:
    return f"{method}-{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["DataConfig", "anchor_data_path", "RunConfig", "TrainerConfig", "default_run_name", "find_config", "load_run_config",
           "load_split", "parse_run_config"]

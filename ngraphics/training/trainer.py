"""The shared trainer: config, data, batches, the loop, evaluation, logs, checkpoints, Ctrl-C.

It knows nothing about any method. A method (see `ngraphics.methods`) is built as `cls(config, scene, device)`
and offers `train_step(batch) -> dict of losses`, `render(cameras, background=None) -> dict of (C, H, W, k)
images`, `state_dict()` / `load_state_dict()`. Its class attribute `batching` says which batches it takes:

- "rays": `origins (R, 3)`, `directions (R, 3)`, `rgb (R, 3)` targets composited over `background (R, 3)`,
  `camera_index (R,)`, `time (R,)` for dynamic scenes; R is `method.rays_per_batch` when the method has that
  attribute (methods that adapt their batch size set it), else `trainer.rays_per_batch`.
- "views": `camera_index` (int), `cameras` (one camera), `rgb (H, W, 3)`, `alpha (H, W)` or None, `background (3,)`.

Every batch also carries `step` (int, from 0) and `progress` in [0, 1] (the larger of step / steps and
elapsed / time_budget_s), so schedules work for step and time budgets alike.

Losses come back as floats or 0-dim tensors; the trainer reads them (a host sync) only when it logs.
Keys named `loss` and `psnr` go on the progress bar.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ngraphics.config import apply_overrides, configs_root, from_dict, load_mapping, to_dict
from ngraphics.devices import pick_device
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError
from ngraphics.io.images import write_image
from ngraphics.rendering.supersampling import render_supersampled
from ngraphics.metrics.image import psnr, ssim
from ngraphics.training.run_folder import RunFolder
from ngraphics.training.step_profile import StepProfile

# --- configs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Keys of the `data` block.

    path: dataset folder or transforms file; null = the built-in procedural scene.
    downscale: image size divisor applied at load (2 = half width and height).
    background: what RGBA training images are composited on: random (a new colour per ray), white, black,
        auto (the dataset's choice).
    eval_background: background of RGBA test images and of renders (white is the NeRF-synthetic protocol).
    train_split, eval_split: split names passed to the loader.
    eval_views: periodic evaluations use this many evenly spaced eval views (the final one uses all); 0 = all.
    options: extra keyword arguments for the loader (e.g. {max_frames: 20}).
    """

    path: str | None = None
    downscale: float = 1.0
    background: Literal["random", "white", "black", "auto"] = "random"
    eval_background: Literal["white", "black"] = "white"
    train_split: str = "train"
    eval_split: str = "test"
    eval_views: int = 4
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerConfig:
    """Keys of the `trainer` block.

    steps: optimisation steps.
    time_budget_s: if > 0, also stop after this many seconds of training (evaluation and saving excluded).
    rays_per_batch: rays per step for ray methods that do not choose their own batch size.
    eval_every: steps between evaluations on `data.eval_views` views; 0 = only the final one.
    eval_times: also evaluate once the training time passes each of these seconds (e.g. [15, 60]).
    log_every: steps between log records (and progress-bar updates).
    save_every: steps between checkpoints; 0 = only at the end (and on Ctrl-C).
    keep_checkpoints: how many checkpoints to keep.
    seed: random seed.
    device: auto (cuda if available), cpu, cuda, cuda:1, ...
    progress: show a progress bar.
    render_final: write the test views into runs/<name>/renders at the end.
    profile_at: if > 0, profile steps profile_at+1 .. profile_at+profile_steps with torch.profiler and write
        runs/<name>/profile.txt (GPU time per category of the method's `profile_categories`, top operations).
    profile_steps: how many steps the profile covers.
    pixel_jitter: ray batches pass through a random point of each pixel (true) or through its centre (false:
        instant-ngp's `snap_to_pixel_centers`, nerfacc's choice). Centres fit sharp, many-view captures
        better (lego: +0.5 dB, a pixel's value is its area's average, and point rays at random places in it
        learn a blurred scene); the random point regularises small, few-view scenes (the default scene).
    eval_spp: rays per pixel when evaluating: > 1 averages renders at that many sub-pixel offsets, which
        matches images that integrate each pixel's area (instant-ngp evaluates NeRF-synthetic with 8).
    """

    steps: int = 20000
    time_budget_s: float = 0.0
    rays_per_batch: int = 4096
    eval_every: int = 0
    eval_times: tuple[float, ...] = ()
    log_every: int = 100
    save_every: int = 2000
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    render_final: bool = True
    profile_at: int = 0
    profile_steps: int = 10
    pixel_jitter: bool = True
    eval_spp: int = 1

    def validate(self, where: str) -> None:
        for key in ("steps", "rays_per_batch", "log_every", "keep_checkpoints", "eval_spp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        for key in ("eval_every", "save_every", "time_budget_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: expected >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class _TopLevel:
    method: str = "nerf"
    name: str = ""
    data: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: `method` (a key of ngraphics.methods.METHODS), run `name`, and the typed blocks."""

    method: str
    name: str
    data: DataConfig
    trainer: TrainerConfig
    model: Any  # the method's Config dataclass

    def to_dict(self) -> dict:
        return {"method": self.method, "name": self.name, "data": to_dict(self.data),
                "trainer": to_dict(self.trainer), "model": to_dict(self.model)}


def parse_run_config(mapping: dict, where: str) -> RunConfig:
    """Check and type a run config mapping; errors name `where` and the key (`lego.yaml: trainer: stpes ...`)."""
    from ngraphics.methods import method_class

    top = from_dict(_TopLevel, mapping, where)
    cls = method_class(top.method, f"{where}: method")
    return RunConfig(
        method=top.method,
        name=top.name,
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


# --- data ------------------------------------------------------------------------------------------------------

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


class RaySampler:
    """Random pixels of all training images, as rays, with targets on the GPU (no host syncs).

    Args:
        scene: training split.
        device: where batches live.
        background: white, black or random (a new colour per ray), for RGBA images.
        pixel_jitter: rays through a random point of their pixel (true) or through its centre.
    """

    def __init__(self, scene: SceneData, device: torch.device, background: str, pixel_jitter: bool = True):
        self.scene, self.device, self.background = scene, device, background
        self.pixel_jitter = pixel_jitter
        self.cameras = scene.cameras.to(device)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        channels = 4 if scene.has_alpha else 3
        counts = [img.shape[0] * img.shape[1] for img in scene.images]
        self.pixels = torch.cat([img.reshape(-1, img.shape[-1])[:, :channels] for img in scene.images]).to(device, dtype)
        self.offsets = torch.tensor([0, *counts], device=device).cumsum(0)
        self.widths = self.cameras.width.to(device)
        self.time = scene.time.to(device) if scene.time is not None else None

    def sample(self, n_rays: int) -> dict[str, torch.Tensor]:
        index = torch.randint(0, int(self.pixels.shape[0]), (n_rays,), device=self.device)
        cam = torch.searchsorted(self.offsets[1:], index, right=True)
        local = index - self.offsets[cam]
        width = self.widths[cam]
        uv = torch.stack([local % width, local // width], -1).to(torch.float32)
        uv = uv + (torch.rand_like(uv) if self.pixel_jitter else 0.5)  # a random point in the pixel, or its centre
        origins, directions = self.cameras.rays(cam, uv)
        target = self.pixels[index].float()
        if self.background == "random":
            bg = torch.rand(n_rays, 3, device=self.device)
        else:
            bg = torch.tensor(BACKGROUNDS[self.background], device=self.device).expand(n_rays, 3)
        rgb = target[:, :3]
        if target.shape[1] == 4:
            alpha = target[:, 3:]
            rgb = rgb * alpha + bg * (1 - alpha)
        batch = {"origins": origins, "directions": directions, "rgb": rgb, "background": bg, "camera_index": cam}
        if self.time is not None:
            batch["time"] = self.time[cam]
        return batch


class ViewSampler:
    """Whole training views in random order (for splats and other rasterisers)."""

    def __init__(self, scene: SceneData, device: torch.device, background: str):
        self.scene, self.device, self.background = scene, device, background
        self.order: list[int] = []

    def sample(self, n_rays: int = 0) -> dict[str, Any]:
        if not self.order:
            self.order = torch.randperm(len(self.scene)).tolist()
        i = self.order.pop()
        image = self.scene.images[i].to(self.device)
        bg = torch.rand(3, device=self.device) if self.background == "random" else \
            torch.tensor(BACKGROUNDS[self.background], device=self.device)
        alpha = image[..., 3] if image.shape[-1] == 4 else None
        rgb = image[..., :3] if alpha is None else image[..., :3] * alpha[..., None] + bg * (1 - alpha[..., None])
        return {"camera_index": i, "cameras": self.scene.cameras[i].to(self.device), "rgb": rgb, "alpha": alpha,
                "background": bg}


def load_scene(data: DataConfig, split: str):
    """Load one split with the data block's options (the loaders raise DataError with the file named)."""
    from ngraphics.data import load_dataset

    return load_dataset(data.path, split, downscale=data.downscale, **data.options)


# --- the trainer -----------------------------------------------------------------------------------------------

Hook = Callable[["Trainer", int, dict], None]


class Trainer:
    """Runs one method on one dataset inside a run folder.

    Args:
        config: the resolved run config.
        run: the run folder (created if needed; config.yaml written unless resuming).
        hooks: callables `hook(trainer, step, losses)` run after every step (e.g. a live viewer).
        resume: load the newest checkpoint in the run folder and continue from its step.
    """

    def __init__(self, config: RunConfig, run: RunFolder, *, hooks: list[Hook] = (), resume: bool = False):
        from ngraphics.methods import method_class

        self.config, self.run, self.hooks = config, run, list(hooks)
        self.device = pick_device(config.trainer.device, "trainer.device")
        torch.manual_seed(config.trainer.seed)
        self.train_scene = load_scene(config.data, config.data.train_split)
        self._eval_scene: SceneData | None = None
        cls = method_class(config.method)
        self.method = cls(config.model, self.train_scene, self.device)
        background = config.data.background
        if background == "auto":
            background = self.train_scene.background
        if cls.batching == "rays":
            self.sampler = RaySampler(self.train_scene, self.device, background, config.trainer.pixel_jitter)
        else:
            self.sampler = ViewSampler(self.train_scene, self.device, background)
        self.step = 0
        self.elapsed = 0.0  # training seconds, evaluation and saving excluded
        self._evaluated_times: set[float] = set()
        if resume:
            found = run.checkpoints.latest(map_location="cpu")
            if found is None:
                raise ConfigError(f"{run.path}: nothing to resume (no checkpoint in {run.checkpoints.folder})")
            self.load_state(found[1])
            print(f"resumed {found[0]} at step {self.step}", file=sys.stderr)
        run.create(config.to_dict())  # on resume too: --set overrides (e.g. more steps) are part of the run

    # --- state ---

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": "ngraphics-checkpoint", "version": 1, "method_name": self.config.method,
                "step": self.step, "elapsed": self.elapsed, "method": self.method.state_dict(), "rng": rng}

    def load_state(self, state: dict) -> None:
        if state.get("format") != "ngraphics-checkpoint":
            raise ConfigError(f"{self.run.path}: checkpoint is not an ngraphics checkpoint")
        if state.get("method_name") != self.config.method:
            raise ConfigError(f"{self.run.path}: checkpoint holds method {state.get('method_name')!r}, "
                              f"config says {self.config.method!r}")
        self.method.load_state_dict(state["method"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self._evaluated_times = {s for s in self.config.trainer.eval_times if s <= self.elapsed}
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def save(self) -> Path:
        return self.run.checkpoints.save(self.step, self.state())

    # --- evaluation ---

    @property
    def eval_scene(self) -> SceneData:
        if self._eval_scene is None:
            self._eval_scene = load_scene(self.config.data, self.config.data.eval_split)
        return self._eval_scene

    def evaluate(self, views: list[int] | None = None, out_dir: Path | None = None) -> dict:
        """PSNR and SSIM of the method's renders against eval images (over `eval_background`).

        Args:
            views: eval view indices; None = all.
            out_dir: if given, write `<name>.png` renders there (and `<name>_depth.png`, normalised).
        Returns: {"psnr", "ssim", "n_views", "per_view": [...]}, means over views.
        """
        return evaluate_method(self.method, self.eval_scene, self.config.data.eval_background, views, out_dir,
                               spp=self.config.trainer.eval_spp)

    def _eval_subset(self) -> list[int]:
        n, k = len(self.eval_scene), self.config.data.eval_views
        if k <= 0 or k >= n:
            return list(range(n))
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    # --- the loop ---

    def progress(self) -> float:
        t = self.config.trainer
        p = self.step / t.steps
        if t.time_budget_s > 0:
            p = max(p, self.elapsed / t.time_budget_s)
        return min(p, 1.0)

    def _done(self) -> bool:
        t = self.config.trainer
        return self.step >= t.steps or (t.time_budget_s > 0 and self.elapsed >= t.time_budget_s)

    def _clock_decision_near(self, dt: float) -> bool:
        """Would this step's host time carry the training clock past an evaluation time or the budget?"""
        t = self.config.trainer
        marks = [s for s in t.eval_times if s not in self._evaluated_times]
        if t.time_budget_s > 0:
            marks.append(t.time_budget_s)
        return any(self.elapsed + dt >= m for m in marks)

    def train(self) -> dict:
        """Run until `steps` (or the time budget); returns the final evaluation (or {} when interrupted).

        Ctrl-C saves a checkpoint and returns {"interrupted": True}; any other exception leaves the last
        checkpoint as it was and propagates."""
        t = self.config.trainer
        bar = _progress_bar(t.steps, self.step, enabled=t.progress)
        log_rays, log_time, last = 0, 0.0, {}
        print(f"run folder: {self.run.path}  device: {self.device}  method: {self.config.method}", file=sys.stderr)
        profiler = None
        try:
            while not self._done():
                if t.profile_at and self.step == t.profile_at:
                    profiler = StepProfile(self)
                elif profiler is not None and self.step == t.profile_at + t.profile_steps:
                    try:
                        profiler.finish(t.profile_steps)
                    except Exception as err:  # noqa: BLE001 - a profile is never worth losing the run
                        print(f"profile failed: {type(err).__name__}: {err}", file=sys.stderr)
                    profiler = None
                start = time.perf_counter()
                n_rays = int(getattr(self.method, "rays_per_batch", t.rays_per_batch))
                batch = self.sampler.sample(n_rays)
                batch["step"], batch["progress"] = self.step, self.progress()
                losses = self.method.train_step(batch)
                self.step += 1
                for hook in self.hooks:
                    hook(self, self.step, losses)
                if self.step % t.log_every == 0 or self._done():
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    last = {k: float(v) for k, v in losses.items()}
                dt = time.perf_counter() - start
                if self.device.type == "cuda" and self._clock_decision_near(dt):
                    # steps queue work without waiting for the GPU, so the host clock runs ahead of it; wait
                    # before the clock decides anything (an evaluation time, the time budget)
                    torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - start
                self.elapsed += dt
                log_time += dt
                log_rays += batch["origins"].shape[0] if "origins" in batch else batch["rgb"].shape[0] * batch["rgb"].shape[1]
                if self.step % t.log_every == 0 or self._done():
                    rate = log_rays / max(log_time, 1e-9)
                    record = {"step": self.step, "time": round(self.elapsed, 3), "split": "train",
                              "rays_per_s": round(rate, 1), **_round(last)}
                    if self.device.type == "cuda":
                        record["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
                    self.run.log(record)
                    bar.set_postfix_str(_postfix(last, rate))
                    log_rays, log_time = 0, 0.0
                bar.update(1)
                due = [s for s in t.eval_times if self.elapsed >= s and s not in self._evaluated_times]
                if (t.eval_every and self.step % t.eval_every == 0 or due) and not self._done():
                    self._evaluated_times.update(due)
                    self._log_eval(self.evaluate(self._eval_subset()))
                if t.save_every and self.step % t.save_every == 0 and not self._done():
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            path = self.save()
            print(f"\ninterrupted at step {self.step}: checkpoint {path}\n"
                  f"resume with: ngraphics train --resume {self.run.path}", file=sys.stderr)
            return {"interrupted": True}
        bar.close()
        self.save()
        result = self.evaluate(None, self.run.renders if t.render_final else None)
        self._log_eval(result)
        return result

    def _log_eval(self, result: dict) -> None:
        record = {k: v for k, v in result.items() if k != "per_view"}
        self.run.log({"step": self.step, "time": round(self.elapsed, 3), "split": self.config.data.eval_split,
                      **_round(record)})
        print(f"step {self.step}: {self.config.data.eval_split} PSNR {result['psnr']:.2f} dB, "
              f"SSIM {result['ssim']:.4f} ({result['n_views']} views)", file=sys.stderr)


def restore_run(run: RunFolder, split: str | None = None, device: str = "auto", overrides: list[str] = ()):
    """Rebuild a trained method from its run folder for evaluation or rendering.

    The method is built on `split` (default: the eval split) of the run's dataset, which fixes the same scene
    box as training, and loads the newest checkpoint. Returns (config, method, scene, checkpoint path)."""
    from ngraphics.methods import method_class

    where = str(run.config_path)
    mapping = apply_overrides(run.read_config(), list(overrides)) if overrides else run.read_config()
    config = parse_run_config(mapping, where)
    found = run.checkpoints.latest(map_location="cpu")
    if found is None:
        raise ConfigError(f"{run.path}: no checkpoint to load (train it first, or resume it)")
    path, state = found
    if state.get("method_name") != config.method:
        raise ConfigError(f"{path}: holds method {state.get('method_name')!r}, {where} says {config.method!r}")
    scene = load_scene(config.data, split or config.data.eval_split)
    torch.manual_seed(config.trainer.seed)
    method = method_class(config.method)(config.model, scene, pick_device(device))
    method.load_state_dict(state["method"])
    return config, method, scene, path


def evaluate_method(method, scene: SceneData, background: str, views: list[int] | None = None,
                    out_dir: Path | None = None, spp: int = 1) -> dict:
    """Render eval views with `method` (`spp` rays per pixel, see `render_supersampled`), compare with the
    images over `background`; see `Trainer.evaluate`."""
    color = BACKGROUNDS[background]
    views = list(range(len(scene))) if views is None else views
    per_view = []
    for i in views:
        with torch.no_grad():
            out = render_supersampled(method, scene.cameras[i], torch.tensor(color), spp)
        pred = out["rgb"][0].float().cpu().clamp(0, 1)
        target = scene.rgb_on(i, color)
        per_view.append({"name": scene.names[i], "psnr": psnr(pred, target), "ssim": ssim(pred, target)})
        if out_dir is not None:
            write_image(Path(out_dir) / f"{scene.names[i]}.png", pred)
            if "depth" in out:
                depth = out["depth"][0, ..., 0].float().cpu()
                write_image(Path(out_dir) / f"{scene.names[i]}_depth.png", _normalise(depth))
    return {
        "psnr": sum(v["psnr"] for v in per_view) / max(len(per_view), 1),
        "ssim": sum(v["ssim"] for v in per_view) / max(len(per_view), 1),
        "n_views": len(per_view),
        "per_view": per_view,
    }


def _normalise(depth: torch.Tensor) -> torch.Tensor:
    valid = depth[depth > 0]
    if valid.numel() == 0:
        return torch.zeros_like(depth)
    lo, hi = valid.min(), valid.max()
    return ((depth - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1) * (depth > 0)


def _round(record: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}


def _postfix(losses: dict, rate: float) -> str:
    parts = [f"{k} {losses[k]:.4g}" for k in ("loss", "psnr") if k in losses]
    return ", ".join(parts + [f"{rate / 1e3:.1f}k rays/s"])


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def default_run_name(config_path: Path, method: str) -> str:
    return f"{method}-{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = [
    "DataConfig",
    "RaySampler",
    "RunConfig",
    "Trainer",
    "TrainerConfig",
    "ViewSampler",
    "default_run_name",
    "evaluate_method",
    "find_config",
    "load_run_config",
    "parse_run_config",
    "restore_run",
]

"""Fit an encoding + MLP to a 2D image: instant-ngp's / tiny-cuda-nn's image demo as a library.

Each step draws `batch_size` uniform positions `uv in [0, 1)^2` (u along the width, v along the height),
looks the target up with bilinear filtering (pixel centres at `(i + 0.5) / W`, clamped at the border, like a
CUDA texture in `mlp_learning_an_image.cu`), and takes one tiny-cuda-nn-style Adam step on a tiny-cuda-nn
loss (default `RelativeL2`). Evaluation renders every pixel centre and reports the PSNR
(`ngraphics.metrics.image.psnr`: both sides clipped to [0, 1]) of the prediction against the image.

    fitter = ImageFitter(read_image("albert.jpg"), config, device="cpu")
    for step in range(config.fit.steps):
        loss = fitter.train_step()
    print(fitter.psnr())

The config has tiny-cuda-nn's blocks (`encoding`, `network`, `optimizer`, `loss`, see
tiny-cuda-nn's `data/config_hash.json`) plus ngraphics's `fit` block (steps, batch size, image size, …).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ngraphics.config import apply_overrides, configs_root, deep_merge, from_dict, load_mapping
from ngraphics.data.batches import bilinear_lookup
from ngraphics.errors import ConfigError, DataError, unknown_key_message
from ngraphics.io.atomic import atomic_write_text
from ngraphics.io.images import HDR_SUFFIXES, downscale, linear_to_srgb, read_image, write_exr, write_image
from ngraphics.metrics.image import psnr
from ngraphics.optim.adam import AdamConfig, TcnnAdam, tcnn_param_groups
from ngraphics.training.progress import progress_bar, rate_text, round_record
from ngraphics.training.run_folder import RunFolder

# --- configs -------------------------------------------------------------------------------------------------


LOSSES = ("L2", "L1", "RelativeL2", "RelativeL1", "MAPE", "SMAPE")


@dataclass(frozen=True)
class LossConfig:
    """tiny-cuda-nn's loss block; only `otype` is read."""

    otype: Literal["L2", "L1", "RelativeL2", "RelativeL1", "MAPE", "SMAPE"] = "RelativeL2"


@dataclass(frozen=True)
class FitConfig:
    """ngraphics's own training settings for the image demo.

    steps / batch_size: None picks a device default (CPU: 300 steps of 2^13 points, ~25 s on 2 cores;
        CUDA: 5000 steps of 2^18).
    max_size: the image is area-downscaled so its longer side is at most this (0 = full resolution).
    eval_every: PSNR evaluations (full image) every this many steps (None: steps / 10); also the
        metrics.jsonl interval.
    """

    steps: int | None = None
    batch_size: int | None = None
    max_size: int = 512
    eval_every: int | None = None
    seed: int = 1337

    def validate(self, where: str) -> None:
        for key in ("steps", "batch_size", "eval_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {value}")
        if self.max_size < 0:
            raise ConfigError(f"{where}.max_size: must be >= 0 (0 = full resolution), got {self.max_size}")

    def resolved(self, device: torch.device | str) -> FitConfig:
        """Fill the `None` entries with the defaults for `device`."""
        cuda = torch.device(device).type == "cuda"
        steps = self.steps or (5000 if cuda else 300)
        batch = self.batch_size or (2**18 if cuda else 2**13)
        every = self.eval_every or max(1, steps // 10)
        return dataclasses.replace(self, steps=steps, batch_size=batch, eval_every=every)


@dataclass(frozen=True)
class FitImageConfig:
    """The whole fit-image config: tiny-cuda-nn blocks plus `fit`."""

    encoding: dict = field(default_factory=lambda: {"otype": "HashGrid"})
    network: dict = field(default_factory=lambda: {"otype": "FullyFusedMLP"})
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fit: FitConfig = field(default_factory=FitConfig)


BLOCKS = ("encoding", "network", "optimizer", "loss", "fit")


def fit_image_config(data: dict, where: str = "config", *, strict: bool = True) -> tuple[FitImageConfig, list[str]]:
    """Build a `FitImageConfig` from a dict of blocks.

    Args:
        data: `{"encoding": {...}, "network": {...}, "optimizer": {...}, "loss": {...}, "fit": {...}}`;
            missing blocks take the defaults.
        where: prefix for error messages (the file name).
        strict: unknown keys are ConfigErrors (ngraphics configs) or, with strict=False (tinycudann
            configs), returned as dotted names in the second element. Keys inside `encoding` and `network`
            are checked when the model is built.
    Returns: (config, ignored keys).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of blocks {', '.join(BLOCKS)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in BLOCKS]
    if unknown and strict:
        raise ConfigError(unknown_key_message(where, str(unknown[0]), "fit-image config", BLOCKS))
    for block in ("encoding", "network"):
        if block in data and not isinstance(data[block], dict):
            raise ConfigError(f"{where}: {block}: expected a mapping with an otype key, got {data[block]!r}")
    blocks = {}
    for block, cls in (("optimizer", AdamConfig), ("loss", LossConfig), ("fit", FitConfig)):
        if block == "optimizer" and isinstance(data.get(block), dict) and "otype" in data[block]:
            if str(data[block]["otype"]).lower() != "adam":
                raise ConfigError(f"{where}: optimizer.otype: {data[block]['otype']!r} is not supported "
                                  f"by fit-image (use Adam)")
            data = {**data, block: {**data[block], "otype": "Adam"}}
        blocks[block] = from_dict(cls, data.get(block), f"{where}: {block}", strict=strict)
        unknown += [f"{block}.{k}" for k in getattr(blocks[block], "__unknown_keys__", ())]
    default = FitImageConfig()
    config = FitImageConfig(
        encoding=dict(data.get("encoding", default.encoding)),
        network=dict(data.get("network", default.network)),
        **blocks,
    )
    return config, [str(k) for k in unknown]


# --- target lookup and losses ------------------------------------------------------------------------------


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uv of every pixel centre in row-major order. Returns (H * W, 2) float32."""
    v = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    u = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)


def image_loss(otype: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """tiny-cuda-nn's losses, averaged over all N * C values. Denominators are constants for the gradient,
    as in tcnn (`RelativeL2`: (p - t)^2 / (sg(p)^2 + 0.01)).

    prediction, target: (N, C) float32. Returns a scalar."""
    diff = prediction - target
    p = prediction.detach()
    if otype == "L2":
        values = diff * diff
    elif otype == "L1":
        values = diff.abs()
    elif otype == "RelativeL2":
        values = diff * diff / (p * p + 0.01)
    elif otype == "RelativeL1":
        values = diff.abs() / (p.abs() + 0.01)
    elif otype == "MAPE":
        values = diff.abs() / (target.abs() + 0.01)
    elif otype == "SMAPE":
        values = diff.abs() / (0.5 * (p.abs() + target.abs()) + 0.01)
    else:
        raise ConfigError(f"loss.otype: {otype!r} is not one of {', '.join(LOSSES)}")
    return values.mean()


# --- the fitter ------------------------------------------------------------------------------------------------


def build_model(n_channels: int, config: FitImageConfig, *, backend: str = "auto", strict: bool = True) -> nn.Module:
    """Encoding + MLP mapping uv (N, 2) to colour (N, n_channels), from the config's encoding/network blocks;
    initialised from `config.fit.seed` (tcnn's PCG32 stream for the MLP and grids), without touching the
    caller's torch random state."""
    from ngraphics.networks import NetworkWithInputEncoding

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.fit.seed)  # for encodings initialised from torch's generator
        return NetworkWithInputEncoding(
            2, n_channels, config.encoding, config.network, seed=config.fit.seed, backend=backend, strict=strict
        )


class ImageFitter:
    """Owns the target image, the model and the optimizer of one image fit.

    Args:
        image: (H, W, C) float32 target (values as they will be compared: [0, 1] for LDR, linear for HDR).
        config: `FitImageConfig`; `config.fit` must be resolved (`FitConfig.resolved(device)`).
        device: where to train.
        backend: `auto | torch | triton` for the encoding and network.
        strict: False to ignore unknown encoding/network keys (tinycudann configs); they end up in
            `unknown_keys`.
    """

    def __init__(self, image: np.ndarray, config: FitImageConfig, *, device="cpu", backend="auto", strict=True):
        if config.fit.steps is None or config.fit.batch_size is None:
            config = dataclasses.replace(config, fit=config.fit.resolved(device))
        self.config = config
        self.device = torch.device(device)
        self.image = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)
        if self.image.dim() != 3:
            raise ValueError(f"image must be (H, W, C), got {tuple(self.image.shape)}")
        self.height, self.width, self.n_channels = self.image.shape
        self.model = build_model(self.n_channels, config, backend=backend, strict=strict).to(self.device)
        self.unknown_keys = [f"{part}.{k}" for part in ("encoding", "network")
                             for k in getattr(self.model, part).unknown_keys]
        self.optimizer = TcnnAdam(tcnn_param_groups(self.model), config.optimizer)
        self.generator = torch.Generator(device=self.device).manual_seed(config.fit.seed)
        self.step = 0

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def encoding_params(self) -> int:
        return self.model.encoding.n_params

    def train_step(self) -> torch.Tensor:
        """One optimisation step on a fresh random batch. Returns the loss (a 0-dim tensor, not synced)."""
        uv = torch.rand(self.config.fit.batch_size, 2, device=self.device, generator=self.generator)
        target = bilinear_lookup(self.image, uv)
        prediction = self.model(uv).float()[:, : self.n_channels]
        loss = image_loss(self.config.loss.otype, prediction, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def render(self, chunk: int = 2**18) -> torch.Tensor:
        """The model evaluated at every pixel centre. Returns (H, W, C) float32 (not clipped)."""
        uv = pixel_centres(self.height, self.width, self.device)
        out = [self.model(uv[i : i + chunk]).float()[:, : self.n_channels] for i in range(0, uv.shape[0], chunk)]
        return torch.cat(out).reshape(self.height, self.width, self.n_channels)

    def psnr(self, rendered: torch.Tensor | None = None) -> float:
        """PSNR in dB of the reconstruction (`rendered`, or a fresh `render()`) against the target, both
        clipped to [0, 1] (`ngraphics.metrics.image.psnr`)."""
        return psnr(self.render() if rendered is None else rendered, self.image)


def constant_colour_psnr(image: torch.Tensor | np.ndarray) -> float:
    """The best PSNR any constant colour reaches on `image` (the per-channel mean of the clipped image):
    a bound that a fit which learned anything must beat."""
    img = torch.as_tensor(image, dtype=torch.float64).clamp(0, 1)
    mean = img.reshape(-1, img.shape[-1]).mean(0)
    return psnr(mean.expand_as(img), img)


# --- inputs: the target image and the config ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The image to fit. image: (H, W, C) float32; hdr: values are linear (EXR/HDR input)."""

    image: np.ndarray
    name: str
    source: str
    hdr: bool
    original_size: tuple[int, int]  # (H, W) before downscaling


def load_target(path: str | Path | None, max_size: int = 512) -> Target:
    """Read the image to fit (None: scikit-image's astronaut, 512 x 512 RGB, shipped with the package),
    area-downscaled so that its longer side is at most `max_size` (0 keeps the full resolution)."""
    if path is None:
        from skimage import data

        image = data.astronaut().astype(np.float32) / 255.0
        name, source, hdr = "astronaut", "skimage.data.astronaut()", False
    else:
        path = Path(path)
        image = read_image(path)
        name, source, hdr = path.stem, str(path), path.suffix.lower() in HDR_SUFFIXES
    if not np.isfinite(image).all():
        raise DataError(f"{source}: image has {int((~np.isfinite(image)).sum())} NaN/inf values")
    return Target(downscale(image, max_size), name, source, hdr, tuple(image.shape[:2]))


def named_encodings() -> dict[str, Path]:
    """Encoding name (lower case) -> its default 2D fit-image config in the bundled `configs/image/`
    (`ngraphics.config.configs_root`)."""
    return {p.stem.lower(): p for p in sorted((configs_root() / "image").glob("*.json"))}


@dataclass(frozen=True)
class ResolvedConfig:
    """A fit-image config after files, names and overrides were merged.

    data: the merged dict of blocks; strict: whether unknown keys are errors (False for tinycudann JSON
    configs, whose ignored keys are reported once); label: short encoding name for the run folder."""

    data: dict
    strict: bool
    label: str
    where: str


def resolve_config(
    config_file: str | Path | None = None,
    encoding: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> ResolvedConfig:
    """Merge, in this order: `configs/image/hashgrid.json` (tiny-cuda-nn's image demo), `config_file`,
    `encoding`, `overrides`.

    Args:
        config_file: a whole config. `.json` files are read as tinycudann configs (blocks `encoding`,
            `network`, `optimizer`, `loss`, `//` comments allowed, unknown keys ignored with a warning);
            YAML files are ngraphics configs (the same blocks plus `fit`; unknown keys are errors).
        encoding: an encoding name (`HashGrid`, `Simplex`, ...; names with a file in `configs/image/` take
            those 2D settings, others tiny-cuda-nn's defaults) or a JSON/YAML file holding one encoding
            dict (with `otype`) or a config with an `encoding` block (strict keys).
        overrides: `a.b=c` strings, e.g. `encoding.log2_hashmap_size=14`.
    """
    from ngraphics.encodings import encoding_class

    named = named_encodings()
    data = load_mapping(named["hashgrid"])
    strict, where, label = True, "config", "hashgrid"
    if config_file is not None:
        path = Path(config_file)
        loaded = load_mapping(path)
        strict = path.suffix.lower() != ".json"
        where = str(path)
        data = deep_merge(data, loaded)
        label = str(data.get("encoding", {}).get("otype", "encoding")).lower()
    if encoding is not None:
        candidate = Path(encoding)
        if candidate.suffix.lower() in (".json", ".yaml", ".yml"):
            block = load_mapping(candidate)
            block = block.get("encoding", block) if "otype" not in block else block
            if not isinstance(block, dict) or "otype" not in block:
                raise ConfigError(f"{candidate}: expected an encoding with an otype key, or an encoding block")
            label, where = candidate.stem.lower(), str(candidate)
            strict = True
        else:
            cls = encoding_class(encoding, "--encoding")
            key = cls.otype.lower()
            block = load_mapping(named[key])["encoding"] if key in named else {"otype": cls.otype}
            label = key
        data = {**data, "encoding": dict(block)}
    if overrides:
        data = apply_overrides(data, list(overrides))
    return ResolvedConfig(data, strict, label, where)


# --- the run: training loop, outputs, run folder -----------------------------------------------------------


def unique_folder(path: Path) -> Path:
    """`path` if it does not exist, else `path-2`, `path-3`, ... (never an existing folder)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def fit(
    fitter: ImageFitter,
    target: Target,
    out: str | Path,
    *,
    resolved_config: dict,
    progress: bool = True,
    extra_summary: dict | None = None,
) -> dict:
    """Train `fitter` for `fitter.config.fit.steps` steps and write the run folder (a `RunFolder`).

    The folder is built under a temporary name beside `out` (`.<name>.*.tmp`) and renamed at the end to `out`
    or, when that exists, `out-2`, `out-3`, …: a run folder is never half-written and no run is overwritten.
    Ctrl-C during training stops it early and the results so far are still written (summary `interrupted:
    true`); any other exception, or a Ctrl-C while the outputs are written, removes the temporary folder and
    propagates, leaving no folder behind.

    Writes: `config.yaml` (`resolved_config`, reusable with `--config`; `RunFolder.create`), `metrics.jsonl`
    (`RunFolder.log`, one record per evaluation: wall, step, loss, psnr, samples_per_s, elapsed_s),
    `reconstruction.png` (+ `reconstruction.exr` for HDR input), `target.png`, `summary.json`.
    Returns: the summary dict, with `folder` the final path.
    """
    cfg = fitter.config.fit
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        run = RunFolder(tmp)
        run.create(resolved_config)
        train_time, interrupted = _train(fitter, run, progress)
        rendered = fitter.render()
        _write_images(tmp, rendered.cpu().numpy(), target)
        summary = {
            "image": target.source, "size": [fitter.height, fitter.width, fitter.n_channels],
            "original_size": list(target.original_size), "hdr": target.hdr,
            "encoding": fitter.config.encoding.get("otype"), "steps": fitter.step, "batch_size": cfg.batch_size,
            "psnr": fitter.psnr(rendered), "constant_colour_psnr": constant_colour_psnr(fitter.image),
            "n_params": fitter.n_params, "encoding_params": fitter.encoding_params,
            "train_time_s": train_time, "samples_per_s": fitter.step * cfg.batch_size / max(train_time, 1e-9),
            "device": str(fitter.device), "interrupted": interrupted, **(extra_summary or {}),
        }
        atomic_write_text(tmp / "summary.json", json.dumps(_finite(summary), indent=1) + "\n")
        final = _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_dir_permissions(final)
    summary["folder"] = str(final)
    return summary


def _train(fitter: ImageFitter, run: RunFolder, progress: bool) -> tuple[float, bool]:
    """Step `fitter` to `fit.steps`; every `fit.eval_every` steps (and at the last) evaluate the PSNR and log
    a record; every 25 steps refresh the bar. Only those steps wait for the device (`float(loss)`).

    Returns: (training seconds, evaluations excluded; whether Ctrl-C stopped it)."""
    cfg = fitter.config.fit
    bar = progress_bar(cfg.steps, fitter.step, enabled=progress)
    train_time, window_time, window_steps = 0.0, 0.0, 0
    loss_sum, loss_count, last_psnr = torch.zeros((), device=fitter.device), 0, math.nan
    try:
        while fitter.step < cfg.steps:
            start = time.perf_counter()
            loss_sum += fitter.train_step()
            loss_count += 1
            evaluate = fitter.step % cfg.eval_every == 0 or fitter.step == cfg.steps
            shown = evaluate or fitter.step % 25 == 0
            loss = float(loss_sum) / loss_count if shown else math.nan  # the mean since the last record
            dt = time.perf_counter() - start
            train_time, window_time, window_steps = train_time + dt, window_time + dt, window_steps + 1
            bar.update(1)
            if not shown:
                continue
            samples_per_s = window_steps * cfg.batch_size / max(window_time, 1e-9)
            if evaluate:
                last_psnr = fitter.psnr()
                run.log(round_record({"step": fitter.step, "loss": loss, "psnr": last_psnr,
                                      "samples_per_s": samples_per_s, "elapsed_s": train_time}))
                loss_sum.zero_()
                loss_count = 0
            rate = rate_text(window_steps * cfg.batch_size, window_time, "samples")
            bar.set_postfix_str(f"loss {loss:.4g}, psnr {last_psnr:.2f} dB, {rate}")
            window_time, window_steps = 0.0, 0
    except KeyboardInterrupt:
        return train_time, True
    finally:
        bar.close()
    return train_time, False


def _publish(tmp: Path, out: Path) -> Path:
    """Rename the finished folder `tmp` to `unique_folder(out)`; if another process takes that name first,
    the rename fails (a folder with contents is never replaced) and the next free name is tried."""
    while True:
        final = unique_folder(out)
        try:
            os.rename(tmp, final)
            return final
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise


def _write_images(folder: Path, rendered: np.ndarray, target: Target) -> None:
    """PNGs are display-referred: sRGB-encoded for HDR input, as stored for LDR input."""
    if target.hdr:
        write_exr(folder / "reconstruction.exr", rendered)
        write_image(folder / "reconstruction.png", linear_to_srgb(np.clip(rendered, 0, 1)))
        write_image(folder / "target.png", linear_to_srgb(np.clip(target.image, 0, 1)))
    else:
        write_image(folder / "reconstruction.png", rendered)
        write_image(folder / "target.png", target.image)


def _usual_dir_permissions(path: Path) -> None:
    """mkdtemp makes the folder 0700; give it the mode a plain mkdir would (0777 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _finite(obj):
    """NaN/inf -> None (null) throughout a summary, so summary.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


__all__ = [
    "BLOCKS",
    "LOSSES",
    "AdamConfig",
    "FitConfig",
    "FitImageConfig",
    "ImageFitter",
    "LossConfig",
    "ResolvedConfig",
    "Target",
    "bilinear_lookup",
    "build_model",
    "constant_colour_psnr",
    "fit",
    "fit_image_config",
    "image_loss",
    "load_target",
    "named_encodings",
    "pixel_centres",
    "resolve_config",
    "unique_folder",
]

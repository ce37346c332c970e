"""`splat`: 3D Gaussian splatting (Kerbl et al. 2023) on ngraphics' own rasterizer (`ngraphics.splatting`).

One training step (a whole view from `ViewSampler`):
    1. activate the parameters (exp scales, sigmoid opacities, SH up to the scheduled degree: one more band
       every `sh_degree_interval` steps up to `sh_degree`) and rasterize the view over the batch's background
       (a random colour per view for RGBA data, so the Gaussians cannot paint the background);
    2. loss (1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM), plus an L1 on rendered `features` where the batch
       holds a `features` target, plus the MCMC regularisers (`opacity_reg`, `scale_reg`) when set;
    3. backward, Adam (one param group per attribute, 3DGS's learning rates; the position lr decays
       exponentially from means_lr to means_lr_final over training progress, both x the scene scale);
    4. densification: 3DGS's adaptive density control (`densify`, a DefaultStrategy) or MCMC relocation with a
       Gaussian budget (`mcmc`, an MCMCStrategy); the optimizer's moments follow the Gaussians.
Initialisation: the scene's seed points (COLMAP's points3D, with their colours), or `init_points` uniform
points in the scene box with random colours (Blender and procedural scenes), or a splat file (`init`, for
fine-tuning: .ply, .splat, .spz). Initial scales: the mean distance to the 3 nearest neighbours.
Per-Gaussian `features` (n_features channels) are open-ended extra attributes rendered like colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any, Literal

import torch

from ngraphics.cameras import Cameras
from ngraphics.data.batches import ViewSampler
from ngraphics.data.scene import SceneData
from ngraphics.devices import peak_gpu_gb, peak_rss_gb
from ngraphics.errors import ConfigError, DataError
from ngraphics.io.splat_files import FORMATS, Splats, read_splats, write_splats
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method
from ngraphics.metrics.image import psnr_from_mse, ssim_map
from ngraphics.splatting import rasterization
from ngraphics.splatting.strategy import DefaultStrategy, MCMCStrategy
from ngraphics.splatting.views import gaussians_in_view

SH_C0 = 0.28209479177387814
ATTRIBUTES = ("means", "scales", "quats", "opacities", "sh0", "shN", "features")


@dataclass(frozen=True)
class SplatConfig:
    """Keys of the `model` block for `method: splat`.

    sh_degree: largest SH degree (0..3); sh_degree_interval: steps per added band.
    n_features: extra per-Gaussian channels rendered as `features` (0 = none).
    init: splat file (.ply/.splat/.spz) to start from; null = the scene's points or random points.
    init_points: random points in the scene box when the scene has no seed points (3DGS Blender: 100000).
    init_opacity: initial opacity; init_scale: factor on the 3-nearest-neighbour distance.
    means_lr, means_lr_final: position lr at the start and end of training, x scene scale (exponential decay).
    scales_lr, quats_lr, opacities_lr, sh0_lr, shN_lr, features_lr: Adam lrs (3DGS's; shN = sh0 / 20).
    ssim_lambda: weight of D-SSIM in the loss (3DGS: 0.2).
    strategy: default (3DGS adaptive density control, keys under `densify`) or mcmc (keys under `mcmc`).
    opacity_reg, scale_reg: L1 on opacities and scales (3DGS-MCMC uses 0.01 each).
    mip_filter, near_plane, backend: passed to `rasterization`.
    """

    sh_degree: int = 3
    sh_degree_interval: int = 1000
    n_features: int = 0
    init: str | None = None
    init_points: int = 100_000
    init_opacity: float = 0.1
    init_scale: float = 1.0
    means_lr: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    features_lr: float = 2.5e-3
    ssim_lambda: float = 0.2
    strategy: Literal["default", "mcmc"] = "default"
    densify: DefaultStrategy = _field(default_factory=DefaultStrategy)
    mcmc: MCMCStrategy = _field(default_factory=MCMCStrategy)
    opacity_reg: float = 0.0
    scale_reg: float = 0.0
    mip_filter: bool = False
    near_plane: float = 0.01
    backend: Literal["auto", "torch", "triton"] = "auto"

    def validate(self, where: str) -> None:
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"{where}.sh_degree: expected 0..3, got {self.sh_degree}")
        if self.sh_degree_interval < 1 or self.init_points < 1 or self.n_features < 0:
            raise ConfigError(f"{where}: sh_degree_interval and init_points must be >= 1, n_features >= 0")
        if not 0.0 < self.init_opacity < 1.0:
            raise ConfigError(f"{where}.init_opacity: expected a number in (0, 1), got {self.init_opacity}")
        if not 0.0 <= self.ssim_lambda <= 1.0:
            raise ConfigError(f"{where}.ssim_lambda: expected a number in [0, 1], got {self.ssim_lambda}")


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM of two (H, W, C) images (`ngraphics.metrics.image.ssim_map`: the same number as `ssim`,
    but differentiable and in the inputs' dtype). H, W >= window."""
    return 1.0 - ssim_map(pred, target, window=window, sigma=sigma).mean()


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Mean distance of each point to its k nearest other points. (N, 3) -> (N,); 0.01 when N <= k."""
    N = len(points)
    if N <= k:
        return torch.full((N,), 0.01, device=points.device)
    out = []
    for s in range(0, N, chunk):
        d = torch.cdist(points[s:s + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(1))
    return torch.cat(out).clamp_min(1e-7)


def scene_scale(scene: SceneData) -> float:
    """3DGS's camera extent: 1.1 x the largest distance of a camera centre from their mean."""
    centres = scene.cameras.c2w[:, :3, 3].double()
    return 1.1 * float((centres - centres.mean(0)).norm(dim=1).max().clamp_min(1e-3))


class Splat(Method):
    """3D Gaussian splatting as an ngraphics method (see the module docstring and `Method`).

    Args:
        config: SplatConfig.
        scene: the training split: seed points or scene box, camera extent (scene scale).
        device: where the Gaussians live.
        dist: the process's rank (one process).
    """

    Config = SplatConfig
    exports = FORMATS
    profile_categories = {"project": ("_project_",), "rasterize": ("_rasterize_", "_raster_"), "sort": ("sort",)}

    def __init__(self, config: SplatConfig, scene: SceneData, device: torch.device | str = "cpu",
                 dist: Dist = SINGLE_PROCESS):
        self.config, self.device, self.dist = config, torch.device(device), dist
        self.scene_scale = scene_scale(scene)
        generator = torch.Generator().manual_seed(dist.seed(0))
        if config.init:
            splats, source = read_splats(config.init), f"model.init {config.init}"
        else:
            splats = self.initial_splats(scene, generator)
            source = "the scene's seed points" if scene.points is not None and len(scene.points) else \
                "random points in the scene box"
        self.setup(splats)
        self.check_in_view(scene.cameras, f"{source}: the {len(scene)} training cameras")

    @classmethod
    def from_splats(cls, splats: Splats, device: torch.device | str = "cpu", config: SplatConfig | None = None,
                    scale: float = 1.0) -> Splat:
        """A Splat of `splats` (e.g. `read_splats(file)`) without a dataset: for rendering a splat trained
        elsewhere (`ngraphics render FILE`). config: default SplatConfig with the file's SH degree; scale: the
        scene scale that the position learning rate and densification use (only if it is trained)."""
        self = cls.__new__(cls)
        self.config = config or SplatConfig(sh_degree=splats.sh_degree)
        self.device, self.dist, self.scene_scale = torch.device(device), SINGLE_PROCESS, scale
        self.setup(splats)
        return self

    def setup(self, splats: Splats) -> None:
        """Parameters, optimizer and densification state for `splats`."""
        self.params = self.make_params(splats)
        self.optimizer = self.make_optimizer()
        self.strategy = self.config.densify if self.config.strategy == "default" else self.config.mcmc
        self.strategy_state = self.strategy.initialize_state()

    def check_in_view(self, cameras: Cameras, where: str) -> torch.Tensor:
        """DataError naming `where` when no camera sees any Gaussian (a splat file in another frame than the
        dataset, a camera path that looks away); else the (C,) count of Gaussians each camera sees."""
        p = self.params
        counts = gaussians_in_view(p["means"].detach(), p["quats"].detach(), torch.exp(p["scales"].detach()),
                                   cameras, self.config.near_plane)
        if len(counts) and int(counts.sum()) == 0:
            centre = p["means"].detach().median(0).values.cpu().tolist()
            origins = cameras.origins.mean(0).tolist()
            raise DataError(f"{where} see none of the {len(p['means'])} Gaussians (Gaussians around "
                            f"({', '.join(f'{v:.3g}' for v in centre)}), cameras around "
                            f"({', '.join(f'{v:.3g}' for v in origins)})): are the Gaussians and the cameras "
                            "in the same world frame?")
        return counts

    # --- pieces -----------------------------------------------------------------------------------------------

    def initial_splats(self, scene: SceneData, generator: torch.Generator) -> Splats:
        """From the scene's seed points (with colours), else `init_points` uniform points in its box."""
        c = self.config
        if scene.points is not None and len(scene.points) > 0:
            means = scene.points.float()
            rgb = scene.point_colors.float() if scene.point_colors is not None else torch.full_like(means, 0.5)
        else:
            lo, hi = scene.aabb.float()
            means = lo + (hi - lo) * torch.rand(c.init_points, 3, generator=generator)
            rgb = torch.rand(c.init_points, 3, generator=generator)
        N = len(means)
        scales = torch.log(knn_scale(means.to(self.device)).cpu() * c.init_scale)[:, None].repeat(1, 3)
        quats = torch.zeros(N, 4)
        quats[:, 0] = 1.0
        opacities = torch.full((N,), math.log(c.init_opacity / (1 - c.init_opacity)))
        return Splats(means, scales, quats, opacities, ((rgb - 0.5) / SH_C0)[:, None])

    def make_params(self, splats: Splats) -> dict[str, torch.nn.Parameter]:
        """Parameters from `splats`, SH padded (or cut) to the config's degree, features zero."""
        N, K = len(splats), (self.config.sh_degree + 1) ** 2
        sh = splats.sh.float()
        sh = torch.cat([sh, torch.zeros(N, max(0, K - sh.shape[1]), 3)], 1)[:, :K]
        tensors = {"means": splats.means, "scales": splats.scales, "quats": splats.quats,
                   "opacities": splats.opacities, "sh0": sh[:, :1], "shN": sh[:, 1:],
                   "features": torch.zeros(N, self.config.n_features)}
        return {k: torch.nn.Parameter(v.float().contiguous().to(self.device)) for k, v in tensors.items()}

    def make_optimizer(self) -> torch.optim.Adam:
        c = self.config
        lrs = {"means": c.means_lr * self.scene_scale, "scales": c.scales_lr, "quats": c.quats_lr,
               "opacities": c.opacities_lr, "sh0": c.sh0_lr, "shN": c.shN_lr, "features": c.features_lr}
        groups = [{"params": [self.params[k]], "lr": lrs[k], "name": k} for k in ATTRIBUTES]
        return torch.optim.Adam(groups, eps=1e-15)

    def means_lr_at(self, progress: float) -> float:
        """Exponential decay from means_lr to means_lr_final (x scene scale) over progress in [0, 1]."""
        c = self.config
        t = min(max(progress, 0.0), 1.0)
        return self.scene_scale * math.exp((1 - t) * math.log(c.means_lr) + t * math.log(c.means_lr_final))

    def sh_degree_at(self, step: int) -> int:
        return min(step // self.config.sh_degree_interval, self.config.sh_degree)

    def rasterize(self, params: dict[str, torch.Tensor], cameras: Cameras, background: torch.Tensor,
                  sh_degree: int) -> dict[str, torch.Tensor]:
        """rasterization() of `params` (activated here) into `cameras` over `background` (3,)."""
        colors = torch.cat([params["sh0"], params["shN"]], 1)
        features = params["features"] if self.config.n_features > 0 else None
        return rasterization(params["means"], params["quats"], torch.exp(params["scales"]),
                             torch.sigmoid(params["opacities"]), colors, cameras, features=features,
                             sh_degree=sh_degree, backgrounds=background, mip_filter=self.config.mip_filter,
                             near_plane=self.config.near_plane, backend=self.config.backend)

    # --- the method interface ---------------------------------------------------------------------------------

    def sampler(self, scene: SceneData, device: torch.device) -> ViewSampler:
        """Whole training views, each once per epoch in random order."""
        return ViewSampler(scene, device)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        """One view: render, L1 + D-SSIM, backward, Adam, densify (see the module docstring)."""
        c = self.config
        step, progress = int(batch["step"]), float(batch["progress"])
        means_lr = self.means_lr_at(progress)
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr
        out = self.rasterize(self.params, batch["cameras"], batch["background"], self.sh_degree_at(step))
        self.strategy.step_pre_backward(out)
        pred, target = out["rgb"][0], batch["rgb"]
        l1 = (pred - target).abs().mean()
        loss = (1 - c.ssim_lambda) * l1 + c.ssim_lambda * ssim_loss(pred, target)
        if "features" in out and "features" in batch:
            loss = loss + (out["features"][0] - batch["features"]).abs().mean()
        if c.opacity_reg > 0:
            loss = loss + c.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
        if c.scale_reg > 0:
            loss = loss + c.scale_reg * torch.exp(self.params["scales"]).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.strategy, DefaultStrategy):
            counts = self.strategy.step_post_backward(self.params, self.optimizer, self.strategy_state, step, out,
                                                      self.scene_scale)
        else:
            counts = self.strategy.step_post_backward(self.params, self.optimizer, self.strategy_state, step, out,
                                                      means_lr)
        with torch.no_grad():
            mse = (pred - target).square().mean()
        return {"loss": loss.detach(), "l1": l1.detach(), "psnr": psnr_from_mse(mse), "lr": means_lr,
                "gaussians": len(self.params["means"]), **counts}

    @torch.no_grad()
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images of C cameras of one size from a shadow copy of the Gaussians (the live ones are never
        touched, so a render may come between any two steps). Returns rgb (C, H, W, 3), depth, alpha
        (C, H, W, 1) and, with n_features > 0, features (C, H, W, n_features); float32 on the device.
        background: (3,), default white."""
        params = {k: p.detach().clone() for k, p in self.params.items()}
        bg = torch.ones(3, device=self.device) if background is None else torch.as_tensor(background).to(self.device).float()
        cameras = cameras.to(self.device)
        keys = ("rgb", "depth", "alpha") + (("features",) if self.config.n_features > 0 else ())
        images: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for i in range(len(cameras)):  # one camera at a time: memory stays one image's
            out = self.rasterize(params, cameras[i], bg, self.config.sh_degree)
            for k in keys:
                images[k].append(out[k][0])
        return {k: torch.stack(v) for k, v in images.items()}

    def metrics(self, scene: SceneData, renders: list[dict[str, torch.Tensor]]) -> dict[str, float | int]:
        """Beside PSNR/SSIM in each evaluation record: the number of Gaussians, the process's peak resident
        memory and, on CUDA, the peak GPU memory allocated so far (GiB), for curves over training time."""
        out: dict[str, float | int] = {"gaussians": len(self.params["means"]),
                                       "peak_rss_gb": round(peak_rss_gb(), 3)}
        if self.device.type == "cuda":
            out["peak_gpu_gb"] = round(peak_gpu_gb(self.device), 3)
        return out

    def splats(self) -> Splats:
        """The Gaussians in file parameterisation (CPU)."""
        p = {k: v.detach().cpu() for k, v in self.params.items()}
        return Splats(p["means"], p["scales"], p["quats"], p["opacities"], torch.cat([p["sh0"], p["shN"]], 1))

    def export(self, kind: str, path: str | Path) -> Path:
        """Write the Gaussians as `kind` (ply | splat | spz); rows with NaN parameters are left out (see
        `write_splats`, whose count `last_export_dropped` keeps)."""
        if kind not in self.exports:
            return super().export(kind, path)
        self.last_export_dropped = write_splats(path, self.splats(), kind)
        return Path(path)

    def state_dict(self) -> dict:
        strategy = {k: v for k, v in self.strategy_state.items() if v is not None}
        return {"params": {k: v.detach() for k, v in self.params.items()}, "optimizer": self.optimizer.state_dict(),
                "strategy": strategy}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint; the number of Gaussians comes from the checkpoint, not from the config."""
        params = state["params"]
        for k in ATTRIBUTES:
            if k not in params:
                raise ConfigError(f"checkpoint: splat parameters lack {k!r}")
            expected = self.params[k].shape[1:]
            if params[k].shape[1:] != expected:
                raise ConfigError(f"checkpoint: splat parameter {k!r} has per-Gaussian shape "
                                  f"{tuple(params[k].shape[1:])}, this config expects {tuple(expected)} "
                                  "(sh_degree / n_features differ?)")
        if len({len(params[k]) for k in ATTRIBUTES}) != 1:
            raise DataError("checkpoint: splat parameters disagree on the number of Gaussians")
        self.params = {k: torch.nn.Parameter(params[k].float().to(self.device).clone()) for k in ATTRIBUTES}
        self.optimizer = self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy_state = self.strategy.initialize_state()
        self.strategy_state.update({k: v.to(self.device) for k, v in state.get("strategy", {}).items()})

    @torch.no_grad()
    def gaussians(self):
        """The Gaussians as a viewer draws them (`Method.gaussians`): covariances R S S^T R^T from the normalised
        quaternions and exp(scales), the SH band-0 colour clamped to [0, 1], sigmoid opacities; Gaussians with
        non-finite values are left out. Returns `ngraphics.methods.base.Gaussians` (CPU, float32)."""
        from ngraphics.methods.base import Gaussians
        from ngraphics.splatting.project import quat_scale_to_covar

        p = {k: self.params[k].detach().float().cpu() for k in ("means", "scales", "quats", "opacities", "sh0")}
        g = (p["means"], quat_scale_to_covar(p["quats"], torch.exp(p["scales"])),
             (p["sh0"][:, 0] * SH_C0 + 0.5).clamp(0, 1), torch.sigmoid(p["opacities"])[:, None])
        finite = torch.stack([torch.isfinite(v).reshape(len(v), -1).all(1) for v in g]).all(0)
        return Gaussians(*(v[finite].contiguous() for v in g))

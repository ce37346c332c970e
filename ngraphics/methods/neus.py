"""`neus`: NeuS2-style surfaces (Wang et al. 2023): a hash-grid SDF rendered with NeuS's opacities, meshes out.

One training step:
    1. schedules from the trainer's progress: learning rate (warm-up, then x `lr_decay` at `lr_milestones`),
       the number of hash levels the SDF sees (NeuS2's progressive training: `start_levels` growing linearly to
       all levels at `levels_full_at`), NeuS's cos annealing (0 -> 1 until `anneal_end`);
    2. sample each ray of the batch inside the scene box: `n_samples` stratified positions, then
       `importance_rounds` rounds of `n_importance / importance_rounds` samples drawn from NeuS's weights of the
       current SDF with a fixed sharpness 64 * 2^round (NeuS's `up_sample`, no gradient), merged in order;
    3. the SDF, its gradient (create_graph: the eikonal loss and the opacities differentiate through it) and
       the colour at every section's midpoint; NeuS opacities from the SDF with the learned sharpness
       inv_s = exp(10 * variance); weights T_i alpha_i; colour composited over the batch's background;
    4. loss = L1(colour) + eikonal_weight * mean((|grad f| - 1)^2) + mask_weight * BCE(opacity, mask) (mask:
       the pixel's alpha for RGBA data, else the scene's masks; `mask_weight` 0 turns it off), backward, Adam.

Sampling, two ways (`model.occupancy.resolution`):
    0 (default): stratified + importance rounds as in 2., a fixed count per ray (fixed shapes, no host sync);
    > 0: NeuS2's way: an occupancy grid derived from the SDF (`OccupancyGrid.update_from_sdf`: cells whose
       |SDF| at the centre is within half the cell diagonal + `band` / inv_s), refreshed every `update_every`
       steps from step `warmup_steps` on (stratified + importance before that); rays march fixed steps of
       box diagonal / `march_steps` through occupied cells only (`ngraphics.rendering.marching.march`), in
       fixed buffers of `samples_per_ray` x `rays_per_batch` samples (rays that do not fit are left out of the
       loss); the number of rays then follows the samples per ray (read back a step or two late, no host
       sync: `LaggedReadout`), within 1/8 .. 4 x `rays_per_batch`, so the buffer stays about full: as the
       shell thins, a step sees more rays for the same samples (NeuS2's, instant-ngp's batch rule).
Background (`model.background`): `color`, the batch's background colour behind the foreground (random for
RGBA data, so the opacity must explain it); `nerf++`, NeuS's NeRF++ model: the foreground is the sphere
inscribed in the scene box, a `BackgroundField` in inverted-sphere coordinates fills everything outside it
(`background_field.n_samples` per ray, evenly in 1 / t), composited behind the foreground and in front of the
background colour. See docs/neus.md.

Rendering adds `normal` (C, H, W, 3): the composited unit SDF gradient (world frame), 0 where nothing is hit
(renders are over the background colour, so normal images are the weighted normals without a background).
`metrics()` extracts a mesh (`eval_mesh_resolution`) and reports Chamfer-L1, normal consistency and F-score
against `scene.surface` when the scene has one, and the mask IoU of the rendered opacity when it has masks.
`export("mesh", path)` writes a marching-cubes mesh with vertex colours, in the dataset's world frame (DTU:
`scale_mat`), see `ngraphics.export.mesh`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ngraphics.cameras import Cameras
from ngraphics.data.batches import RaySampler
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError, choice_message
from ngraphics.fields.background_field import BackgroundField, BackgroundFieldConfig, outside_bins
from ngraphics.fields.sdf_field import SDFField, SDFFieldConfig
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method
from ngraphics.metrics.image import psnr_from_mse
from ngraphics.optim import LaggedReadout, warmup_step_decay
from ngraphics.rendering.alpha import accumulate_along_rays, composite_over, render_weight_from_alpha
from ngraphics.rendering.marching import RaySamples, march
from ngraphics.rendering.occupancy import OccupancyGrid
from ngraphics.rendering.sdf import (
    importance_weights,
    neus_alpha_midpoint,
    ray_box_range,
    ray_sphere_range,
    sample_pdf,
    stratified_bins,
)

BACKGROUNDS = ("color", "nerf++")


@dataclass(frozen=True)
class SurfaceOccupancyConfig:
    """Keys of the `model.occupancy` block for `method: neus` (an occupancy grid derived from the SDF).

    resolution: cells per axis over the scene box; 0 = no grid (stratified + importance sampling).
    update_every: steps between grid updates (one SDF evaluation per cell centre).
    warmup_steps: steps before the first update (and before rays use the grid).
    band: occupied where |SDF(centre)| <= cell diagonal / 2 + band / inv_s (NeuS's logistic density has
        fallen to e^-band of its peak at band / inv_s from the surface).
    march_steps: step size = scene box diagonal / march_steps.
    samples_per_ray: training buffers hold rays_per_batch x this many samples.
    """

    resolution: int = 0
    update_every: int = 16
    warmup_steps: int = 0
    band: float = 8.0
    march_steps: int = 1024
    samples_per_ray: int = 128

    def validate(self, where: str) -> None:
        if self.resolution and (self.resolution < 2 or self.resolution % 2):
            raise ConfigError(f"{where}.resolution: expected 0 (no grid) or an even integer >= 2, "
                              f"got {self.resolution}")
        for key in ("update_every", "march_steps", "samples_per_ray"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        if self.warmup_steps < 0 or not self.band >= 0:
            raise ConfigError(f"{where}: warmup_steps and band must be >= 0, got {self.warmup_steps}, {self.band}")


@dataclass(frozen=True)
class NeusConfig:
    """Keys of the `model` block for `method: neus`.

    field: the SDF and colour networks (see SDFFieldConfig).
    background: color | nerf++ (module docstring); background_field: the NeRF++ field (BackgroundFieldConfig).
    occupancy: the occupancy grid derived from the SDF (SurfaceOccupancyConfig; resolution 0 = none).
    rays_per_batch: rays per step (NeuS2: 4096 x 2 on a 3090 with its own kernels).
    n_samples, n_importance, importance_rounds: stratified samples per ray, then importance samples in rounds.
    init_variance: NeuS's initial `variance` (inv_s = exp(10 variance); 0.3 -> 20).
    anneal_end: progress fraction at which NeuS's cos annealing reaches 1 (0 = no annealing).
    start_levels, levels_full_at: progressive hash levels: the SDF sees `start_levels` levels at first, all at
        progress `levels_full_at` (0 = all levels from the start).
    eikonal_weight, mask_weight: loss weights (mask loss only on scenes with masks or alpha).
    lr, betas, eps, lr_decay, lr_milestones, warmup_steps: Adam and its schedule (see NeRF).
    near: ray start, world units; -1 = the dataset's near.
    render_chunk: rays per chunk when rendering.
    eval_mesh_resolution: marching-cubes grid for `metrics()`; fscore_threshold: its F-score distance as a
        fraction of the ground truth's bounding-box diagonal.
    export_resolution: default marching-cubes grid of `export("mesh", ...)`.
    """

    field: SDFFieldConfig = _field(default_factory=SDFFieldConfig)
    background: str = "color"
    background_field: BackgroundFieldConfig = _field(default_factory=BackgroundFieldConfig)
    occupancy: SurfaceOccupancyConfig = _field(default_factory=SurfaceOccupancyConfig)
    rays_per_batch: int = 4096
    n_samples: int = 64
    n_importance: int = 64
    importance_rounds: int = 4
    init_variance: float = 0.3
    anneal_end: float = 0.1
    start_levels: int = 4
    levels_full_at: float = 0.4
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    lr_decay: float = 0.33
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    warmup_steps: int = 100
    near: float = -1.0
    render_chunk: int = 4096
    eval_mesh_resolution: int = 128
    fscore_threshold: float = 0.005
    export_resolution: int = 512

    def validate(self, where: str) -> None:
        for key in ("rays_per_batch", "n_samples", "render_chunk", "eval_mesh_resolution", "export_resolution"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        if self.n_importance < 0 or self.importance_rounds < 1 or self.n_importance % self.importance_rounds:
            raise ConfigError(f"{where}.n_importance: expected a multiple of importance_rounds "
                              f"({self.importance_rounds}), got {self.n_importance}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: expected a positive number, got {self.lr}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(choice_message(f"{where}.background", self.background, BACKGROUNDS))


class Neus(Method):
    """NeuS2-style SDF reconstruction as an ngraphics method (see the module docstring).

    Args:
        config: NeusConfig; scene: the training split (its box bounds the samples and the grid; DTU's
        `meta["scale_mat"]` maps meshes back to world units); device; dist: the process's place among the
        run's processes. With N processes each rank takes rays_per_batch / N rays, the losses are means over
        the global batch (`Dist.sum_over_ranks` of the counts), the gradients are averaged over the ranks
        before Adam, and the occupancy grid is the main rank's.
    """

    Config = NeusConfig
    data_parallel = True  # ranks average gradients through `Dist` (see `dist` above)
    exports: ClassVar[tuple[str, ...]] = ("mesh",)
    # kernel-name substrings per step component, for the trainer's profile (first match wins: the double
    # backward of the grid, which the eikonal loss and the gradient-dependent opacities need, is its own row)
    profile_categories: ClassVar[dict[str, tuple[str, ...]]] = {
        "grid_bwd_bwd": ("_grid_bwd_bwd",), "grid_fwd_bwd": ("_grid_",),
        "mlp": ("gemm", "sm90_xmma", "cutlass", "softplus", "Softplus", "relu", "threshold"),
        "sampling": ("sort", "searchsorted", "cumsum", "gather", "linspace", "rand"),
        "compositing": ("index_add", "scan", "exp", "log1p", "sigmoid")}

    def __init__(self, config: NeusConfig, scene: SceneData, device: torch.device | str = "cpu",
                 dist: Dist = SINGLE_PROCESS):
        self.config, self.device, self.dist = config, torch.device(device), dist
        self.aabb = scene.aabb.to(torch.float32).to(self.device)
        self.near = float(scene.near if config.near < 0 else config.near)
        self.world_transform = scene.meta.get("scale_mat")  # (4, 4) normalised -> world, or None
        self.field = SDFField(config.field, self.aabb).to(self.device)
        self.variance = torch.nn.Parameter(torch.tensor(config.init_variance, device=self.device))
        self.render_field = copy.deepcopy(self.field).requires_grad_(False).eval()
        self.render_variance = self.variance.detach().clone()
        encodings, mlps = self.field.encoding_parameters(), self.field.mlp_parameters() + [self.variance]
        # NeRF++ background: the foreground is the sphere inscribed in the box, the field fills the rest
        self.radius = float((self.aabb[1] - self.aabb[0]).min()) / 2
        self.background_field = self.render_background = None
        if config.background == "nerf++":
            self.background_field = BackgroundField(config.background_field, self.field.centre, self.radius,
                                                    "model.background_field").to(self.device)
            self.render_background = copy.deepcopy(self.background_field).requires_grad_(False).eval()
            encodings += list(self.background_field.encoding.parameters())
            mlps += list(self.background_field.density_net.parameters()) + \
                list(self.background_field.color_net.parameters())
        self.grid: OccupancyGrid | None = None
        self.grid_ready = False  # the grid has been derived from the SDF at least once
        if config.occupancy.resolution > 0:
            self.grid = OccupancyGrid(self.aabb.cpu(), config.occupancy.resolution, 1).to(self.device)
            self.step_size = float((self.aabb[1] - self.aabb[0]).norm()) / config.occupancy.march_steps
        groups = [{"params": encodings}, {"params": mlps}]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        self.anneal = 0.0 if config.anneal_end > 0 else 1.0
        self.batches: RaySampler | None = None
        # called with a phase name as each part of train_step ends ("sample", "forward", "backward", "optimizer"),
        # for a benchmark's per-phase timers (ngraphics/methods/bench_neus.py); None in training
        self.phase_hook: Callable[[str], None] | None = None
        self.readout = LaggedReadout()  # (samples, rays that fit) of recent grid steps, for the batch size
        # with N processes each rank takes 1/N of the batch and the gradients are averaged over the ranks
        self.rays_per_batch = max(1, config.rays_per_batch // dist.world_size)

    # --- pieces -----------------------------------------------------------------------------------------------

    def inv_s(self, variance: torch.Tensor) -> torch.Tensor:
        return torch.exp(10.0 * variance).clamp(1e-6, 1e6)

    def sampler(self, scene: SceneData, device: torch.device) -> RaySampler:
        self.batches = RaySampler(scene, device, self.rays_per_batch)
        return self.batches

    def schedule(self, step: int, progress: float) -> float:
        """Set the progressive levels and cos annealing for this point of the run; returns the learning rate."""
        c = self.config
        L = self.field.n_levels
        if c.levels_full_at > 0 and c.start_levels < L:
            grown = c.start_levels + (L - c.start_levels) * min(progress / c.levels_full_at, 1.0)
            self.field.set_active_levels(int(grown))
        else:
            self.field.set_active_levels(L)
        self.anneal = 1.0 if c.anneal_end <= 0 else min(progress / c.anneal_end, 1.0)
        return warmup_step_decay(step, progress, c.lr, c.warmup_steps, c.lr_decay, c.lr_milestones)

    def foreground_range(self, origins: torch.Tensor,
                         directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """t_near, t_far, hit (R,) of the foreground: the scene box, or its inscribed sphere with NeRF++."""
        if self.background_field is None:
            return ray_box_range(origins, directions, self.aabb, self.near)
        return ray_sphere_range(origins, directions, self.field.centre, self.radius, self.near)

    @torch.no_grad()
    def update_grid(self, field: SDFField, variance: torch.Tensor) -> None:
        """Derive the occupancy grid from the SDF now (band = occupancy.band / inv_s; one host sync)."""
        band = self.config.occupancy.band / float(self.inv_s(variance.detach()))
        self.grid.update_from_sdf(field.sdf, band)
        self.dist.broadcast_from_main([self.grid.occs, self.grid.binary])  # one grid on every rank
        self.grid_ready = True

    def sample_rays(self, field: SDFField, origins: torch.Tensor, directions: torch.Tensor, jitter: bool,
                    capacity: int | None = None) -> tuple[RaySamples, torch.Tensor]:
        """Sections along rays where the foreground is (no gradient): through the occupancy grid once it is
        ready, else stratified, then NeuS's importance rounds.

        origins, directions: (R, 3). capacity: with the grid, fixed buffers of this many sections (training).
        Returns packed sections (RaySamples; with the grid only rays < n_valid_rays own theirs) and live (N,)
        bool: the sections that count (in the foreground, not padding).
        """
        if self.grid is not None and self.grid_ready:
            samples = march(origins, directions, self.grid, step_size=self.step_size, near=self.near,
                            jitter=jitter, capacity=capacity, max_steps=self.config.occupancy.march_steps + 2)
            live = torch.arange(len(samples), device=origins.device) < samples.offsets[-1]
            if self.background_field is not None:
                mids = 0.5 * (samples.t_starts + samples.t_ends)
                x = origins[samples.ray_indices] + directions[samples.ray_indices] * mids[:, None]
                live = live & ((x - self.field.centre).norm(dim=-1) <= self.radius)
            return samples, live
        t, hit = self.sample_bins(field, origins, directions, jitter)
        R, S = t.shape
        ray_indices = torch.arange(R, device=t.device).repeat_interleave(S - 1)
        offsets = torch.arange(R + 1, device=t.device) * (S - 1)
        return RaySamples(ray_indices, t[:, :-1].reshape(-1), t[:, 1:].reshape(-1), offsets), hit[ray_indices]

    def sample_bins(self, field: SDFField, origins: torch.Tensor, directions: torch.Tensor,
                    jitter: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Stratified positions, then NeuS's importance rounds (no gradient).

        origins, directions: (R, 3). Returns positions t (R, n_samples + 1 + n_importance) ascending, and
        hit (R,) bool (rays that cross the foreground; others get zero-length sections).
        """
        c = self.config
        t_near, t_far, hit = self.foreground_range(origins, directions)
        t = stratified_bins(t_near, t_far, c.n_samples, jitter)
        if c.n_importance == 0:
            return t, hit
        R = t.shape[0]
        with torch.no_grad():
            sdf = field.sdf((origins[:, None] + directions[:, None] * t[..., None]).reshape(-1, 3)).reshape(R, -1)
            per_round = c.n_importance // c.importance_rounds
            for i in range(c.importance_rounds):
                weights = importance_weights(t, sdf, 64.0 * 2**i)
                new = sample_pdf(t, weights, per_round, jitter)
                new_sdf = field.sdf((origins[:, None] + directions[:, None] * new[..., None]).reshape(-1, 3))
                t, order = torch.sort(torch.cat([t, new], -1), -1)
                sdf = torch.cat([sdf, new_sdf.reshape(R, -1)], -1).gather(1, order)
        return t, hit

    def shade(self, field: SDFField, variance: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor,
              samples: RaySamples, live: torch.Tensor, background: torch.Tensor, training: bool,
              background_field: BackgroundField | None = None) -> dict[str, torch.Tensor]:
        """NeuS volume rendering of packed sections [t_start, t_end] (only the `live` ones count).

        Returns rgb (R, 3) over the NeRF++ background field (if given) over `background` ((R, 3) or (3,)),
        alpha (R,) (the foreground's opacity), depth (R,), normal (R, 3) (unit normals composited),
        gradient (N, 3) and live (N,) (for the eikonal loss).
        """
        R = origins.shape[0]
        ray_indices = samples.ray_indices
        mids = 0.5 * (samples.t_starts + samples.t_ends)
        deltas = samples.t_ends - samples.t_starts
        d = directions[ray_indices]
        x = origins[ray_indices] + d * mids[:, None]
        sdf, gradient, feature = field.sdf_with_gradient(x, create_graph=training)
        alpha = neus_alpha_midpoint(sdf, (d * gradient).sum(-1), deltas, self.inv_s(variance), self.anneal)
        alpha = alpha * live
        rgb = field.color(x, gradient, d, feature)
        weights, _ = render_weight_from_alpha(alpha, ray_indices, samples.offsets)
        acc = accumulate_along_rays(weights, ray_indices, R)
        if background_field is not None:
            background = self.shade_background(background_field, origins, directions, background, training)
        color = composite_over(accumulate_along_rays(weights, ray_indices, R, rgb), acc, background)
        depth = accumulate_along_rays(weights, ray_indices, R, mids[:, None])[:, 0] / acc.clamp_min(1e-10)
        unit = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        normal = accumulate_along_rays(weights, ray_indices, R, unit.detach() if training else unit)
        return {"rgb": color, "alpha": acc, "depth": depth, "normal": normal, "gradient": gradient, "live": live}

    def shade_background(self, background_field: BackgroundField, origins: torch.Tensor, directions: torch.Tensor,
                         background: torch.Tensor, jitter: bool) -> torch.Tensor:
        """Colour behind the foreground sphere: the NeRF++ field's samples (evenly in 1 / t from the sphere's exit)
        composited over `background`. Returns (R, 3)."""
        R, n = origins.shape[0], background_field.config.n_samples
        _, t_exit, _ = ray_sphere_range(origins, directions, self.field.centre, self.radius, self.near)
        t = outside_bins(t_exit.clamp_min(1e-3), n, jitter)
        mids = 0.5 * (t[:, 1:] + t[:, :-1])
        x = (origins[:, None] + directions[:, None] * mids[..., None]).reshape(-1, 3)
        sigma, rgb = background_field(x, directions[:, None].expand(R, n, 3).reshape(-1, 3))
        alpha = 1.0 - torch.exp(-sigma * (t[:, 1:] - t[:, :-1]).reshape(-1))
        ray_indices = torch.arange(R, device=t.device).repeat_interleave(n)
        weights, _ = render_weight_from_alpha(alpha, ray_indices, torch.arange(R + 1, device=t.device) * n)
        acc = accumulate_along_rays(weights, ray_indices, R)
        return composite_over(accumulate_along_rays(weights, ray_indices, R, rgb), acc, background)

    # --- the method interface ---------------------------------------------------------------------------------

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        lr = self.schedule(int(batch["step"]), float(batch["progress"]))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step = int(batch["step"])
        grid = self.grid is not None and step >= c.occupancy.warmup_steps
        if grid and (step - c.occupancy.warmup_steps) % c.occupancy.update_every == 0:
            self.update_grid(self.field, self.variance)
        origins, directions, target = batch["origins"], batch["directions"], batch["rgb"]
        capacity = self.rays_per_batch * c.occupancy.samples_per_ray
        samples, live = self.sample_rays(self.field, origins, directions, jitter=True,
                                         capacity=capacity if grid else None)
        if grid and self.grid_ready:
            self.readout.push(torch.stack([samples.n_samples, samples.ray_valid().sum()]).float())
            self.update_batch_size(capacity)
        self._phase("sample")
        out = self.shade(self.field, self.variance, origins, directions, samples, live, batch["background"],
                         training=True, background_field=self.background_field)
        fits = samples.ray_valid().float()  # rays whose sections all fit the buffers (all without the grid)
        grad_norm = out["gradient"].norm(dim=-1)
        w = out["live"].float()
        # means over the global batch: each rank's sums over the counts of all ranks, x ranks because the
        # gradients are then averaged (with one process: the counts of this batch, x 1)
        counts = self.dist.sum_over_ranks(torch.stack([fits.sum(), w.sum()])).clamp_min(1.0)
        n_fit, n_live = counts[0] / self.dist.world_size, counts[1] / self.dist.world_size
        color_loss = ((out["rgb"] - target).abs().mean(-1) * fits).sum() / n_fit
        eikonal = ((grad_norm - 1.0).square() * w).sum() / n_live
        loss = color_loss + c.eikonal_weight * eikonal
        mask = batch.get("alpha", batch.get("mask"))
        stats = {}
        if mask is not None and c.mask_weight > 0:
            opacity = out["alpha"].clamp(1e-3, 1.0 - 1e-3)
            bce = F.binary_cross_entropy(opacity, mask.float().clamp(0, 1), reduction="none")
            mask_loss = (bce * fits).sum() / n_fit
            loss = loss + c.mask_weight * mask_loss
            stats["mask_loss"] = mask_loss.detach()
        if grid:
            stats["samples_per_ray"] = samples.n_samples.float() / n_fit
            stats["rays_fit"] = fits.mean()
        self._phase("forward")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        self._phase("backward")
        self.optimizer.step()
        self._phase("optimizer")
        with torch.no_grad():
            mse = ((out["rgb"] - target).square().mean(-1) * fits).sum() / n_fit
        return {"loss": loss.detach(), "mse": mse, "psnr": psnr_from_mse(mse), "eikonal": eikonal.detach(),
                "inv_s": self.inv_s(self.variance.detach()), "levels": torch.tensor(float(self.field.active)),
                "lr": torch.tensor(lr), **stats}

    def update_batch_size(self, capacity: int) -> None:
        """Rays per batch for a full sample buffer, from the latest (samples, rays that fit) read back; changed
        only when off by more than 10 % (fewer shape changes), within 1/8 .. 4 x rays_per_batch, multiples of 16."""
        counts = self.readout.poll()
        if self.batches is None or counts is None or counts[1] < 1:
            return
        per_ray = max(counts[0] / counts[1], 1.0)
        ideal = min(max(capacity / per_ray, self.rays_per_batch / 8, 16), 4 * self.rays_per_batch)
        if abs(ideal - self.batches.batch_size) > 0.1 * self.batches.batch_size:
            self.batches.batch_size = max(16, int(ideal) // 16 * 16)

    def _phase(self, name: str) -> None:
        if self.phase_hook is not None:
            self.phase_hook(name)

    @torch.no_grad()
    def refresh_render_field(self) -> None:
        """Copy the live weights (and active levels) into the render copy; the live ones stay untouched."""
        self.render_field.load_state_dict(self.field.state_dict())
        self.render_variance.copy_(self.variance.detach())
        if self.background_field is not None:
            self.render_background.load_state_dict(self.background_field.state_dict())

    def render_rays(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor) -> dict:
        """rgb, alpha, depth, normal of rays (R, 3) with the render copy (refresh it first)."""
        samples, live = self.sample_rays(self.render_field, origins, directions, jitter=False)
        return self.shade(self.render_field, self.render_variance, origins, directions, samples, live, background,
                          training=False, background_field=self.render_background)

    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """rgb (C, H, W, 3), depth, alpha (C, H, W, 1), normal (C, H, W, 3) of C cameras of one size."""
        self.refresh_render_field()
        cameras = cameras.to(self.device)
        H, W = int(cameras.height[0]), int(cameras.width[0])
        if not (bool((cameras.height == H).all()) and bool((cameras.width == W).all())):
            raise ConfigError("render: all cameras of one call must have the same image size")
        bg = torch.ones(3, device=self.device) if background is None else \
            torch.as_tensor(background).to(self.device).float()
        keys = ("rgb", "depth", "alpha", "normal")
        images = {k: [] for k in keys}
        chunk = self.config.render_chunk
        for i in range(len(cameras)):
            origins, directions = cameras.image_rays(i)
            parts = {k: [] for k in keys}
            for s in range(0, origins.shape[0], chunk):
                out = self.render_rays(origins[s : s + chunk], directions[s : s + chunk], bg)
                for k in keys:
                    v = out[k].detach()
                    parts[k].append(v[:, None] if v.ndim == 1 else v)
            for k in keys:
                images[k].append(torch.cat(parts[k]).reshape(H, W, -1))
        return {k: torch.stack(v) for k, v in images.items()}

    # --- geometry ---------------------------------------------------------------------------------------------

    def mesh(self, resolution: int, bounds=None, largest_component: bool = False, colors: bool = True,
             world: bool = True):
        """Marching-cubes mesh of the render copy's SDF (`ngraphics.export.mesh.Mesh`).

        bounds: (2, 3) in the scene's (normalised) frame, default the scene box; world: map through the
        dataset's `scale_mat` when it has one; colors: vertex colours seen head-on (view = -normal).
        """
        from ngraphics.export.mesh import color_vertices, marching_cubes_sdf

        self.refresh_render_field()
        field = self.render_field
        mesh = marching_cubes_sdf(field.sdf, self.aabb.cpu() if bounds is None else bounds, resolution, self.device)
        if largest_component:
            mesh = mesh.largest_component()
        if colors:
            def color_fn(x: torch.Tensor) -> torch.Tensor:
                _, gradient, feature = field.sdf_with_gradient(x, create_graph=False)
                n = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                return field.color(x, gradient, -n, feature)

            mesh = color_vertices(mesh, color_fn, self.device)
        return mesh.transformed(self.world_transform) if world else mesh

    def export(self, kind: str, path: str | Path, *, resolution: int | None = None, bounds=None,
               largest_component: bool = False, fmt: str | None = None) -> Path:
        """Write the surface as a mesh file (ply / obj / glb by `fmt` or suffix); see `mesh`."""
        from ngraphics.export.mesh import mesh_format, write_mesh

        if kind != "mesh":
            return super().export(kind, path)
        fmt = mesh_format(path, fmt)
        mesh = self.mesh(resolution or self.config.export_resolution, bounds, largest_component)
        return write_mesh(mesh, path, fmt)

    def metrics(self, scene: SceneData, renders: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Chamfer-L1 / normal consistency / F-score against `scene.surface` (in the scene's frame), and the mask
        IoU of rendered opacity > 0.5 against the scene's masks, where the scene has them."""
        from ngraphics.errors import DataError
        from ngraphics.metrics.geometry import mesh_metrics

        out: dict[str, float] = {}
        if scene.masks is not None and renders and "alpha" in renders[0]:
            inter = union = 0.0
            for mask, r in zip(scene.masks, renders):
                a, m = r["alpha"][..., 0].cpu() > 0.5, mask > 0.5
                inter += float((a & m).sum())
                union += float((a | m).sum())
            out["mask_iou"] = inter / max(union, 1.0)
        if scene.surface is not None:
            gt_v, gt_f = scene.surface
            diagonal = float((gt_v.amax(0) - gt_v.amin(0)).norm())
            try:
                mesh = self.mesh(self.config.eval_mesh_resolution, colors=False, world=False)
                m = mesh_metrics((mesh.vertices, mesh.faces), (gt_v, gt_f), self.config.fscore_threshold * diagonal,
                                 n_points=50_000)
            except DataError:  # no surface (yet), or a degenerate one: the worst values, not a crash
                return {**out, "chamfer_l1": float("inf"), "fscore": 0.0}
            out.update({"chamfer_l1": m["chamfer_l1"], "chamfer_accuracy": m["accuracy"],
                        "chamfer_completeness": m["completeness"], "normal_consistency": m["normal_consistency"],
                        "fscore": m["fscore"], "chamfer_l1_rel_diagonal": m["chamfer_l1"] / diagonal})
        return out

    # --- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = {"field": self.field.state_dict(), "variance": self.variance.detach().clone(),
                 "optimizer": self.optimizer.state_dict(), "anneal": self.anneal}
        if self.background_field is not None:
            state["background_field"] = self.background_field.state_dict()
        if self.grid is not None:
            state.update(grid=self.grid.state_dict(), grid_ready=self.grid_ready)
        return state

    def load_state_dict(self, state: dict) -> None:
        parts = [("field", self.field), ("background_field", self.background_field), ("grid", self.grid)]
        for key, module in parts:
            if module is None:
                continue
            if key not in state:
                raise ConfigError(f"checkpoint {key}: missing (the run was trained without it; check "
                                  "model.background and model.occupancy)")
            try:
                module.load_state_dict(state[key])
            except RuntimeError as e:
                raise ConfigError(f"checkpoint {key}: does not fit this config ({str(e).splitlines()[0]})") from None
        self.grid_ready = bool(state.get("grid_ready", False)) and self.grid is not None
        with torch.no_grad():
            self.variance.copy_(state["variance"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.anneal = float(state.get("anneal", self.anneal))
        self.refresh_render_field()

    def surface_mesh(self, resolution: int):
        """The surface for a viewer (`Method.surface_mesh`): `mesh(resolution)` with vertex colours, in the scene's
        frame (the cameras', not mapped through `scale_mat`). A DataError while the SDF has no zero crossing."""
        return self.mesh(resolution, world=False)


__all__ = ["Neus", "NeusConfig"]

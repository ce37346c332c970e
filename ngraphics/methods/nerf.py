"""`nerf`: Instant-NGP-style NeRF (Mueller et al. 2022) with an occupancy grid, in the nerfacc shape.

One training step:
    1. every `occupancy.update_every` steps, refresh the occupancy grid from the field's density;
    2. march the batch's rays through occupied cells (jittered starts) into a candidate buffer, drop the
       samples behind the early-stop point with a no-grad density pass (nerfacc's `sigma_fn`), and pack the
       rest into a buffer of exactly `target_samples` samples (instant-ngp's fixed training batch: rays that
       do not fit are cut whole and left out of the loss, unused entries are zero-length padding);
    3. evaluate the field on that buffer, composite over the batch's backgrounds (random per ray for RGBA
       data, so the model cannot paint the background into the volume);
    4. Huber (smooth L1) loss against the targets over the rays that fit, backward, Adam (lr 1e-2, eps
       1e-15), then size the next batch: rays so that it holds about `target_samples` samples, candidates
       so that the marcher's buffer holds them (instant-ngp's rule).
Nothing in a step waits for the GPU: the buffer sizes are fixed or come from counts copied back
asynchronously a step or two late (`LaggedReadout`), so the host queues the next step while the GPU works.
On CUDA, steps 2-4 plus the optimizer replay as one CUDA graph (`GraphedStep`, `cuda_graphs`), recorded
again only when the batch's shape changes; ray and candidate counts move with hysteresis (10 % / a
1.1-1.6x window) so that it rarely does. The occupancy update stays outside the graph.
Learning rate: linear warm-up over `warmup_steps`, then x `lr_decay` at each of `lr_milestones` (0.5, 0.75 and 0.9: nerfacc's
schedule, on the trainer's progress so time budgets work too).

Bounded scenes (Blender) use one occupancy level and constant steps sqrt(3) x box / 1024. Scenes with
aabb_scale > 1 (the fox, from instant-ngp's transforms) get 1 + log2(aabb_scale) cascades, steps that grow
with distance (cone_angle 1/256) and a hash grid over the whole aabb_scale cube.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from dataclasses import field as _field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from ngraphics.cameras import Cameras
from ngraphics.data.batches import RaySampler
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError
from ngraphics.fields.nerf_field import NerfField, NerfFieldConfig
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method
from ngraphics.metrics.image import psnr_from_mse
from ngraphics.optim import (AdamConfig, GraphedStep, LaggedReadout, ParameterEMA, TcnnAdam, tcnn_param_groups,
                             warmup_step_decay)
from ngraphics.rendering.compositing import composite
from ngraphics.rendering.marching import RaySamples, march, steps_to_cover
from ngraphics.rendering.occupancy import OccupancyConfig, OccupancyGrid


@dataclass(frozen=True)
class NeRFConfig:
    """Keys of the `model` block for `method: nerf`.

    field: the radiance field (see NerfFieldConfig).
    occupancy: the occupancy grid (see OccupancyConfig).
    render_steps: steps across the scene box's diagonal at the finest spacing (instant-ngp: 1024).
    cone_angle: step growth with distance; -1 = auto (0 bounded, 1/256 with aabb_scale > 1).
    alpha_thre: skip samples with opacity below this; -1 = auto (0 bounded, 0.01 with aabb_scale > 1).
    early_stop_eps: stop marching a ray once its transmittance is below this.
    near: ray start, world units; -1 = the dataset's near.
    far: ray end, world units; -1 = none (rays end where they leave the outermost occupancy cascade).
    target_samples: samples per batch the ray count adapts to (instant-ngp: 2^18).
    initial_rays, min_rays, max_rays: first batch size and bounds of the adapted one.
    pixel_jitter: training rays pass through a random point of each pixel (true) or through its centre (false:
        instant-ngp's `snap_to_pixel_centers`, nerfacc's choice). Centres fit sharp, many-view captures
        better (lego: +0.5 dB, a pixel's value is its area's average, and point rays at random places in it
        learn a blurred scene); the random point regularises small, few-view scenes (the default scene).
    lr, betas, eps, weight_decay: Adam; x lr_decay at each progress fraction in lr_milestones; warmup_steps of
        linear warm-up; weight_decay is L2 on the MLP weights only.
    optimizer: adam (torch's fused Adam) or tcnn (tiny-cuda-nn's Adam, instant-ngp's: hash-table entries
        whose gradient is exactly 0 skip the step, moments included, and every element counts its own steps).
    loss: huber (smooth L1, nerfacc) or mse.
    render_chunk: rays per chunk when rendering images.
    weight_ema: decay of the parameter average that renders and evaluates (instant-ngp: 0.95); 0 = off.
    jitter: randomise each training ray's first step within one step (stratified sampling).
    cuda_graphs: on CUDA, replay the training step as a CUDA graph (one launch instead of hundreds).
    backend: auto | torch | triton for ray marching and compositing (the field has its own, field.backend).
    """

    field: NerfFieldConfig = _field(default_factory=NerfFieldConfig)
    occupancy: OccupancyConfig = _field(default_factory=OccupancyConfig)
    render_steps: int = 1024
    cone_angle: float = -1.0
    alpha_thre: float = -1.0
    early_stop_eps: float = 1e-4
    near: float = -1.0
    far: float = -1.0
    target_samples: int = 1 << 18
    initial_rays: int = 4096
    min_rays: int = 256
    max_rays: int = 1 << 16
    pixel_jitter: bool = True
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 1e-6
    lr_decay: float = 0.33
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    warmup_steps: int = 100
    optimizer: Literal["adam", "tcnn"] = "adam"
    loss: str = "huber"
    render_chunk: int = 1 << 14
    weight_ema: float = 0.95
    jitter: bool = True
    cuda_graphs: bool = True
    backend: Literal["auto", "torch", "triton"] = "auto"

    def validate(self, where: str) -> None:
        if self.loss not in ("huber", "mse"):
            raise ConfigError(f"{where}.loss: {self.loss!r} is not one of huber, mse")
        for key in ("render_steps", "target_samples", "initial_rays", "min_rays", "max_rays", "render_chunk"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        if not 0.0 <= self.weight_ema < 1.0:
            raise ConfigError(f"{where}.weight_ema: expected a number in [0, 1), got {self.weight_ema}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: expected a positive number, got {self.lr}")


class NeRF(Method):
    """Instant-NGP NeRF as an ngraphics method (see `ngraphics.methods.base.Method`).

    Args:
        config: NeRFConfig.
        scene: the training split (sets the box, aabb_scale, near plane).
        device: where parameters live.
        dist: the process's place among the run's processes. With N processes each rank marches its share of
            the global batch (target_samples / N samples; initial_rays, min_rays, max_rays / N rays) and the
            gradients are averaged over the ranks before Adam, weighted by each rank's rays in the loss, so a
            step equals one process's step on the whole batch; the occupancy grid is the main rank's (it is
            refreshed at random points). The step is not a CUDA graph then.
    Training batches are rays (`ngraphics.data.batches.RaySampler`) whose count the method adapts so that a
    step holds about `target_samples` samples.
    """

    Config = NeRFConfig
    data_parallel = True  # ranks average gradients through `Dist` (see `dist` above)
    # kernel-name substrings per step component, for the trainer's profile (trainer.profile_at)
    profile_categories: ClassVar[dict[str, tuple[str, ...]]] = {"encoding": ("_grid_",), "mlp": ("_mlp_", "gemm", "sm90_xmma", "cutlass"),
                          "marching": ("_march_", "_early_stop_"), "compositing": ("_composite_",)}

    def __init__(self, config: NeRFConfig, scene: SceneData, device: torch.device | str = "cpu",
                 dist: Dist = SINGLE_PROCESS):
        self.config, self.device, self.dist = config, torch.device(device), dist
        aabb = scene.aabb.to(torch.float32)
        aabb_scale = float(scene.meta.get("aabb_scale", 1.0)) if not scene.contract else 1.0
        levels = config.occupancy.levels
        if levels == 0:
            levels = 1 + max(0, round(math.log2(max(aabb_scale, 1.0)))) if not scene.contract else 4
        center, half = aabb.mean(0), 0.5 * (aabb[1] - aabb[0])
        base = torch.stack([center - half / aabb_scale, center + half / aabb_scale])  # level-0 box
        self.grid = OccupancyGrid(base, config.occupancy.resolution, levels).to(self.device)
        outer = self.grid.outer_aabb
        field_config = config.field
        if self.device.type != "cuda":  # fp16 grids are a GPU speed option; the CPU path stays fp32
            field_config = dataclasses.replace(field_config, grid_precision="fp32", grid_gradient_precision="fp32")
        self.field = NerfField(field_config, outer, aabb_scale=2.0 ** (levels - 1)).to(self.device)
        # renders read this copy of the (averaged) weights, never the live parameters
        self.render_field = copy.deepcopy(self.field).requires_grad_(False).eval()
        bounded = levels == 1
        self.step_size = math.sqrt(3.0) * float((base[1] - base[0]).max()) / config.render_steps
        self.cone_angle = (0.0 if bounded else 1.0 / 256.0) if config.cone_angle < 0 else config.cone_angle
        self.alpha_thre = (0.0 if bounded else 1e-2) if config.alpha_thre < 0 else config.alpha_thre
        self.max_step = self.grid.cell_size(levels - 1) * math.sqrt(3.0)
        self.near = scene.near if config.near < 0 else config.near
        self.far = 1e10 if config.far < 0 else config.far
        share = dist.world_size  # each rank's part of the global batch
        self.target_samples = max(1, config.target_samples // share)
        self.min_rays, self.max_rays = max(1, config.min_rays // share), max(1, config.max_rays // share)
        self.rays_per_batch = round_rays(config.initial_rays / share)
        self.batches: RaySampler | None = None  # set by `sampler`; its batch size follows rays_per_batch
        self.candidates_per_ray = float(steps_to_cover(float(self.near), self.grid.outer_diagonal, self.step_size,
                                                       self.cone_angle, self.max_step))  # until measured
        self.candidates = self.candidate_buffer(self.rays_per_batch)
        self.readout = LaggedReadout()
        cuda = self.device.type == "cuda"
        self.optimizer = self.make_optimizer()
        # fp16 MLPs: without loss scaling the small density gradients of faint fog underflow in fp16 (the
        # MLP's own x128 is not enough at 2^18+ samples per batch), so floaters never get trained away.
        fp16 = cuda and config.field.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, growth_interval=500) if fp16 else None
        self.ema = ParameterEMA(self.field, config.weight_ema) if config.weight_ema > 0 else None
        # a multi-process step all-reduces the gradients on the host's schedule: not recorded as a graph
        graphs = cuda and config.cuda_graphs and dist.world_size == 1
        self.step_graph = GraphedStep(self._optimise, enabled=graphs)

    # --- pieces -----------------------------------------------------------------------------------------------

    def lr_holder(self, value: float) -> float | torch.Tensor:
        """A learning rate as this method's optimizer groups hold it: on CUDA a 0-dim device tensor (updated
        in place, so a captured CUDA-graph step reads the current value), elsewhere a float."""
        return torch.tensor(value, device=self.device) if self.device.type == "cuda" else value

    def make_optimizer(self) -> torch.optim.Optimizer:
        """`optimizer`: torch's fused Adam, or tcnn's; both take a device-tensor lr and a GradScaler inside a
        CUDA graph. Weight decay (L2) on the MLP weights only."""
        c, cuda = self.config, self.device.type == "cuda"
        if c.optimizer == "tcnn":
            adam = AdamConfig(learning_rate=c.lr, beta1=c.betas[0], beta2=c.betas[1], epsilon=c.eps,
                              l2_reg=c.weight_decay)
            optimizer = TcnnAdam(tcnn_param_groups(self.field), adam)
            for group in optimizer.param_groups:
                group["lr"] = self.lr_holder(c.lr)
            return optimizer
        groups = [
            {"params": self.field.encoding_parameters(), "weight_decay": 0.0},
            {"params": self.field.mlp_parameters(), "weight_decay": c.weight_decay},
        ]
        groups = [g for g in groups if g["params"]]
        return torch.optim.Adam(groups, lr=self.lr_holder(c.lr), betas=c.betas, eps=c.eps, fused=cuda,
                                capturable=cuda)

    def lr_at(self, step: int, progress: float) -> float:
        c = self.config
        return warmup_step_decay(step, progress, c.lr, c.warmup_steps, c.lr_decay, c.lr_milestones)

    def sampler(self, scene: SceneData, device: torch.device) -> RaySampler:
        """Random training rays (pixel centres or random points in pixels: `pixel_jitter`), as many per
        batch as `rays_per_batch`, which `update_batch_size` adapts."""
        self.batches = RaySampler(scene, device, self.rays_per_batch, pixel_jitter=self.config.pixel_jitter)
        return self.batches

    def occupancy_fn(self, x: torch.Tensor) -> torch.Tensor:
        """Opacity of one smallest step at world points (N, 3) -> (N,)."""
        return self.field.density(x)[0] * self.step_size

    def march(self, field: NerfField, origins: torch.Tensor, directions: torch.Tensor, jitter: bool,
              capacity: int | None = None, candidate_capacity: int | None = None) -> RaySamples:
        """Samples along rays (R, 3) through occupied cells; `field` prunes them past the early-stop point."""
        def sigma_fn(t_starts, t_ends, ray_indices):
            t = 0.5 * (t_starts + t_ends)[:, None]
            return field.density(origins[ray_indices] + directions[ray_indices] * t)[0]

        return march(
            origins, directions, self.grid, step_size=self.step_size, near=self.near, far=self.far,
            cone_angle=self.cone_angle, max_step=self.max_step, density_fn=sigma_fn,
            early_stop_eps=self.config.early_stop_eps, alpha_thre=self.alpha_thre, jitter=jitter,
            capacity=capacity, candidate_capacity=candidate_capacity, backend=self.config.backend,
        )

    def shade(self, field: NerfField, origins: torch.Tensor, directions: torch.Tensor, samples: RaySamples,
              background: torch.Tensor) -> dict[str, torch.Tensor]:
        """`field` at the samples, composited: composite()'s dict (rgb (R, 3), alpha (R,), depth (R,), ...)."""
        ri = samples.ray_indices
        t = (0.5 * (samples.t_starts + samples.t_ends))[:, None]
        sigma, rgb = field(origins[ri] + directions[ri] * t, directions[ri])
        return composite(sigma, rgb, samples.t_starts, samples.t_ends, ri, samples.offsets, background,
                         backend=self.config.backend)

    def render_rays(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor,
                    jitter: bool = False) -> dict[str, torch.Tensor]:
        """Colour, opacity and depth of rays with the render weights (call `refresh_render_field` first to
        see the latest step). origins, directions: (R, 3); background: (R, 3) or (3,).
        Returns composite()'s dict plus `n_samples` (int)."""
        samples = self.march(self.render_field, origins, directions, jitter)
        out = self.shade(self.render_field, origins, directions, samples, background)
        out["n_samples"] = len(samples)
        return out

    # --- the method interface ---------------------------------------------------------------------------------

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on a ray batch (see the module docstring). Returns 0-dim tensors; no host
        sync (on CUDA the returned tensors are overwritten by the next step: read them before it)."""
        c = self.config
        step = int(batch["step"])
        if step % c.occupancy.update_every == 0:
            self.grid.update(step, self.occupancy_fn, ema_decay=c.occupancy.ema_decay,
                             threshold=c.occupancy.threshold, warmup_steps=c.occupancy.warmup_steps)
            self.dist.broadcast_from_main([self.grid.occs, self.grid.binary])
        lr = self.lr_at(step, float(batch["progress"]))
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        inputs = {key: batch[key] for key in ("origins", "directions", "rgb", "background")}
        R = inputs["origins"].shape[0]
        if R != self.rays_per_batch or self.candidates < self.candidate_buffer(R, slack=1.0):
            self.candidates = self.candidate_buffer(R)  # a batch size of the caller's choosing
        out = self.step_graph((R, self.candidates), inputs)
        self.readout.push(out["counts"])
        self.update_batch_size(R)
        metrics = {key: out[key] for key in ("loss", "mse", "psnr", "samples_per_ray", "loss_scale") if key in out}
        return {**metrics, "lr": torch.tensor(lr)}

    def _optimise(self, shape: tuple[int, int], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """March, shade, loss, backward, optimizer step: the part of a step that may be a CUDA graph.
        shape: (rays, candidate buffer); inputs: origins, directions, rgb, background (R, 3) each."""
        c = self.config
        origins, directions, target = inputs["origins"], inputs["directions"], inputs["rgb"]
        samples = self.march(self.field, origins, directions, jitter=c.jitter, capacity=self.target_samples,
                             candidate_capacity=shape[1])
        out = self.shade(self.field, origins, directions, samples, inputs["background"])
        valid = samples.ray_valid().float()  # rays cut from the fixed buffer are left out of the loss
        n_valid = valid.sum().clamp_min(1.0)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if c.loss == "huber":
            per_ray = F.smooth_l1_loss(out["rgb"], target, reduction="none").mean(-1)
        else:
            per_ray = F.mse_loss(out["rgb"], target, reduction="none").mean(-1)
        loss = (per_ray * valid).sum() / n_valid
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.dist.average_gradients(params, valid.sum())  # every rank sees the same (scaled) gradients
            self.scaler.step(self.optimizer)  # skips the step if a gradient overflowed, then lowers the scale
            self.scaler.update()
        else:
            loss.backward()
            self.dist.average_gradients(params, valid.sum())  # the gradient of the loss over the global batch
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        with torch.no_grad():
            mse = ((out["rgb"] - target).square().mean(-1) * valid).sum() / n_valid
            counts = torch.stack([n_valid, samples.n_candidates.float(), samples.n_samples.float()])
        out = {"loss": loss.detach(), "mse": mse, "psnr": psnr_from_mse(mse), "counts": counts,
               "samples_per_ray": counts[2] / n_valid}
        if self.scaler is not None:  # GradScaler has no async getter; its device scale, copied for the logs
            out["loss_scale"] = self.scaler._scale.detach().clone()
        return out

    def candidate_buffer(self, n_rays: int, slack: float = 1.3) -> int:
        """Marcher buffer for n_rays rays: `slack` x the measured candidates per ray, in steps of 2^16
        entries, so that almost every ray fits."""
        block = 1 << 16
        return max(block, math.ceil(slack * n_rays * self.candidates_per_ray / block) * block)

    def update_batch_size(self, n_rays: int) -> None:
        """Size the next batch from the newest counts the GPU has handed back (a step or two old; never
        waits): rays for about target_samples samples after early stop, a candidate buffer 1.1-1.6x the
        measured candidates. Both change only when they leave those margins, so shapes (and graphs) stay."""
        latest = self.readout.poll()
        if latest is None:
            return
        n_valid, n_candidates, n_samples = latest
        if n_valid < 1:
            return
        self.candidates_per_ray = max(n_candidates / n_valid, 1.0)
        per_ray = max(n_samples / n_valid, 1e-3)
        ideal = round_rays(min(max(self.target_samples / per_ray, self.min_rays), self.max_rays))
        if abs(ideal - self.rays_per_batch) > 0.1 * self.rays_per_batch:
            self.set_rays_per_batch(ideal)
        R = self.rays_per_batch
        if not self.candidate_buffer(R, 1.1) <= self.candidates <= self.candidate_buffer(R, 1.6):
            self.candidates = self.candidate_buffer(R)

    def set_rays_per_batch(self, n_rays: int) -> None:
        self.rays_per_batch = n_rays
        if self.batches is not None:
            self.batches.batch_size = n_rays

    @torch.no_grad()
    def refresh_render_field(self) -> None:
        """Copy the evaluation weights (the `weight_ema` average, or the raw parameters) into the render
        field. The live parameters stay untouched, so rendering never races the training step's buffers."""
        if self.ema is not None:
            self.ema.copy_to(self.render_field)
        else:
            torch._foreach_copy_(list(self.render_field.parameters()), [p.detach() for p in self.field.parameters()])

    @torch.no_grad()
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images of C cameras of one size, with the averaged weights (`weight_ema`) held in a shadow copy.
        Returns rgb (C, H, W, 3), depth (C, H, W, 1), alpha (C, H, W, 1), float32 on the method's device.
        background: (3,) colour behind the scene, default white."""
        self.refresh_render_field()
        cameras = cameras.to(self.device)
        H, W = int(cameras.height[0]), int(cameras.width[0])
        if not (bool((cameras.height == H).all()) and bool((cameras.width == W).all())):
            raise ConfigError("render: all cameras of one call must have the same image size")
        bg = torch.ones(3, device=self.device) if background is None else torch.as_tensor(background).to(self.device).float()
        images = {"rgb": [], "depth": [], "alpha": []}
        for i in range(len(cameras)):
            origins, directions = cameras.image_rays(i)
            parts = {k: [] for k in images}
            for s in range(0, origins.shape[0], self.config.render_chunk):
                out = self.render_rays(origins[s : s + self.config.render_chunk], directions[s : s + self.config.render_chunk], bg)
                parts["rgb"].append(out["rgb"])
                parts["depth"].append(out["depth"][:, None])
                parts["alpha"].append(out["alpha"][:, None])
            for k, chunks in parts.items():
                images[k].append(torch.cat(chunks).reshape(H, W, -1))
        return {k: torch.stack(v) for k, v in images.items()}

    def state_dict(self) -> dict:
        state = {"field": self.field.state_dict(), "grid": self.grid.state_dict(),
                 "optimizer": self.optimizer.state_dict(),  # the global batch's rays: any rank count resumes
                 "rays_per_batch": self.rays_per_batch * self.dist.world_size}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["field_ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.grid.load_state_dict(state["grid"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # as `lr_holder` keeps it, whatever the checkpoint's device
            group["lr"] = self.lr_holder(float(group["lr"]))
        self.step_graph.reset()  # the loaded state lives in new tensors
        self.set_rays_per_batch(round_rays(int(state["rays_per_batch"]) / self.dist.world_size))
        self.candidates = self.candidate_buffer(self.rays_per_batch)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:  # checkpoints without an average start it from the loaded weights
            self.ema.load_state_dict(state.get("field_ema", dict(self.field.named_parameters())))


def round_rays(n: float) -> int:
    """Ray counts in multiples of 128 (fewer distinct batch shapes; 16-divisible kernel arguments)."""
    return max(128, int(n) // 128 * 128)

"""The method protocol: what every method (`nerf`, `neus`, `splat`, `head`, ...) offers the trainer, the
evaluators, the exporters and the viewer.

A method is one file in `ngraphics/methods/` and one row in `METHODS` (`ngraphics/methods/__init__.py`).
The trainer decides *when* (sample, step, evaluate, log, save, stop); the method decides *what* (what a
batch is, how a step learns, how an image is made). The trainer never asks what kind of method it runs.

    class MyMethod(Method):
        Config = MyConfig                                  # frozen dataclass of the `model:` keys

        def __init__(self, config, scene, device, dist=Dist()): ...
        def sampler(self, scene, device) -> Sampler: ...   # rays, whole views or image points
        def train_step(self, batch) -> dict: ...           # forward, backward, own optimizer step
        def render(self, cameras, background=None) -> dict: ...   # (C, H, W, k) images
        def state_dict(self) -> dict: ...
        def load_state_dict(self, state) -> None: ...

`docs/architecture.md` walks through a whole (tiny) method: the fake ones of `tests/test_method_protocol.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.distributed

from ngraphics.cameras import Cameras
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError

if TYPE_CHECKING:
    from ngraphics.export.mesh import Mesh


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the processes of one run (torch.distributed's rank and world size).

    rank: this process, 0 .. world_size - 1.
    world_size: processes training together (1: a single process, the default).
    Seeds are offset by rank (`seed`); only the main rank logs, evaluates, saves and serves the viewer.
    Each rank learns from its share of the global batch; methods average gradients through
    `average_gradients` (and copy randomly drawn shared state with `broadcast_from_main`) so that every
    rank takes the same optimizer step. `ngraphics.training.distributed` starts the process group.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ValueError(f"Dist: rank {self.rank} is not in 0 .. world_size - 1 = {self.world_size - 1}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, base: int) -> int:
        """The random seed of this rank for a run seeded with `base` (ranks draw different batches)."""
        return base + self.rank

    # Methods reach torch.distributed only through the helpers below (its default process group, set up by
    # `ngraphics.training.distributed`); with one process they do nothing.

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (a new tensor; `tensor` itself with one process). For a loss's
        global normaliser: the count of rays or samples in the whole batch. No host sync on CUDA."""
        if self.world_size == 1:
            return tensor
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @torch.no_grad()
    def average_gradients(self, parameters: Iterable[torch.Tensor],
                          weight: float | torch.Tensor = 1.0) -> None:
        """Replace each parameter's gradient by the average over the ranks, weighted by each rank's `weight`:
        g = sum_r w_r g_r / sum_r w_r, in place, as one all-reduce of one float32 buffer.

        parameters: the tensors the optimizer steps; a missing gradient (`None`, a rank whose batch never
            touched the tensor) counts as zeros and becomes the average. Dense tensors of any float dtype.
        weight: this rank's share, e.g. its count of rays in the loss when the loss is a mean over its own
            rays: the result is then the gradient of the mean over the global batch. A float or a 0-dim
            tensor (on the device: no host sync). Default 1: the plain mean.
        Hash-grid tables are averaged whole, so an entry that any rank touched gets its (nonzero) gradient
        on every rank and an untouched one stays exactly 0 (sparse updates, tcnn's Adam, stay correct)."""
        if self.world_size == 1:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        device = params[0].grad.device
        w = torch.as_tensor(weight, dtype=torch.float32, device=device).reshape(1)
        flat = self.sum_over_ranks(torch.cat([p.grad.reshape(-1).float() * w for p in params] + [w]))
        flat = flat[:-1] / flat[-1:].clamp_min(torch.finfo(torch.float32).tiny)
        for p, part in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(part.view_as(p.grad))

    @torch.no_grad()
    def broadcast_from_main(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite `tensors` in place with the main rank's values: state every rank must hold alike but
        draws at random, e.g. an occupancy grid refreshed at random points. bool tensors travel as uint8."""
        if self.world_size == 1:
            return
        for t in tensors:
            torch.distributed.broadcast(t.view(torch.uint8) if t.dtype == torch.bool else t, src=0)


SINGLE_PROCESS = Dist()


@dataclass(frozen=True)
class Gaussians:
    """A scene as 3D Gaussians, for a viewer that draws them itself (`Method.gaussians()`); float32 on the
    CPU, in the scene's frame (the one its cameras live in).

    centers: (N, 3) world units.
    covariances: (N, 3, 3) symmetric positive semi-definite, world units squared.
    rgb: (N, 3) in [0, 1], the view-independent colour.
    opacity: (N, 1) in [0, 1].
    """

    centers: torch.Tensor
    covariances: torch.Tensor
    rgb: torch.Tensor
    opacity: torch.Tensor


@runtime_checkable
class Sampler(Protocol):
    """What a training batch is, made on the device without waiting for it.

    unit: what `count` counts ("rays", "views", "points"); the trainer reports `<unit>/s`.
    sample(): the next batch, a dict of tensors (and plain values); the trainer adds `step` (int, from 0)
        and `progress` (float in [0, 1]: the larger of step / steps and elapsed / time budget).
    count(batch): how many units the batch holds (a host-side number: no GPU sync).
    state_dict() / load_state_dict(state): what a resumed run needs to draw the same batches as an
        uninterrupted one beyond the random state (e.g. the rest of a view sampler's epoch); {} if nothing.
    Ready-made samplers: `ngraphics.data.batches`.
    """

    unit: str

    def sample(self) -> dict[str, Any]: ...

    def count(self, batch: dict[str, Any]) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Method(ABC):
    """Base class of every method: the abstract methods are the protocol, the others have defaults.

    Class attributes:
        Config: frozen dataclass of the method's `model:` keys, with defaults and an optional
            `validate(where)`; the config loader builds it (unknown keys fail with the nearest name).
        exports: kinds `export(kind, path)` writes (e.g. ("mesh",), ("ply", "splat")); () = none.
        profile_categories: {category: (kernel-name substring, ...)} for the trainer's step profile.
        data_parallel: trains on several processes (`ngraphics train --gpus N`): each rank learns from its
            share of the batch and the method averages gradients through `Dist`, so that ranks stay equal.

    Construction: `cls(config, scene, device, dist)`; scene is the training split (it fixes the scene box,
    seed points, near plane), dist the process's place in a multi-process run.
    """

    Config: ClassVar[type]
    exports: ClassVar[tuple[str, ...]] = ()
    profile_categories: ClassVar[dict[str, tuple[str, ...]]] = {}
    data_parallel: ClassVar[bool] = False

    @abstractmethod
    def __init__(self, config: Any, scene: SceneData, device: torch.device, dist: Dist = SINGLE_PROCESS): ...

    @abstractmethod
    def sampler(self, scene: SceneData, device: torch.device) -> Sampler:
        """The sampler of training batches over `scene` (the training split), on `device`. Called once."""

    @abstractmethod
    def train_step(self, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        """One optimisation step: forward, backward, the method's own optimizer step, schedules (from
        batch["step"] and batch["progress"]) and, for splats, densification.

        Returns losses and statistics as floats or 0-dim tensors; the trainer reads them (a host sync)
        only when it logs, and shows `loss` and `psnr` on the progress bar."""

    @abstractmethod
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images of C cameras of one size: `rgb` (C, H, W, 3), and `depth`, `alpha` (C, H, W, 1) where the
        method has them (others such as `normal` may follow), float32 on the method's device.

        background: (3,) colour behind the scene (default: white). Renders with the method's evaluation
        weights (a parameter average, where it keeps one) held in a shadow copy: the live parameters are
        never swapped, so a render may come between any two steps. From another thread, hold the trainer's
        `lock` while rendering."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: parameters, optimizer and strategy state, the method's own counters;
        tensors and plain values only (checkpoints load with `weights_only=True`)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output; a state whose shapes do not fit this config is a ConfigError
        naming the entry."""

    def metrics(self, scene: SceneData, renders: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Evaluation numbers of the method's own beside PSNR/SSIM (Chamfer distance, mask IoU, ...).

        scene: the evaluation split; renders: `render()`'s output for each of its views, in order (on the
        CPU). Returns {name: value}; the default has none."""
        return {}

    def gaussians(self) -> Gaussians | None:
        """The scene as 3D Gaussians for a viewer to draw directly (viser's Gaussian-splat node), from the
        weights `render` uses; None (the default) for methods that are not made of Gaussians."""
        return None

    def surface_mesh(self, resolution: int) -> Mesh | None:
        """The scene's surface as a triangle mesh (`ngraphics.export.mesh.Mesh`, vertex colours where the method
        has them) in the scene's frame, extracted on a grid of `resolution` points a side, from the weights
        `render` uses; None (the default) for methods without a surface."""
        return None

    def export(self, kind: str, path: str | Path) -> Path:
        """Write the trained scene as `kind` (one of `exports`) to `path`; returns the written file."""
        kinds = ", ".join(self.exports) or "nothing"
        raise ConfigError(f"export {kind!r}: {type(self).__name__} exports {kinds}")


__all__ = ["SINGLE_PROCESS", "Dist", "Gaussians", "Method", "Sampler"]

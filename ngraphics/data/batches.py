"""Training batches as data: the ready-made samplers a method picks in `method.sampler(scene, device)`.

Each class satisfies `ngraphics.methods.base.Sampler`: `unit` names what it counts, `sample()` returns the next
batch (a dict), made on the device without waiting for it (no host sync, no host-to-device copy per step:
everything a batch is drawn from is moved to the device once, at construction), and `count(batch)` says how
many units the batch holds from tensor shapes alone (no GPU sync). Randomness comes from torch's global
generator (the trainer seeds it, offset by rank) unless a sampler takes a `seed`.

RaySampler, unit "rays": R random pixels of all training images (every pixel equally likely), as rays.
    origins (R, 3), directions (R, 3) unit: world-space rays through the pixel centre or a random point of
        the pixel (`pixel_jitter`), as `Cameras.rays`.
    rgb (R, 3): the pixel's colour; RGBA pixels composited over `background`: rgb * a + background * (1 - a).
    background (R, 3): per-ray random colours in [0, 1) when `scene.background == "random"`, else the
        constant colour (white or black), expanded.
    camera_index (R,) int64: the view each ray comes from.
    alpha (R,): the pixel's alpha (RGBA images only).
    mask (R,), depth (R,): the pixel's mask and z-depth (scenes with `masks` / `depths` only).
    time (R,): the view's timestamp (scenes whose cameras have `time` only).
    All float32 unless noted. `batch_size` (R) may be changed between steps (methods that adapt it).

ViewSampler, unit "views": one whole training view per batch; every view once per epoch, in a new random
order each epoch.
    camera_index: int, the view.
    cameras: that one camera (C = 1) on the device, `time` included when the scene has it.
    rgb (H, W, 3): the image, RGBA composited over `background`.
    background (3,): a random colour (scene.background == "random", new each batch) or the constant one.
    alpha (H, W) or None: the image's alpha for RGBA images.
    mask (H, W), depth (H, W): only when the scene has them.

PointSampler, unit "points": N random image points for image fitting and 2D methods.
    uv (N, 2) float32: uniform in [0, 1)^2; u along the width (u = x / W), v along the height.
    camera_index (N,) int64: uniform over views, weighted by pixel count.
    rgb (N, C) float32: bilinearly filtered target (`bilinear_lookup`: pixel centres at (i + 0.5) / W,
        clamp-to-edge), all C = 3 or 4 channels of the image (alpha not composited).

The trainer adds two keys to every batch before `method.train_step(batch)`: `step` (int, from 0) and
`progress` (float in [0, 1]: the larger of step / steps and elapsed / time budget).
"""

from __future__ import annotations

from typing import Any

import torch

from ngraphics.data.scene import BACKGROUND_COLORS, SceneData
from ngraphics.errors import ConfigError


def bilinear_lookup(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly filtered image lookup with clamp-to-edge.

    Args:
        image: (H, W, C) float32.
        uv: (N, 2) float32 in [0, 1]; u = x / width, v = y / height; pixel (i, j) has its centre at
            ((j + 0.5) / W, (i + 0.5) / H).
    Returns: (N, C) float32. Not differentiable w.r.t. uv (the target is data).
    """
    H, W, C = image.shape
    return _bilinear_rows(image.reshape(H * W, C), 0, W, H, uv)


def _bilinear_rows(table: torch.Tensor, base, width, height, uv: torch.Tensor) -> torch.Tensor:
    """`bilinear_lookup` in images stored row-major one after another in one table.

    table: all pixels. (P, C); base: first row of each point's image in the table, an int or (N,) int64;
    width, height: each point's image size, ints or (N,) int64; uv: (N, 2) in [0, 1]. Returns (N, C) float32.
    """
    x = uv[:, 0] * width - 0.5
    y = uv[:, 1] * height - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0f)[:, None], (y - y0f)[:, None]
    x0, x1 = _clamp(x0f.long(), width), _clamp(x0f.long() + 1, width)  # clamp-to-edge
    y0, y1 = _clamp(y0f.long(), height), _clamp(y0f.long() + 1, height)

    def at(yy, xx):
        return table[base + yy * width + xx].float()

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def _clamp(i: torch.Tensor, size) -> torch.Tensor:
    """i clamped to 0 .. size - 1; size an int or a tensor like i."""
    i = i.clamp(min=0)
    return i.clamp(max=size - 1) if isinstance(size, int) else torch.minimum(i, size - 1)


class _PixelTable:
    """Every pixel of every view in one row-major table on the device, with each view's first row and size."""

    def __init__(self, images: list[torch.Tensor], widths: torch.Tensor, heights: torch.Tensor,
                 device: torch.device, dtype: torch.dtype):
        self.pixels = torch.cat([image.reshape(-1, image.shape[-1]) for image in images]).to(device, dtype)
        counts = [image.shape[0] * image.shape[1] for image in images]
        self.total = sum(counts)  # a host int, fixed at construction
        self.offsets = torch.tensor([0, *counts], device=device).cumsum(0)  # (C + 1,) int64
        self.widths, self.heights = widths.to(device), heights.to(device)

    def random_pixels(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n table rows, uniform over all pixels, and the view of each. (n,), (n,) int64."""
        index = torch.randint(0, self.total, (n,), device=self.pixels.device, generator=generator)
        return index, torch.searchsorted(self.offsets[1:], index, right=True)


def _background_color(scene: SceneData, device: torch.device) -> torch.Tensor | None:
    """The constant background on the device (3,), or None for random backgrounds."""
    if scene.background == "random":
        return None
    return torch.tensor(BACKGROUND_COLORS[scene.background], dtype=torch.float32, device=device)


def _check_batch_size(batch_size: int, who: str) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{who}: batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class RaySampler:
    """Random pixels of all training images, as rays with their targets (see the module docstring).

    Args:
        scene: the training split; its `background` is read once, here.
        device: where the pixel table and the batches live (the table is fp16 on CUDA, float32 elsewhere).
        batch_size: rays per batch (R); a mutable attribute, read at each `sample()`.
        pixel_jitter: rays through a uniformly random point of their pixel (True) or through its centre.
    """

    unit = "rays"

    def __init__(self, scene: SceneData, device: torch.device, batch_size: int, pixel_jitter: bool = True):
        self.device = torch.device(device)
        self.batch_size = _check_batch_size(batch_size, "RaySampler")
        self.pixel_jitter = pixel_jitter
        self.cameras = scene.cameras.to(self.device)
        self.alpha = scene.has_alpha
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        # one table: rgb(a), then the mask as one more channel (both in [0, 1], so fp16 is close enough)
        images = scene.images
        if scene.masks is not None:
            images = [torch.cat([image, mask[..., None]], -1) for image, mask in zip(images, scene.masks)]
        self.table = _PixelTable(images, self.cameras.width, self.cameras.height, self.device, dtype)
        self.has_mask = scene.masks is not None
        self.depths = None  # world units: kept float32
        if scene.depths is not None:
            self.depths = torch.cat([d.reshape(-1) for d in scene.depths]).to(self.device, torch.float32)
        self.background = _background_color(scene, self.device)

    def sample(self) -> dict[str, torch.Tensor]:
        R = self.batch_size
        index, cam = self.table.random_pixels(R)
        local = index - self.table.offsets[cam]
        width = self.table.widths[cam]
        uv = torch.stack([local % width, local // width], -1).to(torch.float32)
        uv = uv + (torch.rand_like(uv) if self.pixel_jitter else 0.5)  # a random point in the pixel, or its centre
        origins, directions = self.cameras.rays(cam, uv)
        values = self.table.pixels[index].float()
        if self.background is None:
            background = torch.rand(R, 3, device=self.device)
        else:
            background = self.background.expand(R, 3)
        rgb = values[:, :3]
        batch = {"origins": origins, "directions": directions, "rgb": rgb, "background": background,
                 "camera_index": cam}
        if self.alpha:
            alpha = values[:, 3]
            batch["rgb"] = rgb * alpha[:, None] + background * (1 - alpha[:, None])
            batch["alpha"] = alpha
        if self.has_mask:
            batch["mask"] = values[:, -1]
        if self.depths is not None:
            batch["depth"] = self.depths[index]
        if self.cameras.time is not None:
            batch["time"] = self.cameras.time[cam]
        return batch

    def count(self, batch: dict[str, Any]) -> int:
        return batch["origins"].shape[0]

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond torch's random state (the trainer's checkpoint holds that)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ViewSampler:
    """Whole training views, every view once per epoch in a new random order (see the module docstring).

    Args:
        scene: the training split; its images, masks, depths and cameras are moved to `device` once, here.
        device: where the views and the batches live (float32).
    """

    unit = "views"

    def __init__(self, scene: SceneData, device: torch.device):
        self.device = torch.device(device)
        cameras = scene.cameras.to(self.device)
        self.cameras = [cameras[i] for i in range(len(scene))]
        self.images = [image.to(self.device, torch.float32) for image in scene.images]
        self.masks = None if scene.masks is None else [m.to(self.device, torch.float32) for m in scene.masks]
        self.depths = None if scene.depths is None else [d.to(self.device, torch.float32) for d in scene.depths]
        self.background = _background_color(scene, self.device)
        self.order: list[int] = []  # views left in this epoch (popped from the end)

    def sample(self) -> dict[str, Any]:
        if not self.order:
            self.order = torch.randperm(len(self.images)).tolist()  # CPU generator: no device sync
        i = self.order.pop()
        image = self.images[i]
        background = torch.rand(3, device=self.device) if self.background is None else self.background
        alpha = image[..., 3] if image.shape[-1] == 4 else None
        rgb = image[..., :3]
        if alpha is not None:
            rgb = rgb * alpha[..., None] + background * (1 - alpha[..., None])
        batch = {"camera_index": i, "cameras": self.cameras[i], "rgb": rgb, "alpha": alpha,
                 "background": background}
        if self.masks is not None:
            batch["mask"] = self.masks[i]
        if self.depths is not None:
            batch["depth"] = self.depths[i]
        return batch

    def count(self, batch: dict[str, Any]) -> int:
        return 1

    def state_dict(self) -> dict[str, Any]:
        """The views left in this epoch, so a resumed run visits the same views in the same order."""
        return {"order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = [int(i) for i in state.get("order", [])]
        if any(not 0 <= i < len(self.images) for i in order):
            raise ValueError(f"ViewSampler: saved order {order} names views outside 0..{len(self.images) - 1}")
        self.order = order


class PointSampler:
    """Random image points with bilinearly filtered targets (see the module docstring).

    Args:
        scene: the images to fit (their cameras are not used).
        device: where the images (float32) and the batches live.
        batch_size: points per batch (N); a mutable attribute, read at each `sample()`.
        seed: seeds a generator of the sampler's own (on `device`); None: torch's global generator.
    """

    unit = "points"

    def __init__(self, scene: SceneData, device: torch.device, batch_size: int, seed: int | None = None):
        self.device = torch.device(device)
        self.batch_size = _check_batch_size(batch_size, "PointSampler")
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(seed)
        self.table = _PixelTable(scene.images, scene.cameras.width, scene.cameras.height, self.device,
                                 torch.float32)

    def sample(self) -> dict[str, torch.Tensor]:
        N = self.batch_size
        _, cam = self.table.random_pixels(N, self.generator)  # a view, weighted by its pixel count
        uv = torch.rand(N, 2, device=self.device, generator=self.generator)
        rgb = _bilinear_rows(self.table.pixels, self.table.offsets[cam], self.table.widths[cam],
                             self.table.heights[cam], uv)
        return {"uv": uv, "camera_index": cam, "rgb": rgb}

    def count(self, batch: dict[str, Any]) -> int:
        return batch["uv"].shape[0]

    def state_dict(self) -> dict[str, Any]:
        """The sampler's own generator state, when it has one (else torch's, which the trainer saves)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


__all__ = ["PointSampler", "RaySampler", "ViewSampler", "bilinear_lookup"]

"""Evaluation of any method on a split: PSNR and SSIM against the images, the method's own metrics, renders.

    result = evaluate_method(method, scene, "white", spp=8, out_dir=Path("runs/x/eval"))
    result["psnr"], result["ssim"], result["per_view"], result["chamfer"]  # the last if the method offers it
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ngraphics.data.scene import SceneData
from ngraphics.io.images import write_image
from ngraphics.methods.base import Method
from ngraphics.metrics.image import psnr, ssim
from ngraphics.rendering.supersampling import render_supersampled

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def evaluate_method(method: Method, scene: SceneData, background: str, views: list[int] | None = None,
                    out_dir: Path | None = None, spp: int = 1, progress: bool = False) -> dict:
    """Render eval views with `method` and compare them with the images composited over `background`.

    Args:
        method: any method (`ngraphics.methods.base.Method`).
        scene: the evaluation split.
        background: "white" or "black": behind RGBA test images and the renders.
        views: eval view indices; None = all.
        out_dir: if given, write `<name>.png` renders there (and `<name>_depth.png`, normalised, and
            `<name>_normal.png` for methods that render normals).
        spp: rays per pixel, averaged over sub-pixel offsets (see `render_supersampled`).
        progress: show a progress bar over the views.
    Returns: {"psnr", "ssim", "n_views", "per_view": [{"name", "psnr", "ssim"}, ...], **method.metrics(...)},
        means over views.
    """
    color = BACKGROUNDS[background]
    views = list(range(len(scene))) if views is None else views
    per_view, renders = [], []
    # PSNR and SSIM are computed where the render is (the GPU on CUDA); the PNGs are written by a thread
    # (OpenCV's encoder releases the GIL) while the next view renders.
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        for i in tqdm(views, desc="evaluating", unit="view", disable=not progress, leave=False):
            with torch.no_grad():
                out = render_supersampled(method, scene.cameras[i], torch.tensor(color), spp)
            out = {k: v[0].float() for k, v in out.items()}
            pred = out["rgb"].clamp(0, 1)
            target = scene.rgb_on(i, color).to(pred.device)
            per_view.append({"name": scene.names[i], "psnr": psnr(pred, target), "ssim": ssim(pred, target)})
            out = {k: v.cpu() for k, v in out.items()}
            renders.append(out)
            if out_dir is not None:
                written.append(writer.submit(_write_view, Path(out_dir), scene.names[i], out))
        for job in written:
            job.result()  # a failed write raises here
    subset = scene if len(views) == len(scene) and views == list(range(len(scene))) else _subset(scene, views)
    extra = method.metrics(subset, renders)
    return {
        "psnr": sum(v["psnr"] for v in per_view) / max(len(per_view), 1),
        "ssim": sum(v["ssim"] for v in per_view) / max(len(per_view), 1),
        "n_views": len(per_view),
        **extra,
        "per_view": per_view,
    }


def _write_view(out_dir: Path, name: str, out: dict[str, torch.Tensor]) -> None:
    """`<name>.png` (rgb), `<name>_depth.png` (normalised) and `<name>_normal.png` ((n + 1) / 2, surface
    methods) of one view's render outputs (CPU tensors (H, W, k))."""
    write_image(out_dir / f"{name}.png", out["rgb"].clamp(0, 1))
    if "depth" in out:
        write_image(out_dir / f"{name}_depth.png", normalise_depth(out["depth"][..., 0]))
    if "normal" in out:
        write_image(out_dir / f"{name}_normal.png", normal_picture(out["normal"]))


def normal_picture(normal: torch.Tensor) -> torch.Tensor:
    """Unit normals (H, W, 3) in [-1, 1] as a picture in [0, 1]: (n + 1) / 2."""
    return ((normal + 1) * 0.5).clamp(0, 1)


def normalise_depth(depth: torch.Tensor) -> torch.Tensor:
    """Depth (H, W) scaled to [0, 1] over its positive values (0 stays 0), for a PNG."""
    valid = depth[depth > 0]
    if valid.numel() == 0:
        return torch.zeros_like(depth)
    lo, hi = valid.min(), valid.max()
    return ((depth - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1) * (depth > 0)


def _subset(scene: SceneData, views: list[int]) -> SceneData:
    """The views of `scene` that were rendered, in order (what `Method.metrics` compares against)."""
    index = torch.tensor(views, dtype=torch.int64)
    pick = (lambda items: None if items is None else [items[i] for i in views])
    return replace(scene, cameras=scene.cameras[index], images=pick(scene.images), names=pick(scene.names),
                   masks=pick(scene.masks), depths=pick(scene.depths))


__all__ = ["BACKGROUNDS", "evaluate_method", "normal_picture", "normalise_depth"]

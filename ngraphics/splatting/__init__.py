"""3D Gaussian splatting: a differentiable tile rasterizer in three stages, each a plain-torch reference that
runs on CPU (`project_gaussians_torch` → `intersect_tiles` → `rasterize_to_pixels_torch`); projection and blending are
also Triton kernels on CUDA (through `ngraphics.ops`, ops "splat_project" and "splat_rasterize"; the tile
sort stays torch). `rasterization` runs the three.
"""

from __future__ import annotations

import torch

from ngraphics import ops
from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError
from ngraphics.splatting.project import project_gaussians_torch, quat_scale_to_covar
from ngraphics.splatting.rasterize import rasterize_to_pixels_torch
from ngraphics.splatting.sh import sh_to_color
from ngraphics.splatting.tiles import intersect_tiles

TILE_SIZE = 16  # pixels per tile side (3DGS, gsplat)


def rasterization(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                  colors: torch.Tensor, cameras: Cameras, features: torch.Tensor | None = None,
                  sh_degree: int | None = None, backgrounds: torch.Tensor | None = None,
                  mip_filter: bool = False, near_plane: float = 0.01, backend: str = "auto") -> dict:
    """Render N 3D Gaussians into C cameras: project (EWA, 0.3 px low-pass) → bin into 16x16 tiles and sort
    by depth → blend front to back with early stop.

    Args:
        means: centres, world units. (N, 3) float32
        quats: rotations as quaternions (w, x, y, z), any norm > 0. (N, 4)
        scales: axis standard deviations (not log-scales), world units. (N, 3) > 0
        opacities: in [0, 1] (not logits). (N,)
        colors: RGB (or any D channels) per Gaussian (N, D); or, with `sh_degree`, spherical-harmonics
            coefficients (N, K, 3), K >= (sh_degree + 1)^2, turned into colours per camera as 3DGS does
            (view direction from the camera centre, + 0.5, clamped at 0).
        cameras: C cameras of one image size (OpenCV axes, c2w, K in pixels; pixel (u, v) covers [u, u + 1)).
        features: extra per-Gaussian channels blended exactly like colour, e.g. feature embeddings. (N, F),
            any F >= 1. Default None.
        sh_degree: SH bands to use (0..3) when `colors` holds SH coefficients. Default None (plain colours).
        backgrounds: colour behind the Gaussians, rgb += (1 - alpha) background. (C, D) or (D,). Default None
            (black). Features and depth get no background.
        mip_filter: Mip-Splatting's 2D filter: opacities times sqrt(det Sigma2d / det(Sigma2d + 0.3 I)), so
            the low-pass keeps each splat's integral. Default False (3DGS's plain dilation).
        near_plane: Gaussians with camera depth below this are culled, world units. Default 0.01.
        backend: "auto" | "torch" | "triton" for the projection and blending stages (see `ngraphics.ops`).
            Default "auto".
    Returns: dict
        rgb: blended colours. (C, H, W, D)
        features: blended features. (C, H, W, F); only when `features` is given
        depth: expected depth sum_i w_i z_i / alpha (0 where alpha = 0), world units along +z. (C, H, W, 1)
        alpha: accumulated opacity 1 - T_final. (C, H, W, 1)
        means2d: projected centres (C, N, 2) and radii (C, N) int32: for densification (call
            `means2d.retain_grad()` for screen-space gradients).
    Differentiable w.r.t. means, quats, scales, opacities, colors (or SH coefficients), features and
    backgrounds; not w.r.t. cameras.

    Example (CPU, < 1 s):
        >>> cams = Cameras(torch.eye(4)[None], torch.tensor([[[32., 0, 16.5], [0, 32, 16.5], [0, 0, 1]]]),
        ...                torch.tensor([32]), torch.tensor([32]))
        >>> out = rasterization(torch.tensor([[0., 0, 2]]), torch.tensor([[1., 0, 0, 0]]),
        ...                     torch.full((1, 3), 0.1), torch.tensor([0.9]), torch.ones(1, 3), cams)
        >>> out["rgb"].shape, round(out["alpha"].max().item(), 3)
        (torch.Size([1, 32, 32, 3]), 0.9)
    """
    N = means.shape[0]
    assert means.shape == (N, 3) and quats.shape == (N, 4) and scales.shape == (N, 3), \
        (means.shape, quats.shape, scales.shape)
    assert opacities.shape == (N,) and colors.shape[0] == N, (opacities.shape, colors.shape)
    ops.check_backend(backend)
    C = len(cameras)
    width, height = int(cameras.width[0]), int(cameras.height[0])
    if not (bool((cameras.width == width).all()) and bool((cameras.height == height).all())):
        raise ConfigError(f"rasterization: cameras must share one image size, got widths "
                          f"{cameras.width.tolist()} and heights {cameras.height.tolist()}; render them apart")
    if bool((cameras.distortion != 0).any()):
        raise ConfigError("rasterization: cameras have lens distortion; splats are projected with pinhole "
                          "cameras only: undistort the images first (distortion zeros)")
    c2w = cameras.c2w.to(means)
    viewmats = torch.linalg.inv(c2w)  # (C, 4, 4): world to camera
    project, raster = project_gaussians_torch, rasterize_to_pixels_torch
    if ops.use_kernel("splat_project", backend, means.device):
        project = ops.kernel("splat_project")
    if ops.use_kernel("splat_rasterize", backend, means.device):
        raster = ops.kernel("splat_rasterize")
    proj = project(means, quats, scales, opacities, viewmats, cameras.K.to(means), width, height,
                   near=near_plane, mip_filter=mip_filter)
    if sh_degree is not None:
        assert colors.dim() == 3 and colors.shape[2] == 3, f"SH colours must be (N, K, 3), got {colors.shape}"
        dirs = means[None, :, :] - c2w[:, None, :3, 3]  # (C, N, 3)
        values = sh_to_color(sh_degree, colors[None].expand(C, *colors.shape), dirs)  # (C, N, 3)
    else:
        assert colors.dim() == 2, f"colors must be (N, D) (or (N, K, 3) with sh_degree), got {colors.shape}"
        values = colors[None].expand(C, *colors.shape)  # (C, N, D)
    D = values.shape[2]
    parts = [values]
    if features is not None:
        assert features.dim() == 2 and features.shape[0] == N, f"features must be (N, F), not {features.shape}"
        parts.append(features[None].expand(C, *features.shape))
    parts.append(proj["depths"][..., None])  # (C, N, 1)
    channels = torch.cat(parts, dim=2)  # (C, N, D + F + 1): every channel blends the same way
    isect = intersect_tiles(proj["means2d"], proj["radii"], proj["depths"], TILE_SIZE, width, height)
    image, alpha = raster(proj["means2d"], proj["conics"], channels, proj["opacities"], width, height,
                          TILE_SIZE, isect["flatten_ids"], isect["offsets"])  # (C, H, W, D+F+1), (C, H, W, 1)
    rgb = image[..., :D]
    if backgrounds is not None:
        rgb = rgb + (1.0 - alpha) * backgrounds.reshape(-1, 1, 1, D)
    out = {"rgb": rgb, "depth": image[..., -1:] / alpha.clamp_min(1e-10), "alpha": alpha,
           "means2d": proj["means2d"], "radii": proj["radii"]}
    if features is not None:
        out["features"] = image[..., D:-1]
    return out


__all__ = ["TILE_SIZE", "intersect_tiles", "project_gaussians_torch", "quat_scale_to_covar", "rasterization",
           "rasterize_to_pixels_torch", "sh_to_color"]

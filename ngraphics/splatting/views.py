"""Which cameras see which Gaussians, and cameras placed around Gaussians (for a splat file with no dataset).

    counts = gaussians_in_view(means, quats, scales, cameras)    # (C,): Gaussians on each camera's image
    ring = cameras_around(means)                                 # 8 cameras circling the bulk of the points

A Gaussian is "in view" of a camera when the projection stage keeps it (radius > 0): in front of the near
plane and its 3-sigma box overlaps the image (`project_gaussians_torch`, the same test the rasterizer uses).
"""

from __future__ import annotations

import math

import torch

from ngraphics.cameras import Cameras
from ngraphics.splatting.project import project_gaussians_torch


@torch.no_grad()
def gaussians_in_view(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, cameras: Cameras,
                      near_plane: float = 0.01) -> torch.Tensor:
    """How many of N Gaussians each of C cameras sees (cameras of any image sizes).

    Args:
        means: centres, world units. (N, 3)
        quats: rotations (w, x, y, z), any norm > 0. (N, 4)
        scales: axis standard deviations (not log), world units. (N, 3) > 0
        cameras: C cameras, OpenCV axes; moved to the Gaussians' device.
        near_plane: Gaussians closer than this along +z are not seen, world units. Default 0.01.
    Returns: (C,) int64 counts, on the CPU.
    Cameras of one size are projected together, about 2^20 camera-Gaussian pairs at a time.
    """
    cameras = cameras.to(means.device)
    viewmats = torch.linalg.inv(cameras.c2w.to(means))  # (C, 4, 4)
    ones = torch.ones(len(means), dtype=means.dtype, device=means.device)
    counts = torch.zeros(len(cameras), dtype=torch.int64)
    sizes = torch.stack([cameras.width, cameras.height], 1).cpu()
    step = max(1, (1 << 20) // max(len(means), 1))
    for width, height in torch.unique(sizes, dim=0).tolist():
        index = ((sizes[:, 0] == width) & (sizes[:, 1] == height)).nonzero().squeeze(1)
        for chunk in index.split(step):
            proj = project_gaussians_torch(means, quats, scales, ones, viewmats[chunk.to(means.device)],
                                           cameras.K[chunk.to(means.device)].to(means), width, height,
                                           near=near_plane)
            counts[chunk] = (proj["radii"] > 0).sum(1).cpu()
    return counts


def cameras_around(points: torch.Tensor, n_cameras: int = 8, width: int = 640, height: int = 480,
                   fov_x_degrees: float = 60.0, up: tuple[float, float, float] = (0.0, -1.0, 0.0),
                   elevation_degrees: float = 20.0) -> Cameras:
    """A ring of pinhole cameras looking at the bulk of `points` from far enough to frame it.

    The centre is the points' median; the radius r the 90 % quantile of their distance from it (outliers,
    such as a trained scene's far-away background Gaussians, do not push the cameras away). The cameras sit
    on a circle about `up` through the centre, `elevation_degrees` above its plane, at distance
    1.1 r / sin(fov / 2) from the centre (the sphere of radius r fits the narrower field of view), and look
    at the centre with `up` to the top of the image. `ngraphics.rendering.camera_paths.orbit` of these
    cameras circles the same way.

    Args:
        points: where the scene is, e.g. Gaussian means. (N, 3), N >= 1
        n_cameras: cameras on the ring. Default 8.
        width, height: image size, pixels. Default 640 x 480.
        fov_x_degrees: horizontal field of view. Default 60.
        up: the world's up direction (3DGS/COLMAP files: -y, the default; Blender scenes: +z).
        elevation_degrees: height of the ring above the centre, seen from the centre. Default 20.
    Returns: Cameras (n_cameras), OpenCV axes, on the CPU.
    """
    points = points.detach().double().cpu()
    center = points.median(0).values
    radius = float((points - center).norm(dim=1).quantile(0.9)) if len(points) > 1 else 0.0
    radius = max(radius, 1e-3)
    upv = torch.tensor(up, dtype=torch.float64)
    upv = upv / upv.norm()
    fx = 0.5 * width / math.tan(math.radians(fov_x_degrees) / 2)
    half_fov = min(math.atan(0.5 * width / fx), math.atan(0.5 * height / fx))
    distance = 1.1 * radius / math.sin(half_fov)
    seed = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(seed @ upv)) > 0.9:
        seed = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    e1 = seed - (seed @ upv) * upv
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(upv, e1)
    angles = torch.arange(n_cameras, dtype=torch.float64) * (2 * math.pi / n_cameras)
    elevation = math.radians(elevation_degrees)
    positions = center + distance * (math.cos(elevation) * (torch.cos(angles)[:, None] * e1
                                                            + torch.sin(angles)[:, None] * e2)
                                     + math.sin(elevation) * upv)
    z = center - positions
    z = z / z.norm(dim=1, keepdim=True)
    x = torch.linalg.cross(z, upv.expand_as(z))
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n_cameras, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, positions
    K = torch.tensor([[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(c2w.float(), K.expand(n_cameras, 3, 3).clone(), torch.full((n_cameras,), width),
                   torch.full((n_cameras,), height))


__all__ = ["cameras_around", "gaussians_in_view"]

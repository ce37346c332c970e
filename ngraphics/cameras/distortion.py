"""Lens distortion, OpenCV's Brown-Conrady model with coefficients (k1, k2, p1, p2, k3).

For normalised camera coordinates (x, y) = (X / Z, Y / Z), with r^2 = x^2 + y^2:

    radial = 1 + k1 r^2 + k2 r^4 + k3 r^6
    x_d = x radial + 2 p1 x y + p2 (r^2 + 2 x^2)
    y_d = y radial + p1 (r^2 + 2 y^2) + 2 p2 x y
    u = fx x_d + cx,  v = fy y_d + cy

COLMAP's SIMPLE_RADIAL (k), RADIAL (k1, k2) and OPENCV (k1, k2, p1, p2) models and instant-ngp's k1, k2, p1,
p2 are special cases. Loaders undistort the images once (`undistort_image`) so that every `Cameras` the rest of
the library sees is a plain pinhole with zero distortion.

Pixel convention: ngraphics (like COLMAP and instant-ngp) puts the centre of pixel (i, j) at (i + 0.5, j + 0.5);
OpenCV's remap puts it at (i, j). `undistort_image` converts between the two, so K is given and returned in the
ngraphics convention.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def distort(xy: torch.Tensor, distortion: torch.Tensor) -> torch.Tensor:
    """Apply distortion to normalised camera coordinates.

    Args:
        xy: undistorted normalised coordinates (X/Z, Y/Z). (N, 2) float
        distortion: (k1, k2, p1, p2, k3). (5,) float
    Returns: distorted normalised coordinates. (N, 2), same dtype.
    """
    k1, k2, p1, p2, k3 = (distortion[i] for i in range(5))
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


def undistort(xy_distorted: torch.Tensor, distortion: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Invert `distort` by fixed-point iteration (as OpenCV's undistortPoints does). (N, 2) -> (N, 2).

    Converges for the mild distortion of real lenses (|k1| r^2 well below 1); check with `distort` if unsure.
    """
    k1, k2, p1, p2, k3 = (distortion[i] for i in range(5))
    xy = xy_distorted.clone()
    for _ in range(iterations):
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        xy = torch.stack([(xy_distorted[:, 0] - dx) / radial, (xy_distorted[:, 1] - dy) / radial], dim=-1)
    return xy


def project_points(points_cam: torch.Tensor, K: torch.Tensor, distortion: torch.Tensor | None = None) -> torch.Tensor:
    """Project camera-space points (OpenCV axes, z forward) to pixels, with optional distortion.

    Args:
        points_cam: points in camera coordinates. (N, 3) float, z > 0
        K: intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], ngraphics pixel convention. (3, 3)
        distortion: (k1, k2, p1, p2, k3) or None for a pinhole. (5,)
    Returns: pixel positions (u, v). (N, 2)
    """
    xy = points_cam[:, :2] / points_cam[:, 2:3]
    if distortion is not None and bool(torch.any(distortion != 0)):
        xy = distort(xy, distortion.to(xy.dtype))
    K = K.to(xy.dtype)
    return torch.stack([K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]], dim=-1)


def undistort_image(image: np.ndarray, K: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """Resample a distorted photo into the pinhole camera with the same K (same size, bilinear).

    Output pixel p looks up the input at distort(K^-1 p); lookups that fall outside the input repeat its
    border pixels (with mild distortion that only touches a few edge pixels).

    Args:
        image: (H, W, C) or (H, W) uint8 or float32; RGBA is resampled premultiplied.
        K: intrinsics in the ngraphics pixel convention. (3, 3)
        distortion: (k1, k2, p1, p2, k3). (5,)
    Returns: the undistorted image, same shape and dtype.
    """
    distortion = np.asarray(distortion, dtype=np.float64).reshape(5)
    if not np.any(distortion):
        return image
    H, W = image.shape[:2]
    K_cv = np.asarray(K, dtype=np.float64).copy()
    K_cv[0, 2] -= 0.5  # OpenCV: pixel centres at integers
    K_cv[1, 2] -= 0.5
    map_x, map_y = cv2.initUndistortRectifyMap(K_cv, distortion, None, K_cv, (W, H), cv2.CV_32FC1)
    premultiply = image.ndim == 3 and image.shape[2] == 4
    x = image
    if premultiply:
        x = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        x[:, :, :3] *= x[:, :, 3:]
    y = cv2.remap(x, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if y.ndim == 2 and image.ndim == 3:
        y = y[:, :, None]
    if premultiply:
        alpha = y[:, :, 3:]
        y[:, :, :3] = np.where(alpha > 1e-6, y[:, :, :3] / np.maximum(alpha, 1e-6), 0.0)
        if image.dtype == np.uint8:
            y = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return y

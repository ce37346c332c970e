"""Stage 1 of the splatting rasterizer: EWA projection of 3D Gaussians into C cameras.

`project_gaussians_torch` is the PyTorch reference (plain torch ops, any dtype, differentiable end to end; the
gsplat twin is `_fully_fused_projection` in `gsplat/cuda/_torch_impl.py`). Per camera (w2c = [R | t], K):

    Sigma    = Rq S S^T Rq^T                        3D covariance, Rq from the unit quaternion (w, x, y, z),
                                                    S = diag(scales)
    p_c      = R mu + t,   Sigma_c = R Sigma R^T    in camera space (OpenCV: x right, y down, z forward)
    mean2d   = (fx x / z + cx, fy y / z + cy)       pixels; pixel (u, v) covers [u, u + 1) x [v, v + 1)
    J        = [[fx / z, 0, -fx x' / z^2],          the perspective Jacobian (EWA splatting, Zwicker 2002),
                [0, fy / z, -fy y' / z^2]]          x' = z clamp(x / z, -cx / fx - 0.3 tan_x, (W - cx) / fx
                                                    + 0.3 tan_x), tan_x = W / (2 fx) (likewise y'): 3DGS's
                                                    guard against huge Jacobians far off screen
    Sigma2d  = J Sigma_c J^T + eps2d I              eps2d = 0.3: the low-pass that keeps every splat at least
                                                    about a pixel wide (3DGS)
    conic    = Sigma2d^-1 as (a, b, c) of [[a, b], [b, c]]
    radius   = ceil(3 sqrt(lambda_max(Sigma2d)))    3 sigma, in pixels

With `mip_filter` (Mip-Splatting's 2D filter, gsplat's antialiased mode) the low-pass keeps the splat's
integral: opacities are multiplied by sqrt(det(J Sigma_c J^T) / det(Sigma2d)).

A Gaussian is culled (radius 0; its other outputs are then meaningless but finite) when its depth is
outside (near, far), Sigma2d is not positive definite, or its 3-sigma box misses the image. Radii are not
differentiable; everything else is.
"""

from __future__ import annotations

import torch


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """3D covariances R S S^T R^T of Gaussians.

    Args:
        quats: rotations as quaternions (w, x, y, z), normalised here. (N, 4)
        scales: standard deviations along the rotated axes, world units. (N, 3) > 0
    Returns: (N, 3, 3) symmetric positive semi-definite.
    """
    assert quats.dim() == 2 and quats.shape[1] == 4, quats.shape
    assert scales.shape == (quats.shape[0], 3), scales.shape
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)  # (N,) each
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1)
    R = R.view(-1, 3, 3)  # (N, 3, 3)
    M = R * scales[:, None, :]  # (N, 3, 3): R S
    return M @ M.transpose(1, 2)  # (N, 3, 3)


def project_gaussians_torch(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                      viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, eps2d: float = 0.3,
                      near: float = 0.01, far: float = 1e10, mip_filter: bool = False) -> dict:
    """EWA-project N Gaussians into C cameras (see the module doc for the maths).

    Args:
        means: centres, world units. (N, 3)
        quats: rotations (w, x, y, z), any norm > 0. (N, 4)
        scales: axis standard deviations, world units. (N, 3) > 0
        opacities: in [0, 1]. (N,)
        viewmats: world-to-camera transforms, OpenCV axes. (C, 4, 4)
        Ks: pixel intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. (C, 3, 3)
        width, height: image size in pixels (the same for all C cameras).
        eps2d: the screen-space low-pass added to the 2D covariance, pixels^2. Default 0.3.
        near, far: depth range kept, world units along +z. Defaults 0.01, 1e10.
        mip_filter: scale opacities to keep each splat's integral (Mip-Splatting's 2D filter). Default False.
    Returns: dict
        means2d: projected centres, pixels. (C, N, 2)
        conics: inverse 2D covariances (a, b, c) of [[a, b], [b, c]], 1 / pixels^2. (C, N, 3)
        depths: camera-space z. (C, N)
        radii: 3-sigma radii in pixels, 0 for culled Gaussians. (C, N) int32, not differentiable
        opacities: per-camera opacities (times the mip compensation with mip_filter). (C, N)
    """
    N, C = means.shape[0], viewmats.shape[0]
    assert means.shape == (N, 3) and quats.shape == (N, 4) and scales.shape == (N, 3), \
        (means.shape, quats.shape, scales.shape)
    assert opacities.shape == (N,), opacities.shape
    assert viewmats.shape == (C, 4, 4) and Ks.shape == (C, 3, 3), (viewmats.shape, Ks.shape)
    covars = quat_scale_to_covar(quats, scales)  # (N, 3, 3)
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # (C, 3, 3), (C, 3)
    p_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # (C, N, 3)
    cov_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # (C, N, 3, 3)
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # (C, 1)
    x, y, z = p_c.unbind(-1)  # (C, N) each
    z_safe = torch.where((z > near) & (z < far), z, torch.ones_like(z))  # culled ones stay finite
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy  # (C, 1)
    xc = z_safe * torch.clamp(x / z_safe, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)  # (C,N)
    yc = z_safe * torch.clamp(y / z_safe, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)  # (C,N)
    zero = torch.zeros_like(z_safe)
    J = torch.stack([fx / z_safe, zero, -fx * xc / z_safe**2,
                     zero, fy / z_safe, -fy * yc / z_safe**2], dim=-1).view(C, N, 2, 3)  # (C, N, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # (C, N, 2, 2)
    a0, b, c0 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]  # (C, N) each
    det0 = a0 * c0 - b * b  # (C, N): before the low-pass
    a, c = a0 + eps2d, c0 + eps2d
    det = a * c - b * b  # (C, N)
    valid = (det > 0) & (z > near) & (z < far)  # (C, N)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # (C, N, 3)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # (C, N, 2)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.01))  # (C, N): the larger eigenvalue
        radii = torch.ceil(3.0 * torch.sqrt(lam)).to(torch.int32)  # (C, N)
        u, v = means2d.unbind(-1)
        on_image = (u + radii > 0) & (u - radii < width) & (v + radii > 0) & (v - radii < height)
        radii = torch.where(valid & on_image, radii, torch.zeros_like(radii))  # (C, N)
    opac = opacities[None, :].expand(C, N)  # (C, N)
    if mip_filter:
        opac = opac * torch.sqrt((det0 / det_safe).clamp_min(0.0))  # (C, N)
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii, "opacities": opac}


__all__ = ["project_gaussians_torch", "quat_scale_to_covar"]

"""Image quality metrics: PSNR and SSIM (no LPIPS: it needs downloaded network weights).

SSIM follows Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1`: an 11x11 Gaussian window, K1 = 0.01, K2 = 0.03, the SSIM map
averaged over pixels whose window lies inside the image and over channels. The test checks it against skimage.

On CUDA the SSIM map's blurs run in float64: cuDNN runs float32 convolutions in TF32 by default (a 10-bit
mantissa), and var = E[x^2] - E[x]^2 then cancels to noise larger than K2^2 = 9e-4 wherever the image is flat,
which turned 3DGS's D-SSIM loss into noise that made splat training on lego diverge (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Peak signal-to-noise ratio, peak 1: -10 log10(mean((clip(pred) - clip(target))^2)) in float64.

    Both images are clipped to [0, 1] first, so the number measures what a display shows: a NeRF's or an
    image fit's prediction may overshoot, and an HDR (linear, unbounded) target is compared on its [0, 1]
    range (fit-image's EXR targets). Targets already in [0, 1] (the trainer's views) are unchanged by it.

    Args:
        pred, target: images of one shape, e.g. (H, W, 3); torch tensors (any device; `target` may also be an
            array when `pred` is a tensor, and vice versa) or numpy arrays; any float or integer dtype, values
            on the [0, 1] scale (uint8 code values must be divided by 255 first).
    Returns: dB as a Python float; inf for identical images.
    Raises: ValueError when the shapes differ.
    Example: psnr(np.zeros((4, 4, 1)), np.full((4, 4, 1), 0.1)) == 20.0 (up to rounding).
    """
    pred_t = torch.as_tensor(pred)
    device = pred_t.device if isinstance(pred, torch.Tensor) else None
    target_t = torch.as_tensor(target, device=device)
    if pred_t.shape != target_t.shape:
        raise ValueError(f"psnr: pred and target must have one shape, got {tuple(pred_t.shape)} and "
                         f"{tuple(target_t.shape)}")
    diff = pred_t.to(target_t.device, torch.float64).clamp(0, 1) - target_t.to(torch.float64).clamp(0, 1)
    mse = float((diff * diff).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR of an MSE tensor (no sync): -10 log10(mse)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The SSIM map of two (H, W, C) images over the 'valid' region, differentiable, in the inputs' dtype.

    Returns: (C, 1, H - window + 1, W - window + 1); its mean is the SSIM (`ssim`), 1 - its mean the D-SSIM
    loss of 3DGS. No clamping: callers decide the range. The blurs run in float64 on CUDA (no TF32: module doc)."""
    work = torch.float64 if pred.is_cuda else pred.dtype
    x = pred.permute(2, 0, 1)[:, None].to(work)  # (C, 1, H, W)
    y = target.permute(2, 0, 1)[:, None].to(work)
    g = _gaussian_window(window, sigma, dtype=work, device=pred.device)

    def blur(img: torch.Tensor) -> torch.Tensor:  # separable, 'valid' region only
        img = F.conv2d(img, g.view(1, 1, -1, 1))
        return F.conv2d(img, g.view(1, 1, 1, -1))

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    out = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return out.to(pred.dtype)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity of two images in [0, 1], computed in float64.

    Args:
        pred, target: (H, W, C) float images, H and W >= window (pred is clamped to [0, 1]).
    Returns: mean SSIM in [-1, 1], 1 for identical images.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"ssim: expected two (H, W, C) images of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    return float(ssim_map(pred.clamp(0, 1).double(), target.double(), window=window, sigma=sigma).mean())

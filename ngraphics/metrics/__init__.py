"""Quality metrics that methods and the trainer share: image metrics (PSNR, SSIM) in `image.py`.

Sits below `ngraphics.methods`, so a method's own `metrics(...)` can use them.
"""

from ngraphics.metrics.image import psnr, psnr_from_mse, ssim, ssim_map

__all__ = ["psnr", "psnr_from_mse", "ssim", "ssim_map"]

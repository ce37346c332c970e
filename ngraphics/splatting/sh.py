"""View-dependent colour from real spherical harmonics up to degree 3, as 3D Gaussian splatting evaluates it.

Per Gaussian, K = (degree + 1)^2 coefficients per colour channel; with d the unit direction from the camera
centre to the Gaussian's mean (x, y, z = d):

    rgb = max(0, 0.5 + sum_{l <= degree} sum_m C_lm Y_lm(d) sh_lm)

The constants and sign conventions are those of 3DGS (`utils/sh_utils.py`, `eval_sh`) and gsplat
(`_torch_impl.py`, `_eval_sh_bases_fast`'s coefficients): the band-1 basis is (-C1 y, C1 z, -C1 x).
The 0.5 offset makes zero coefficients render mid-grey; the clamp keeps colours non-negative (its gradient
is 0 where it clamps). Plain torch, any dtype, differentiable w.r.t. coefficients and directions.
"""

from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The (degree + 1)^2 basis values Y_lm(d) in 3DGS order and sign.

    Args:
        degree: 0..3.
        dirs: unit directions. (..., 3)
    Returns: (..., (degree + 1)^2), dirs' dtype.
    """
    assert 0 <= degree <= 3, f"sh degree must be 0..3, got {degree}"
    assert dirs.shape[-1] == 3, dirs.shape
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz,
                SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_to_color(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour of SH coefficients seen along `dirs`: max(0, 0.5 + sum_k Y_k(d) sh_k), 3DGS's convention.

    Args:
        degree: bands used, 0..3; coefficients past (degree + 1)^2 are ignored (progressive SH training).
        sh: coefficients. (..., K, D) with K >= (degree + 1)^2 (D = 3 for RGB).
        dirs: viewing directions, camera centre to Gaussian; normalised here. (..., 3)
    Returns: colours. (..., D), >= 0.
    """
    k = (degree + 1) ** 2
    assert sh.dim() >= 2 and sh.shape[-2] >= k, f"sh must be (..., K >= {k}, D), got {tuple(sh.shape)}"
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(degree, dirs)  # (..., k)
    return (torch.einsum("...k,...kd->...d", bases, sh[..., :k, :]) + 0.5).clamp_min(0.0)  # (..., D)


__all__ = ["SH_C0", "SH_C1", "SH_C2", "SH_C3", "sh_bases", "sh_to_color"]

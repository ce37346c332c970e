"""Parity of `ngraphics.kernels.splat_rasterize.rasterize_to_pixels_triton` with the torch reference
`ngraphics.splatting.rasterize.rasterize_to_pixels`, forward and every gradient, on fresh random scenes.

Two levels: the rasterize stage alone (gradients to means2d, conics, colours, opacities) and the whole
`rasterization` (backend "triton" vs "torch": gradients to means, quats, scales, opacities, colours or SH
coefficients, features), both with random cotangents on every output.

- CPU: the kernels under the Triton interpreter (in this process, `harness.interpreted_kernels`) on a few
  Gaussians and ~16-40 pixel images; the scenes include clamped alphas (opacity > 0.99), pixels that stop
  early, partial tiles, 1, 4 and 25+ channels (several channel blocks). Errors max |a - b| / max |b|:
  outputs 1e-5, gradients 1e-4 (both sides fp32; the kernel recovers T by division in the backward).
- CUDA (`gpu`): 1e4+ Gaussians at 256 x 256 with 0 and 64 feature channels, and gsplat's garden input on
  both paths. Errors as norms ||a - b|| / ||b|| (a handful of alphas at the 1/255 or T = 1e-4 thresholds
  may fall on different sides in the two paths' fp32 arithmetic, which max-norms would magnify): outputs
  1e-4, gradients 1e-3.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from harness import interpreted_kernels, interpreter_only, rel_err, rel_norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_splatting import load_garden, look_at_cameras, random_scene  # noqa: E402

from ngraphics import ops  # noqa: E402
from ngraphics.splatting import intersect_tiles, project_gaussians, rasterization, rasterize_to_pixels  # noqa: E402

(ksplat,), INTERPRETED = interpreted_kernels("splat_rasterize")
CPU_TOL = {"out": 1e-5, "grad": 1e-4}
GPU_TOL = {"out": 1e-4, "grad": 1e-3}


def _stage_inputs(scene: dict, cams, D: int, gen: torch.Generator, device) -> tuple[list, dict, int, int]:
    W, H = int(cams.width[0]), int(cams.height[0])
    proj = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                             torch.linalg.inv(cams.c2w), cams.K, W, H)
    isect = intersect_tiles(proj["means2d"], proj["radii"], proj["depths"], 16, W, H)
    C, N = proj["depths"].shape
    colors = torch.rand(C, N, D, generator=gen).to(device)
    inputs = [proj["means2d"].detach(), proj["conics"].detach(), colors, proj["opacities"].detach()]
    return inputs, isect, W, H


def check_stage(scene: dict, cams, D: int, gen: torch.Generator, err, tol: dict) -> dict:
    """rasterize_to_pixels: triton vs torch, outputs and the four input gradients."""
    dev = scene["means"].device
    inputs, isect, W, H = _stage_inputs(scene, cams, D, gen, dev)
    results = []
    cot = None
    for fn in (ksplat.rasterize_to_pixels_triton, rasterize_to_pixels):
        ins = [x.clone().requires_grad_(True) for x in inputs]
        img, alpha = fn(*ins, W, H, 16, isect["flatten_ids"], isect["offsets"])
        if cot is None:
            cot = (torch.randn(img.shape, generator=gen).to(dev), torch.randn(alpha.shape, generator=gen).to(dev))
        grads = torch.autograd.grad((img * cot[0]).sum() + (alpha * cot[1]).sum(), ins)
        results.append((img.detach(), alpha.detach()) + grads)
    names = ("image", "alpha", "d_means2d", "d_conics", "d_colors", "d_opacities")
    errs = {n: err(a, b) for n, a, b in zip(names, *results)}
    assert results[1][1].max() > 0.5, "the scene should cover some pixels"
    for n in names:
        assert errs[n] <= tol["out" if n in ("image", "alpha") else "grad"], (n, errs)
    return errs


def check_pipeline(scene: dict, cams, gen: torch.Generator, err, tol: dict, features=None, sh_degree=None,
                   mip_filter=False) -> dict:
    """rasterization(backend="triton") vs backend="torch": every output and every input gradient."""
    dev = scene["means"].device
    keys = ("means", "quats", "scales", "opacities", "colors")
    results, cot = [], None
    for backend in ("triton", "torch"):
        ins = {k: scene[k].clone().requires_grad_(True) for k in keys}
        feats = None if features is None else features.clone().requires_grad_(True)
        out = rasterization(**ins, cameras=cams, features=feats, sh_degree=sh_degree, mip_filter=mip_filter,
                            backend=backend)
        names = [k for k in ("rgb", "features", "alpha", "depth") if k in out]
        if cot is None:
            cot = {k: torch.randn(out[k].shape, generator=gen).to(dev) for k in names}
            cot["depth"] = cot["depth"] * (out["alpha"] > 1e-2)  # depth / alpha is ill-conditioned near 0
        leaves = list(ins.values()) + ([] if feats is None else [feats])
        grads = torch.autograd.grad(sum((out[k] * cot[k]).sum() for k in names), leaves)
        results.append([out[k].detach() for k in names] + list(grads))
        assert out["alpha"].max() > 0.5, "the scene should cover some pixels"
    labels = names + ["d_" + k for k in keys] + ([] if features is None else ["d_features"])
    errs = {n: err(a, b) for n, a, b in zip(labels, *results)}
    for n in labels:
        assert errs[n] <= tol["grad" if n.startswith("d_") else "out"], (n, errs)
    return errs


def _hard_scene(N: int, gen: torch.Generator) -> dict:
    """Random splats in front of an opaque core: 4 wide splats of opacity 0.999 near the origin (the cameras
    look at it), so alphas clamp at 0.99 near their centres and the pixels behind them stop early."""
    scene = random_scene(N, gen=gen)
    scene["means"][:4] *= 0.1
    scene["scales"][:4] = 0.4
    scene["opacities"][:4] = 0.999
    return scene


# ---------------------------------------------------------------------------------------------------------
# CPU, under the interpreter


@interpreter_only(INTERPRETED)
@pytest.mark.parametrize("D", [1, 4, 37])
def test_stage_parity_interpreted(D):
    gen = torch.Generator().manual_seed(10 + D)
    check_stage(_hard_scene(12, gen), look_at_cameras(2, 21, 18), D, gen, rel_err, CPU_TOL)


@interpreter_only(INTERPRETED)
@pytest.mark.parametrize("F,mip", [(None, False), (1, True), (24, False)])
def test_pipeline_parity_interpreted(F, mip):
    assert ops.kernel("splat_rasterize") is ksplat.rasterize_to_pixels_triton  # not a stale compiled one
    gen = torch.Generator().manual_seed(20 + (F or 0))
    scene = _hard_scene(10, gen)
    features = None if F is None else torch.randn(10, F, generator=gen)
    check_pipeline(scene, look_at_cameras(2, 17, 16), gen, rel_err, CPU_TOL, features=features, mip_filter=mip)


@interpreter_only(INTERPRETED)
def test_pipeline_parity_sh_interpreted():
    gen = torch.Generator().manual_seed(30)
    scene = _hard_scene(8, gen)
    scene["colors"] = torch.randn(8, 16, 3, generator=gen) * 0.3
    check_pipeline(scene, look_at_cameras(1, 16, 16), gen, rel_err, CPU_TOL, sh_degree=3)


@interpreter_only(INTERPRETED)
def test_nothing_visible_interpreted():
    """Every Gaussian behind the camera: zero images, zero gradients (no intersections at all)."""
    scene = random_scene(5)
    scene["means"][:, 2] = -5.0
    cams = look_at_cameras(1, 16, 16)
    cams.c2w[0] = torch.eye(4)
    out = rasterization(**scene, cameras=cams, backend="triton")
    assert out["rgb"].abs().max() == 0 and out["alpha"].abs().max() == 0


# ---------------------------------------------------------------------------------------------------------
# CUDA


def _gpu_scene(N: int, gen: torch.Generator) -> tuple[dict, object]:
    """N splats of a few pixels in a 256 x 256 view, a tenth with opacity > 0.99."""
    scene = random_scene(N, gen=gen, extent=1.2, scale=(0.004, 0.04))
    scene["opacities"][: N // 10] = 0.995
    return {k: v.cuda() for k, v in scene.items()}, look_at_cameras(2, 256, 256).to("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [4, 67])
def test_stage_parity_gpu(D):
    gen = torch.Generator().manual_seed(40 + D)
    scene, cams = _gpu_scene(10_000, gen)
    check_stage(scene, cams, D, gen, rel_norm, GPU_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("F,mip", [(None, False), (64, True)])
def test_pipeline_parity_gpu(F, mip):
    gen = torch.Generator().manual_seed(50 + (F or 0))
    scene, cams = _gpu_scene(20_000, gen)
    features = None if F is None else torch.randn(20_000, F, generator=gen).cuda()
    check_pipeline(scene, cams, gen, rel_norm, GPU_TOL, features=features, mip_filter=mip)


@pytest.mark.gpu
def test_garden_renders_on_both_paths_gpu():
    gen = torch.Generator().manual_seed(60)
    scene, cams = load_garden(device="cuda", scale=1.0)
    errs = check_pipeline(scene, cams, gen, rel_norm, GPU_TOL)
    out = rasterization(**scene, cameras=cams, backend="triton")
    assert out["rgb"].shape == (3, 420, 648, 3) and torch.isfinite(out["rgb"]).all()
    assert (out["alpha"] > 0.5).float().mean() > 0.3, errs
    assert math.isfinite(sum(errs.values()))

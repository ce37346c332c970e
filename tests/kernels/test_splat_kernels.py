"""Parity of the splatting kernels with their torch references, forward and every gradient, on fresh random
scenes: `ngraphics.kernels.splat_project.project_gaussians_triton` vs `project_gaussians_torch` and
`ngraphics.kernels.splat_rasterize.rasterize_to_pixels_triton` vs `rasterize_to_pixels_torch`.

Three levels: the project stage alone (gradients to means, quats, scales, opacities; Gaussians around and
behind the cameras, some far off screen where the Jacobian's clamp acts, with and without the mip filter),
the rasterize stage alone (gradients to means2d, conics, colours, opacities) and the whole `rasterization`
(backend "triton" vs "torch": both kernels; gradients to means, quats, scales, opacities, colours or SH
coefficients, features), all with random cotangents on every output.

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
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import REPO, interpreted_kernels, interpreter_only, rel_err, rel_norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_splatting import load_garden, look_at_cameras, random_scene  # noqa: E402

from ngraphics import ops  # noqa: E402
from ngraphics.splatting import (  # noqa: E402
    intersect_tiles, project_gaussians_torch, rasterization, rasterize_to_pixels_torch)

(ksplat, kproject), INTERPRETED = interpreted_kernels("splat_rasterize", "splat_project")
CPU_TOL = {"out": 1e-5, "grad": 1e-4}
GPU_TOL = {"out": 1e-4, "grad": 1e-3}


def _stage_inputs(scene: dict, cams, D: int, gen: torch.Generator, device) -> tuple[list, dict, int, int]:
    W, H = int(cams.width[0]), int(cams.height[0])
    proj = project_gaussians_torch(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                             torch.linalg.inv(cams.c2w), cams.K, W, H)
    isect = intersect_tiles(proj["means2d"], proj["radii"], proj["depths"], 16, W, H)
    C, N = proj["depths"].shape
    colors = torch.rand(C, N, D, generator=gen).to(device)
    inputs = [proj["means2d"].detach(), proj["conics"].detach(), colors, proj["opacities"].detach()]
    return inputs, isect, W, H


def check_stage(scene: dict, cams, D: int, gen: torch.Generator, err, tol: dict) -> dict:
    """rasterize_to_pixels_torch: triton vs torch, outputs and the four input gradients."""
    dev = scene["means"].device
    inputs, isect, W, H = _stage_inputs(scene, cams, D, gen, dev)
    results = []
    cot = None
    for fn in (ksplat.rasterize_to_pixels_triton, rasterize_to_pixels_torch):
        ins = [x.clone().requires_grad_(True) for x in inputs]
        img, alpha = fn(*ins, W, H, 16, isect["flatten_ids"], isect["offsets"])
        if cot is None:
            cot = (torch.randn(img.shape, generator=gen).to(dev),
                   torch.randn(alpha.shape, generator=gen).to(dev))
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


def check_project(scene: dict, cams, gen: torch.Generator, err, tol: dict, mip_filter: bool) -> dict:
    """project_gaussians_torch: triton vs torch, outputs and the four input gradients. Culled Gaussians (behind the
    camera) get a depth cotangent only (the kernel's documented contract; the rasterizer never reads them)."""
    dev = scene["means"].device
    W, H = int(cams.width[0]), int(cams.height[0])
    viewmats = torch.linalg.inv(cams.c2w)
    keys, outs = ("means", "quats", "scales", "opacities"), ("means2d", "conics", "depths", "opacities")
    results, cot = [], None
    for fn in (kproject.project_gaussians_triton, project_gaussians_torch):
        ins = [scene[k].clone().requires_grad_(True) for k in keys]
        out = fn(*ins, viewmats, cams.K, W, H, mip_filter=mip_filter)
        if cot is None:
            valid = (out["depths"] > 0.01).float()  # (C, N)
            assert (out["radii"] == 0).float().mean() > 0.1
            cot = {k: torch.randn(out[k].shape, generator=gen).to(dev) for k in outs}
            for k in ("means2d", "conics", "opacities"):
                cot[k] = cot[k] * valid.reshape(valid.shape + (1,) * (cot[k].dim() - 2))
        grads = torch.autograd.grad(sum((out[k] * cot[k]).sum() for k in outs), ins)
        results.append([out[k].detach() for k in outs] + list(grads) + [out["radii"]])
    names = list(outs) + ["d_" + k for k in keys]
    errs = {n: err(a, b) for n, a, b in zip(names, *results)}
    # radii = ceil(3 sqrt(lambda)) in fp32 on both sides, summed in different orders: one may land across an
    # integer (or the image edge) about once per 1e6 Gaussians; more than that is a bug
    errs["radii_mismatch"] = (results[0][-1] != results[1][-1]).float().mean().item()
    assert errs["radii_mismatch"] <= 1e-4, errs
    for n in names:
        assert errs[n] <= tol["grad" if n.startswith("d_") else "out"], (n, errs)
    return errs


def _wide_scene(N: int, gen: torch.Generator) -> dict:
    """Gaussians spread over [-5, 5]^3 around cameras at distance ~4: in view, off screen, behind."""
    return random_scene(N, gen=gen, extent=5.0, scale=(0.05, 0.5))


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
@pytest.mark.parametrize("mip", [False, True])
def test_project_parity_interpreted(mip):
    gen = torch.Generator().manual_seed(5 + mip)
    check_project(_wide_scene(200, gen), look_at_cameras(3, 40, 30), gen, rel_err, CPU_TOL, mip)


@interpreter_only(INTERPRETED)
def test_project_clamped_jacobian_interpreted():
    """Only Gaussians beyond 1.15x the half field of view (x / z, y / z outside the clamp, where J's x', y'
    stop following the mean): their gradients are not swamped by those of Gaussians in view."""
    gen = torch.Generator().manual_seed(8)
    scene = random_scene(64, gen=gen, scale=(0.2, 0.6))
    z = 2 + 2 * torch.rand(64, generator=gen)
    side = torch.where(torch.rand(64, 2, generator=gen) < 0.5, -1.0, 1.0)
    scene["means"] = torch.cat([side * z[:, None] * (0.9 + torch.rand(64, 2, generator=gen)), z[:, None]], 1)
    cams = look_at_cameras(1, 40, 30)
    cams.c2w[0] = torch.eye(4)
    check_project(scene, cams, gen, rel_err, CPU_TOL, False)


@interpreter_only(INTERPRETED)
@pytest.mark.parametrize("D", [1, 4, 37])
def test_stage_parity_interpreted(D):
    gen = torch.Generator().manual_seed(10 + D)
    check_stage(_hard_scene(12, gen), look_at_cameras(2, 21, 18), D, gen, rel_err, CPU_TOL)


@interpreter_only(INTERPRETED)
@pytest.mark.parametrize("pixels", [32, 64])
def test_stage_parity_sub_tile_programs_interpreted(pixels, monkeypatch):
    """Programs that take part of a tile (PIX < 256) give the same image and gradients."""
    monkeypatch.setitem(ksplat.TUNING, "pixels", pixels)
    gen = torch.Generator().manual_seed(20 + pixels)
    check_stage(_hard_scene(12, gen), look_at_cameras(2, 21, 18), 4, gen, rel_err, CPU_TOL)


@interpreter_only(INTERPRETED)
@pytest.mark.parametrize("F,mip", [(None, False), (1, True), (24, False)])
def test_pipeline_parity_interpreted(F, mip):
    assert ops.kernel("splat_rasterize") is ksplat.rasterize_to_pixels_triton  # not stale compiled ones
    assert ops.kernel("splat_project") is kproject.project_gaussians_triton
    gen = torch.Generator().manual_seed(20 + (F or 0))
    scene = _hard_scene(10, gen)
    features = None if F is None else torch.randn(10, F, generator=gen)
    cams = look_at_cameras(2, 17, 16)
    check_pipeline(scene, cams, gen, rel_err, CPU_TOL, features=features, mip_filter=mip)


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
# Compilation for sm_90 without a device (the interpreter skips the frontend checks a real launch makes:
# constexpr globals, loop-carried types, tuple returns). In a child process without TRITON_INTERPRET.

SM90_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ngraphics.kernels import splat_project as P, splat_rasterize as R
f, i64, i32 = "*fp32", "*i64", "*i32"
cases = [
    (R._rasterize_fwd_kernel, "TILE CB PIX", [{"TILE": 16, "CB": cb, "PIX": p} for cb in (1, 4, 16) for p in (32, 256)]),
    (R._rasterize_bwd_kernel, "TILE CB PIX", [{"TILE": 16, "CB": cb, "PIX": p} for cb in (1, 16) for p in (32, 256)]),
    (P._project_fwd_kernel, "MIP BLOCK", [{"MIP": m, "BLOCK": 128} for m in (False, True)]),
    (P._project_bwd_kernel, "MIP BLOCK", [{"MIP": m, "BLOCK": 128} for m in (False, True)]),
]
for fn, consts, variants in cases:
    sig = {}
    for name in fn.arg_names:
        if name in consts.split():
            sig[name] = "constexpr"
        elif name in ("ids_ptr", "offsets_ptr"):
            sig[name] = i64
        elif name in ("last_ptr", "rad_ptr"):
            sig[name] = i32
        elif name.endswith("_ptr"):
            sig[name] = f
        elif name in ("eps2d", "near", "far"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    for v in variants:
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=v), target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------
# CUDA


def _gpu_scene(N: int, gen: torch.Generator) -> tuple[dict, object]:
    """N splats of a few pixels in a 256 x 256 view, a tenth with opacity > 0.99."""
    scene = random_scene(N, gen=gen, extent=1.2, scale=(0.004, 0.04))
    scene["opacities"][: N // 10] = 0.995
    return {k: v.cuda() for k, v in scene.items()}, look_at_cameras(2, 256, 256).to("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("mip", [False, True])
def test_project_parity_gpu(mip):
    gen = torch.Generator().manual_seed(70 + mip)
    scene = {k: v.cuda() for k, v in _wide_scene(100_000, gen).items()}
    check_project(scene, look_at_cameras(4, 256, 256).to("cuda"), gen, rel_norm, GPU_TOL, mip)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [4, 67])
@pytest.mark.parametrize("pixels,warps", [(256, 4), (32, 1), (64, 2)])
def test_stage_parity_gpu(D, pixels, warps, monkeypatch):
    monkeypatch.setitem(ksplat.TUNING, "pixels", pixels)
    monkeypatch.setitem(ksplat.TUNING, "warps", warps)
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

"""The splatting reference (`ngraphics.splatting`, backend="torch") against independent oracles:

- a float64 per-pixel loop in numpy: the 3D covariance from an axis-angle rotation (not the quaternion
  matrix), pushed through the perspective Jacobian, inverted with numpy, 3-sigma radius from eigvalsh, the
  tiles a Gaussian reaches, then each pixel walks the Gaussians in depth order with 3DGS's rules;
- closed forms: one isotropic Gaussian facing the camera (peak = opacity, 1/e radius, depth, mip factor);
- tiny-cuda-nn's spherical harmonics (`ngraphics.encodings`) for the SH bases;
- gradcheck in float64 of the whole differentiable chain on a tiny scene;
- linearity for extra feature channels (1 and 64): features = colours @ M render to rgb @ M;
- gsplat's golden input (test_garden.npz) renders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import need_data

from ngraphics import ops
from ngraphics.cameras import Cameras
from ngraphics.encodings.spherical_harmonics import spherical_harmonics_encode
from ngraphics.errors import ConfigError
from ngraphics.splatting import (TILE_SIZE, intersect_tiles, project_gaussians_torch, rasterization,
                                 rasterize_to_pixels_torch)
from ngraphics.splatting.sh import sh_bases, sh_to_color


def look_at_cameras(C: int, width: int, height: int, dtype=torch.float32, gen=None) -> Cameras:
    """C cameras around the origin at distance ~4, looking at it (OpenCV axes), focal ~ width."""
    c2ws = []
    for i in range(C):
        angle = 0.4 * i + 0.1
        eye = torch.tensor([4 * math.sin(angle), 0.3 * i - 0.2, -4 * math.cos(angle)], dtype=torch.float64)
        forward = -eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
        c2ws.append(c2w)
    K = torch.tensor([[1.1 * width, 0, width / 2 + 0.3], [0, 1.05 * width, height / 2 - 0.2], [0, 0, 1]],
                     dtype=torch.float64)
    return Cameras(torch.stack(c2ws).to(dtype), K.expand(C, 3, 3).to(dtype).clone(),
                   torch.full((C,), width), torch.full((C,), height))


def random_scene(N: int, dtype=torch.float32, gen=None, extent=1.0, scale=(0.05, 0.3)) -> dict:
    gen = gen or torch.Generator().manual_seed(1)
    return {"means": ((torch.rand(N, 3, generator=gen) * 2 - 1) * extent).to(dtype),
            "quats": torch.randn(N, 4, generator=gen).to(dtype),
            "scales": (scale[0] + (scale[1] - scale[0]) * torch.rand(N, 3, generator=gen)).to(dtype),
            "opacities": (0.2 + 0.75 * torch.rand(N, generator=gen)).to(dtype),
            "colors": torch.rand(N, 3, generator=gen).to(dtype)}


# ---------------------------------------------------------------------------------------------------------
# The float64 per-pixel oracle


def _rotation_axis_angle(q: np.ndarray) -> np.ndarray:
    """Rotation of unit quaternion (w, x, y, z) through Rodrigues' formula (axis-angle), not the quaternion
    matrix the reference uses."""
    q = q / np.linalg.norm(q)
    angle = 2 * math.atan2(np.linalg.norm(q[1:]), q[0])
    axis = q[1:] / max(np.linalg.norm(q[1:]), 1e-300)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def oracle_render(scene: dict, cams: Cameras, mip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (C, H, W, 3), alpha (C, H, W), depth (C, H, W)) in float64, pixel by pixel."""
    means, quats, scales = (scene[k].double().numpy() for k in ("means", "quats", "scales"))
    opac, cols = scene["opacities"].double().numpy(), scene["colors"].double().numpy()
    W, H = int(cams.width[0]), int(cams.height[0])
    C, N = len(cams), means.shape[0]
    rgb, alpha, depth = np.zeros((C, H, W, 3)), np.zeros((C, H, W)), np.zeros((C, H, W))
    for c in range(C):
        w2c = np.linalg.inv(cams.c2w[c].double().numpy())
        fx, fy, cx, cy = (cams.K[c].double().numpy()[i, j] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
        splats = []
        for n in range(N):
            Rq = _rotation_axis_angle(quats[n])
            cov = Rq @ np.diag(scales[n] ** 2) @ Rq.T
            p = w2c[:3, :3] @ means[n] + w2c[:3, 3]
            if not 0.01 < p[2] < 1e10:
                continue
            lim = [(cx / fx + 0.15 * W / fx, (W - cx) / fx + 0.15 * W / fx),
                   (cy / fy + 0.15 * H / fy, (H - cy) / fy + 0.15 * H / fy)]
            xc = p[2] * min(max(p[0] / p[2], -lim[0][0]), lim[0][1])
            yc = p[2] * min(max(p[1] / p[2], -lim[1][0]), lim[1][1])
            J = np.array([[fx / p[2], 0, -fx * xc / p[2] ** 2], [0, fy / p[2], -fy * yc / p[2] ** 2]])
            cov2 = J @ w2c[:3, :3] @ cov @ w2c[:3, :3].T @ J.T
            blurred = cov2 + 0.3 * np.eye(2)
            o = opac[n] * (math.sqrt(np.linalg.det(cov2) / np.linalg.det(blurred)) if mip else 1.0)
            r = math.ceil(3 * math.sqrt(np.linalg.eigvalsh(blurred).max()))
            m = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
            if m[0] + r <= 0 or m[0] - r >= W or m[1] + r <= 0 or m[1] - r >= H:
                continue
            tiles = [(math.floor((m[i] - r) / TILE_SIZE), math.ceil((m[i] + r) / TILE_SIZE)) for i in (0, 1)]
            splats.append((p[2], m, np.linalg.inv(blurred), o, cols[n], tiles))
        splats.sort(key=lambda s: s[0])
        for v in range(H):
            for u in range(W):
                T, acc, d = 1.0, np.zeros(3), 0.0
                for z, m, conic, o, col, tiles in splats:
                    tu, tv = u // TILE_SIZE, v // TILE_SIZE
                    if not (tiles[0][0] <= tu < tiles[0][1] and tiles[1][0] <= tv < tiles[1][1]):
                        continue
                    delta = m - np.array([u + 0.5, v + 0.5])
                    s = 0.5 * delta @ conic @ delta
                    a = min(0.99, o * math.exp(-s))
                    if s < 0 or a < 1 / 255:
                        continue
                    if T * (1 - a) <= 1e-4:
                        break
                    acc += T * a * col
                    d += T * a * z
                    T *= 1 - a
                rgb[c, v, u], alpha[c, v, u], depth[c, v, u] = acc, 1 - T, d / max(1 - T, 1e-10)
    return rgb, alpha, depth


@pytest.mark.parametrize("mip", [False, True])
def test_reference_matches_float64_oracle(mip):
    gen = torch.Generator().manual_seed(3)
    scene = random_scene(24, gen=gen)
    scene["opacities"][:4] = 0.995  # some clamp at 0.99, so pixels stop early
    cams = look_at_cameras(2, 37, 21)  # odd sizes: partial tiles on the right and bottom
    out = rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                        cams, mip_filter=mip, backend="torch")
    rgb, alpha, depth = oracle_render(scene, cams, mip)
    assert alpha.max() > 0.9 and (alpha < 0.05).mean() > 0.05  # the scene covers some pixels, not all
    np.testing.assert_allclose(out["rgb"].double().numpy(), rgb, atol=2e-5)
    np.testing.assert_allclose(out["alpha"][..., 0].double().numpy(), alpha, atol=2e-5)
    covered = alpha > 0.05
    np.testing.assert_allclose(out["depth"][..., 0].double().numpy()[covered], depth[covered], rtol=1e-4)


def test_float64_reference_matches_oracle_tightly():
    scene = random_scene(10, dtype=torch.float64, gen=torch.Generator().manual_seed(5))
    cams = look_at_cameras(1, 20, 17, dtype=torch.float64)
    out = rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                        cams, backend="torch")
    rgb, alpha, _ = oracle_render(scene, cams)
    np.testing.assert_allclose(out["rgb"].numpy(), rgb, atol=1e-12)
    np.testing.assert_allclose(out["alpha"][..., 0].numpy(), alpha, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Closed forms


def _facing_camera(var_px: float, opacity: float, z: float = 3.0, f: float = 50.0, mip: bool = False):
    """One isotropic Gaussian on the optical axis of a camera at the origin, projecting onto pixel centre
    (20.5, 16.5) of a 41 x 33 image, with screen variance var_px (before the 0.3 low-pass)."""
    s = math.sqrt(var_px) * z / f
    cams = Cameras(torch.eye(4)[None], torch.tensor([[[f, 0, 20.5], [0, f, 16.5], [0, 0, 1]]]),
                   torch.tensor([41]), torch.tensor([33]))
    out = rasterization(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[0.3, -0.2, 0.5, 0.7]]),
                        torch.full((1, 3), s), torch.tensor([opacity]), torch.tensor([[1.0, 0.5, 0.25]]),
                        cams, mip_filter=mip, backend="torch")
    return out


def test_analytic_peak_and_one_over_e_radius():
    out = _facing_camera(4.2, 0.8)  # screen variance 4.2 + 0.3 = 4.5: exp(-d^2 / 9) = 1/e at d = 3 px
    rgb, alpha = out["rgb"][0], out["alpha"][0, ..., 0]
    assert alpha[16, 20].item() == pytest.approx(0.8, abs=1e-6)
    np.testing.assert_allclose(rgb[16, 20].numpy(), [0.8, 0.4, 0.2], atol=1e-6)
    for v, u in ((16, 23), (16, 17), (13, 20), (19, 20)):
        assert alpha[v, u].item() == pytest.approx(0.8 / math.e, rel=1e-5)
    assert alpha[16 + 2, 20 + 2].item() == pytest.approx(0.8 * math.exp(-8 / 9), rel=1e-5)
    assert out["depth"][0, 16, 20, 0].item() == pytest.approx(3.0, rel=1e-6)
    assert out["radii"][0, 0].item() == math.ceil(3 * math.sqrt(4.5))


def test_analytic_mip_filter_keeps_the_integral():
    # opacity scale sqrt(det S / det(S + 0.3 I)) = var / (var + 0.3) for an isotropic splat
    out = _facing_camera(1.2, 0.6, mip=True)
    assert out["alpha"][0, 16, 20, 0].item() == pytest.approx(0.6 * 1.2 / 1.5, rel=1e-5)


def test_alpha_clamp_and_early_stop():
    """Three splats on one pixel, front to back with opacities 1 (clamped to 0.99), 0.98, 1: after two, T =
    0.01 * 0.02 = 2e-4 > 1e-4; the third would leave 2e-6 <= 1e-4, so it is left out (without the stop rule
    blue would be 2e-4 * 0.99)."""
    cams = Cameras(torch.eye(4)[None], torch.tensor([[[50.0, 0, 8.5], [0, 50, 8.5], [0, 0, 1]]]),
                   torch.tensor([16]), torch.tensor([16]))
    means = torch.tensor([[0.0, 0, 2], [0, 0, 3], [0, 0, 4]])
    colors = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = rasterization(means, torch.tensor([[1.0, 0, 0, 0]]).expand(3, 4), torch.full((3, 3), 0.2),
                        torch.tensor([1.0, 0.98, 1.0]), colors, cams, backend="torch")
    np.testing.assert_allclose(out["rgb"][0, 8, 8].numpy(), [0.99, 0.01 * 0.98, 0.0], atol=1e-7)
    assert out["alpha"][0, 8, 8, 0].item() == pytest.approx(1 - 2e-4, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Spherical harmonics


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_bases_match_tcnn(degree):
    d = torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64), dim=-1)
    np.testing.assert_allclose(sh_bases(degree, d).numpy(),
                               spherical_harmonics_encode((d + 1) / 2, degree + 1).numpy(), atol=1e-12)


def test_sh_color_offset_clamp_and_rasterization_view_dependence():
    sh = torch.zeros(2, 16, 3)
    sh[0, 0] = torch.tensor([1.0, -3.0, 0.0])
    col = sh_to_color(3, sh, torch.tensor([[0.0, 0, 2], [1, 0, 0]]))
    np.testing.assert_allclose(col.numpy(), [[0.28209479 + 0.5, 0.0, 0.5], [0.5, 0.5, 0.5]], atol=1e-6)
    # band 1: colour depends on the direction from each camera centre
    scene = random_scene(6)
    sh = torch.randn(6, 16, 3) * 0.3
    cams = look_at_cameras(2, 24, 24)
    out = rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"], sh, cams,
                        sh_degree=3, backend="torch")
    for c in range(2):
        dirs = scene["means"] - cams.c2w[c, :3, 3]
        want = rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                             sh_to_color(3, sh, dirs), cams[c], backend="torch")
        np.testing.assert_allclose(out["rgb"][c].numpy(), want["rgb"][0].numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Features, background, errors


@pytest.mark.parametrize("F", [1, 64])
def test_features_blend_like_colours(F):
    scene = random_scene(30)
    M = torch.randn(3, F, dtype=torch.float64)
    cams = look_at_cameras(2, 33, 19)
    out = rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                        cams, features=(scene["colors"].double() @ M).float(), backend="torch")
    assert out["features"].shape == (2, 19, 33, F)
    np.testing.assert_allclose(out["features"].numpy(), (out["rgb"].double() @ M).numpy(), atol=1e-5)


def test_background_and_mismatched_cameras():
    scene = random_scene(8)
    cams = look_at_cameras(2, 16, 16)
    bg = torch.tensor([0.1, 0.2, 0.3])
    a = rasterization(**scene, cameras=cams, backend="torch")
    b = rasterization(**scene, cameras=cams, backgrounds=bg, backend="torch")
    torch.testing.assert_close(b["rgb"], a["rgb"] + (1 - a["alpha"]) * bg)
    cams.width[1] = 17
    with pytest.raises(ConfigError, match="one image size"):
        rasterization(**scene, cameras=cams, backend="torch")
    cams.width[1] = 16
    cams.distortion[0, 0] = 0.1
    with pytest.raises(ConfigError, match="distortion"):
        rasterization(**scene, cameras=cams, backend="torch")


def test_backend_dispatch_on_cpu():
    """auto runs the references on CPU tensors; a forced triton backend that cannot run is one ConfigError
    naming the op (skipped where the kernels can run on CPU: TRITON_INTERPRET=1 set by kernel tests)."""
    scene = random_scene(8)
    cams = look_at_cameras(1, 16, 16)
    auto = rasterization(**scene, cameras=cams, backend="auto")
    torch.testing.assert_close(auto["rgb"], rasterization(**scene, cameras=cams, backend="torch")["rgb"],
                               rtol=0, atol=0)
    if ops.unavailable_reason("splat_project", "cpu") is None:
        pytest.skip("the splat kernels can run on CPU tensors here (Triton interpreter)")
    with pytest.raises(ConfigError, match="splat_project: backend 'triton' cannot run here"):
        rasterization(**scene, cameras=cams, backend="triton")
    with pytest.raises(ConfigError, match="backend"):
        rasterization(**scene, cameras=cams, backend="cuda")


def test_culling_behind_and_off_screen():
    means2d = torch.tensor([[[5.0, 5.0], [-40.0, 5.0], [5.0, 5.0]]])
    scene = random_scene(3)
    scene["means"] = torch.tensor([[0.0, 0, -2.0], [0, 0, 3], [50.0, 0, 2]])  # behind, ok, far off screen
    cams = Cameras(torch.eye(4)[None], torch.tensor([[[20.0, 0, 8], [0, 20, 8], [0, 0, 1]]]),
                   torch.tensor([16]), torch.tensor([16]))
    out = rasterization(**scene, cameras=cams, backend="torch")
    assert out["radii"][0].tolist()[0] == 0 and out["radii"][0, 1] > 0 and out["radii"][0, 2] == 0
    radii = torch.tensor([[3, 0, 0]], dtype=torch.int32)
    isect = intersect_tiles(means2d, radii, torch.ones(1, 3), 16, 16, 16)
    assert isect["flatten_ids"].tolist() == [0] and isect["offsets"].tolist() == [0, 1]


def test_tiles_sorted_by_depth_within_each_tile():
    gen = torch.Generator().manual_seed(2)
    C, N, W, H = 2, 50, 70, 40
    means2d = torch.rand(C, N, 2, generator=gen) * torch.tensor([W, H])
    radii = torch.randint(0, 20, (C, N), generator=gen, dtype=torch.int32)
    depths = torch.rand(C, N, generator=gen) + 0.1
    isect = intersect_tiles(means2d, radii, depths, 16, W, H)
    tx, ty = 5, 3
    offsets, ids = isect["offsets"], isect["flatten_ids"]
    for t in range(C * tx * ty):  # brute force: every Gaussian whose box reaches the tile, depth order
        c, rest = divmod(t, tx * ty)
        y, x = divmod(rest, tx)
        lo = torch.floor((means2d[c] - radii[c, :, None]) / 16)  # (N, 2)
        hi = torch.ceil((means2d[c] + radii[c, :, None]) / 16)
        want = [c * N + n for n in range(N) if radii[c, n] > 0
                and lo[n, 0] <= x < hi[n, 0] and lo[n, 1] <= y < hi[n, 1]]
        want.sort(key=lambda g: depths.view(-1)[g].item())
        assert ids[offsets[t]:offsets[t + 1]].tolist() == want


# ---------------------------------------------------------------------------------------------------------
# Gradients


def test_gradcheck_float64_end_to_end():
    gen = torch.Generator().manual_seed(7)
    scene = random_scene(4, dtype=torch.float64, gen=gen, extent=0.4, scale=(0.3, 0.6))
    feats = torch.rand(4, 2, generator=gen, dtype=torch.float64)
    cams = look_at_cameras(1, 8, 8, dtype=torch.float64)
    names = ("means", "quats", "scales", "opacities", "colors")

    def render(means, quats, scales, opacities, colors, features):
        out = rasterization(means, quats, scales, opacities, colors, cams, features=features, mip_filter=True,
                            backend="torch")
        return out["rgb"], out["features"], out["alpha"], out["depth"]

    inputs = tuple(scene[k].clone().requires_grad_(True) for k in names) + (feats.requires_grad_(True),)
    assert render(*inputs)[2].max() > 0.3
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_rasterize_stage_gradients_reach_every_input():
    scene = random_scene(20)
    cams = look_at_cameras(1, 24, 24)
    viewmats = torch.linalg.inv(cams.c2w)
    proj = project_gaussians_torch(scene["means"], scene["quats"], scene["scales"], scene["opacities"], viewmats,
                             cams.K, 24, 24)
    isect = intersect_tiles(proj["means2d"], proj["radii"], proj["depths"], 16, 24, 24)
    inputs = [proj[k].detach().requires_grad_(True) for k in ("means2d", "conics", "opacities")]
    colors = scene["colors"][None].clone().requires_grad_(True)
    img, alpha = rasterize_to_pixels_torch(inputs[0], inputs[1], colors, inputs[2], 24, 24, 16,
                                     isect["flatten_ids"], isect["offsets"])
    grads = torch.autograd.grad((img * torch.randn_like(img)).sum() + alpha.sum(), inputs + [colors])
    visible = proj["radii"][0] > 0
    for g in grads:
        assert torch.isfinite(g).all() and g.reshape(1, 20, -1)[0, visible].abs().sum(-1).gt(0).all()


# ---------------------------------------------------------------------------------------------------------
# gsplat's golden input


def load_garden(device="cpu", scale: float = 0.25, every: int = 1, seed: int = 0) -> tuple[dict, Cameras]:
    """gsplat's `load_test_data`: test_garden.npz cropped to [-2, 2]^3, random scales U(0, 0.02), unit
    random quaternions, opacities U(0, 1), its 3 w2c viewmats and Ks (cameras scaled by `scale`).
    every: keep every n-th Gaussian (the CPU reference costs ~256 pair evaluations per tile intersection:
    ~480k intersections for the whole set at scale 0.25, tens of seconds)."""
    data = np.load(need_data("splat", "test_garden.npz"))
    means = torch.from_numpy(data["means3d"]).float()
    colors = torch.from_numpy(data["colors"]).float() / 255.0
    keep = ((means >= -2) & (means <= 2)).all(dim=-1)
    means, colors = means[keep][::every], colors[keep][::every]
    gen = torch.Generator().manual_seed(seed)
    N = means.shape[0]
    scene = {"means": means, "quats": torch.nn.functional.normalize(torch.randn(N, 4, generator=gen), dim=-1),
             "scales": torch.rand(N, 3, generator=gen) * 0.02, "opacities": torch.rand(N, generator=gen),
             "colors": colors}
    c2w = torch.linalg.inv(torch.from_numpy(data["viewmats"]).double()).float()
    C = c2w.shape[0]
    cams = Cameras(c2w, torch.from_numpy(data["Ks"]).float(), torch.full((C,), int(data["width"])),
                   torch.full((C,), int(data["height"]))).scaled(scale)
    return {k: v.to(device) for k, v in scene.items()}, cams.to(device)


def test_garden_renders_on_the_reference():
    scene, cams = load_garden(scale=0.25, every=8)
    out = rasterization(**scene, cameras=cams, backend="torch")
    assert out["rgb"].shape == (3, 105, 162, 3)
    for k in ("rgb", "depth", "alpha"):
        assert torch.isfinite(out[k]).all(), k
    assert 0 <= out["alpha"].min() and out["alpha"].max() <= 1
    assert (out["alpha"] > 0.5).float().mean() > 0.2  # the garden fills much of every view


# ---------------------------------------------------------------------------------------------------------
# views: which cameras see which Gaussians, cameras around Gaussians


def test_gaussians_in_view_against_a_pinhole_count():
    """Tiny Gaussians (3-sigma box of 2 px from the 0.3 px low-pass) are in view iff their centre lands
    within 2 px of the image and in front of the camera: counted here with a plain pinhole projection."""
    from ngraphics.splatting.views import gaussians_in_view

    gen = torch.Generator().manual_seed(5)
    means = (torch.rand(500, 3, generator=gen) * 2 - 1) * 6
    cams = look_at_cameras(3, 40, 30)
    cams = Cameras.cat([cams, Cameras(cams.c2w[:1].clone(), cams.K[:1] * torch.tensor([[2.0], [2.0], [1.0]]),
                                      torch.tensor([80]), torch.tensor([60]))])  # another size, same view
    counts = gaussians_in_view(means, torch.tensor([[1.0, 0, 0, 0]]).expand(500, 4), torch.full((500, 3), 1e-6),
                               cams)
    expected = []
    for i in range(len(cams)):
        w2c = torch.linalg.inv(cams.c2w[i].double())
        p = means.double() @ w2c[:3, :3].T + w2c[:3, 3]
        uv = p[:, :2] / p[:, 2:] * cams.K[i].diagonal()[:2].double() + cams.K[i, :2, 2].double()
        W, H = int(cams.width[i]), int(cams.height[i])
        inside = (uv[:, 0] > -2) & (uv[:, 0] < W + 2) & (uv[:, 1] > -2) & (uv[:, 1] < H + 2) & (p[:, 2] > 0.01)
        expected.append(int(inside.sum()))
    assert counts.tolist() == expected and min(expected) > 10
    near = means[means.norm(dim=1) < 3]  # the cameras stand 4 from the origin: turned around, they see none
    away = Cameras(cams.c2w @ torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0])), cams.K, cams.width, cams.height)
    counts = gaussians_in_view(near, torch.tensor([[1.0, 0, 0, 0]]).expand(len(near), 4),
                               torch.full((len(near), 3), 1e-6), away)
    assert len(near) >= 10 and counts.tolist() == [0] * 4


def test_cameras_around_frame_the_points():
    from ngraphics.splatting.views import cameras_around

    gen = torch.Generator().manual_seed(2)
    points = torch.randn(2000, 3, generator=gen) * torch.tensor([3.0, 1.0, 2.0]) + torch.tensor([10.0, -4.0, 7.0])
    points[:20] *= 1000  # far-away outliers do not move the ring
    for up in [(0.0, -1.0, 0.0), (0.0, 0.0, 1.0)]:
        cams = cameras_around(points, n_cameras=6, width=64, height=48, up=up)
        assert len(cams) == 6 and cams.width.tolist() == [64] * 6 and cams.height.tolist() == [48] * 6
        centre = points.median(0).values
        r = float((points - centre).norm(dim=1).quantile(0.9))
        upv = torch.tensor(up)
        assert torch.allclose((cams.origins - centre).norm(dim=1), torch.full((6,), 1.1 * r / math.sin(
            math.atan(24 / cams.K[0, 0, 0]))), rtol=1e-4)
        for i in range(6):
            w2c = torch.linalg.inv(cams.c2w[i])
            p = centre @ w2c[:3, :3].T + w2c[:3, 3]
            assert torch.allclose(p[:2] / p[2] * cams.K[i, 0, 0] + cams.K[i, :2, 2], torch.tensor([32.0, 24.0]),
                                  atol=1e-3)  # the centre is in the middle of the image
            up_in_image = -cams.c2w[i, :3, 1]  # OpenCV y points down
            assert float(up_in_image @ upv) > 0.9  # upright, 20 degrees down
            inner = points[(points - centre).norm(dim=1) <= r]
            q = inner @ w2c[:3, :3].T + w2c[:3, 3]
            uv = q[:, :2] / q[:, 2:] * cams.K[i, 0, 0] + cams.K[i, :2, 2]
            assert ((uv >= 0) & (uv <= torch.tensor([64.0, 48.0]))).all()  # the 90 % sphere fits the image

"""Supersampled rendering (`ngraphics.rendering.supersampling`), shifted cameras and pixel-centre ray batches."""

from __future__ import annotations

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError
from ngraphics.rendering.supersampling import render_supersampled, subpixel_offsets
from ngraphics.data.batches import RaySampler


def _cameras(n: int = 2) -> Cameras:
    angle = torch.tensor(0.3)
    R = torch.tensor([[1.0, 0, 0], [0, torch.cos(angle), -torch.sin(angle)], [0, torch.sin(angle), torch.cos(angle)]])
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = torch.tensor([0.2, -0.1, -3.0])
    K = torch.tensor([[40.0, 0, 11.3], [0, 42.0, 7.9], [0, 0, 1]]).expand(n, 3, 3).clone()
    return Cameras(c2w, K, torch.full((n,), 20), torch.full((n,), 16))


def _pixel_of(cameras: Cameras, i: int, directions: torch.Tensor) -> torch.Tensor:
    """Where world directions (R, 3) of camera i land on its image, in pixels (R, 2), float64."""
    d_cam = directions.double() @ cameras.c2w[i, :3, :3].double()  # R^T d, row-wise
    K = cameras.K[i].double()
    return torch.stack([K[0, 0] * d_cam[:, 0] / d_cam[:, 2] + K[0, 2], K[1, 1] * d_cam[:, 1] / d_cam[:, 2] + K[1, 2]], -1)


class _PixelCoordinates:
    """A stand-in method whose 'image' is f(u, v) = (u^2, u^2 v / 10, v), with (u, v) where each ray crosses the
    image plane of the `reference` cameras."""

    def __init__(self, reference: Cameras):
        self.reference = reference

    def render(self, cameras: Cameras, background=None) -> dict[str, torch.Tensor]:
        images = []
        for i in range(len(cameras)):
            _, directions = cameras.image_rays(i)
            uv = _pixel_of(self.reference, i, directions)
            u, v = uv[:, 0], uv[:, 1]
            H, W = int(cameras.height[i]), int(cameras.width[i])
            images.append(torch.stack([u * u, u * u * v / 10, v], -1).reshape(H, W, 3))
        return {"rgb": torch.stack(images), "n_samples": 7}


@pytest.mark.parametrize("spp", [1, 2, 4, 5, 8, 9, 16])
def test_subpixel_offsets_cover_the_pixel(spp):
    offsets = subpixel_offsets(spp)
    assert offsets.shape == (spp, 2) and offsets.dtype == torch.float64
    assert (offsets > -0.5).all() and (offsets < 0.5).all()
    torch.testing.assert_close(offsets.mean(0), torch.zeros(2, dtype=torch.float64))  # no image shift
    cells = torch.floor((offsets + 0.5) * spp).long()  # n x n cells: one point per row and per column
    for axis in (0, 1):
        assert sorted(cells[:, axis].tolist()) == list(range(spp))
    torch.testing.assert_close((cells.double() + 0.5) / spp - 0.5, offsets)  # at the cells' centres
    if spp > 2:  # spread over the square, not along a diagonal
        assert len(set((cells[:, 1] - cells[:, 0]).tolist())) > 1


def test_subpixel_offsets_reject_a_non_positive_count():
    with pytest.raises(ConfigError, match="positive"):
        subpixel_offsets(0)


def test_shifted_cameras_move_every_ray_by_the_offset():
    cams = _cameras()
    du, dv = 0.3, -0.2
    _, base = cams.image_rays(1)
    _, moved = cams.shifted(du, dv).image_rays(1)
    shift = _pixel_of(cams, 1, moved) - _pixel_of(cams, 1, base)
    torch.testing.assert_close(shift, torch.tensor([du, dv], dtype=torch.float64).expand_as(shift), atol=1e-4, rtol=0)
    torch.testing.assert_close(cams.K, _cameras().K)  # the originals are untouched


@pytest.mark.parametrize("spp", [1, 4, 5])
def test_supersampled_render_is_the_mean_over_the_pixel(spp):
    """Analytic reference: the mean of f (odd in the offsets, so a mirrored pattern fails) over the points centre + offset, in float64."""
    cams = _cameras(1)
    out = render_supersampled(_PixelCoordinates(cams), cams, None, spp)
    assert set(out) == {"rgb"} if spp > 1 else {"rgb", "n_samples"}  # non-tensor entries are not averaged
    v, u = torch.meshgrid(torch.arange(16, dtype=torch.float64) + 0.5, torch.arange(20, dtype=torch.float64) + 0.5,
                          indexing="ij")
    du, dv = subpixel_offsets(spp).unbind(-1)
    U, V = u[..., None] + du, v[..., None] + dv  # (H, W, spp)
    expected = torch.stack([(U * U).mean(-1), (U * U * V / 10).mean(-1), V.mean(-1)], -1)
    torch.testing.assert_close(out["rgb"][0].double(), expected, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("jitter", [False, True])
def test_ray_batches_pass_through_pixel_centres_unless_jittered(jitter):
    from ngraphics.data.scene import SceneData

    cams = _cameras(2)
    images = [torch.rand(16, 20, 3) for _ in range(2)]
    scene = SceneData(cameras=cams, images=images, names=["a", "b"], aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]),
                      near=0.1, far=10.0)
    sampler = RaySampler(scene, torch.device("cpu"), 4096, pixel_jitter=jitter)
    batch = sampler.sample()
    fractions = []
    for i in range(2):
        rows = batch["camera_index"] == i
        uv = _pixel_of(cams, i, batch["directions"][rows])
        fractions.append(uv - torch.floor(uv))
        pixel = torch.floor(uv).long()
        target = images[i][pixel[:, 1], pixel[:, 0]]  # each target is the pixel its ray passes through
        torch.testing.assert_close(batch["rgb"][rows], target)
    fractions = torch.cat(fractions)
    if jitter:
        assert fractions.std(0).min() > 0.25  # uniform in [0, 1): std 0.289
    else:
        torch.testing.assert_close(fractions, torch.full_like(fractions, 0.5), atol=1e-4, rtol=0)

"""`Cameras`: per-camera time through every method that builds Cameras, and rays of skewed intrinsics."""

from __future__ import annotations

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.cameras.distortion import project_points
from ngraphics.errors import DataError


def _cameras(n: int = 4, time: bool = True) -> Cameras:
    g = torch.Generator().manual_seed(0)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g)
    K = torch.tensor([[20.0, 0.4, 8.0], [0.0, 19.0, 6.5], [0.0, 0.0, 1.0]]).repeat(n, 1, 1)
    times = torch.linspace(0.1, 0.9, n) if time else None
    return Cameras(c2w, K, torch.full((n,), 16), torch.full((n,), 13), time=times)


def test_time_follows_indexing():
    cams = _cameras()
    t = cams.time
    assert torch.equal(cams[2].time, t[2:3]) and torch.equal(cams[-1].time, t[3:])
    assert torch.equal(cams[1:3].time, t[1:3])
    assert torch.equal(cams[torch.tensor([3, 0])].time, t[[3, 0]])
    assert torch.equal(cams[torch.tensor([True, False, True, False])].time, t[[0, 2]])
    assert _cameras(time=False)[1:3].time is None


def test_time_follows_to_scaled_shifted_and_cat():
    cams = _cameras()
    moved = cams.to("meta")
    assert moved.time.device == torch.device("meta") and moved.c2w.device == torch.device("meta")
    assert torch.equal(cams.to("cpu").time, cams.time)
    assert torch.equal(cams.scaled(0.5).time, cams.time) and torch.equal(cams.shifted(0.25, -0.25).time, cams.time)
    assert cams.scaled(0.5).width.tolist() == [8] * 4  # the rest of scaled still works
    joined = Cameras.cat([cams[2:], cams[:1]])
    assert torch.equal(joined.time, cams.time[[2, 3, 0]]) and torch.equal(joined.c2w, cams.c2w[[2, 3, 0]])
    static = _cameras(time=False)
    assert Cameras.cat([static, static]).time is None and len(Cameras.cat([static, static])) == 8
    with pytest.raises(DataError, match="some camera sets have time and others do not"):
        Cameras.cat([cams, static])


def test_time_shape_and_dtype_are_checked():
    cams = _cameras(time=False)
    for bad in (torch.zeros(3), torch.zeros(4, 1), torch.zeros(4, dtype=torch.float64)):
        with pytest.raises(DataError, match=r"Cameras.time must be \(4,\) float32"):
            Cameras(cams.c2w, cams.K, cams.width, cams.height, time=bad)


def test_rays_invert_the_projection_with_skew():
    """A ray through pixel (u, v) of a camera whose K has a skew term projects back onto (u, v)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    cams = _cameras(1)
    cams.c2w[0, :3, :3] = q * torch.sign(torch.det(q))
    pixels = torch.rand(50, 2, generator=g) * torch.tensor([16.0, 13.0])
    origins, dirs = cams.rays(torch.zeros(50, dtype=torch.int64), pixels)
    w2c = torch.linalg.inv(cams.c2w[0].double())
    points = (origins + 2.0 * dirs).double()
    p_cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    torch.testing.assert_close(project_points(p_cam, cams.K[0].double()), pixels.double(), atol=1e-4, rtol=0)

"""Training samplers (`ngraphics.data.batches`) against independent float64 references: rays projected back
through their cameras, composites and bilinear filtering written out by hand, per-view values on a scene
built with distinct values per camera."""

from __future__ import annotations

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.data.batches import PointSampler, RaySampler, ViewSampler, bilinear_lookup
from ngraphics.data.scene import SceneData
from ngraphics.methods.base import Sampler

SIZES = [(5, 7), (6, 4), (3, 9)]  # (H, W) per camera: different sizes, odd and even


def _rotation(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def _scene(alpha: bool = True, extras: bool = True, background: str = "white") -> SceneData:
    """Three cameras of different sizes and poses; every per-view value differs from view to view."""
    g = torch.Generator().manual_seed(3)
    C = len(SIZES)
    c2w = torch.eye(4, dtype=torch.float64).repeat(C, 1, 1)
    K = torch.zeros(C, 3, 3, dtype=torch.float64)
    for i, (H, W) in enumerate(SIZES):
        c2w[i, :3, :3] = _rotation(g)
        c2w[i, :3, 3] = torch.randn(3, generator=g, dtype=torch.float64)
        K[i] = torch.tensor([[9.0 + i, 0.3 * i, W / 2 + 0.1 * i], [0, 8.5 - i, H / 2 - 0.2], [0, 0, 1]])
    channels = 4 if alpha else 3
    images = [torch.rand(H, W, channels, generator=g) for H, W in SIZES]
    time = torch.tensor([0.75, 0.25, 0.5]) if extras else None
    cameras = Cameras(c2w.float(), K.float(), torch.tensor([w for _, w in SIZES]),
                      torch.tensor([h for h, _ in SIZES]), time=time)
    masks = [torch.rand(H, W, generator=g).round() * 0.5 + 0.25 * i for i, (H, W) in enumerate(SIZES)]
    depths = [10.0 * (i + 1) + torch.rand(H, W, generator=g) for i, (H, W) in enumerate(SIZES)]
    return SceneData(cameras, images, ["a", "b", "c"], torch.tensor([[-1.0] * 3, [1.0] * 3]),
                     masks=masks if extras else None, depths=depths if extras else None, background=background)


def _project(cameras: Cameras, cam: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor):
    """Pixel positions (u, v) where rays meet their camera's image plane, float64: p = K R^T (o + d - c)."""
    c2w, K = cameras.c2w[cam].double(), cameras.K[cam].double()
    target = origins.double() + directions.double() - c2w[:, :3, 3]
    p_cam = torch.einsum("rji,rj->ri", c2w[:, :3, :3], target)  # R^T x
    p = torch.einsum("rij,rj->ri", K, p_cam)
    return p[:, :2] / p[:, 2:]


@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("background", ["white", "black", "random"])
def test_rays_hit_their_pixels_and_carry_that_pixels_values(jitter, background):
    scene = _scene(background=background)
    sampler = RaySampler(scene, torch.device("cpu"), batch_size=3000, pixel_jitter=jitter)
    batch = sampler.sample()
    cam = batch["camera_index"]
    assert cam.dtype == torch.int64 and set(cam.tolist()) == {0, 1, 2}
    torch.testing.assert_close(batch["origins"], scene.cameras.c2w[cam, :3, 3])
    torch.testing.assert_close(batch["directions"].norm(dim=-1), torch.ones(len(cam)))
    uv = _project(scene.cameras, cam, batch["origins"], batch["directions"])
    fraction = uv - torch.floor(uv)
    if jitter:
        assert float(fraction.std(0).min()) > 0.25  # uniform in [0, 1): std 0.289
        clear = ((fraction > 1e-3) & (fraction < 1 - 1e-3)).all(-1)  # float32 rays may cross an edge by ~1e-5
        assert float(clear.float().mean()) > 0.99
    else:
        torch.testing.assert_close(fraction, torch.full_like(fraction, 0.5), atol=1e-4, rtol=0)
        clear = torch.ones(len(cam), dtype=torch.bool)
    col, row = torch.floor(uv).long().unbind(-1)
    for r in torch.nonzero(clear)[:, 0].tolist():
        c, i, j = int(cam[r]), int(row[r]), int(col[r])
        H, W = SIZES[c]
        assert 0 <= i < H and 0 <= j < W
        pixel = scene.images[c][i, j].double()
        bg = batch["background"][r].double()
        a = pixel[3]
        expected = pixel[:3] * a + bg * (1 - a)  # straight alpha over the background, float64
        torch.testing.assert_close(batch["rgb"][r].double(), expected, atol=1e-6, rtol=0)
        assert float(batch["alpha"][r]) == float(a)
        assert float(batch["mask"][r]) == float(scene.masks[c][i, j])
        assert float(batch["depth"][r]) == float(scene.depths[c][i, j])
        assert float(batch["time"][r]) == float(scene.times[c])
    if background == "random":
        assert float(batch["background"].std(0).min()) > 0.2  # a new colour per ray
        assert float(batch["background"].min()) >= 0 and float(batch["background"].max()) < 1
    else:
        expected = torch.full((len(cam), 3), 1.0 if background == "white" else 0.0)
        assert torch.equal(batch["background"], expected)


def test_rays_of_rgb_scenes_without_extras():
    scene = _scene(alpha=False, extras=False)
    batch = RaySampler(scene, "cpu", 500, pixel_jitter=False).sample()
    assert set(batch) == {"origins", "directions", "rgb", "background", "camera_index"}
    uv = _project(scene.cameras, batch["camera_index"], batch["origins"], batch["directions"])
    col, row = torch.floor(uv).long().unbind(-1)
    expected = torch.stack([scene.images[c][i, j] for c, i, j in
                            zip(batch["camera_index"].tolist(), row.tolist(), col.tolist())])
    assert torch.equal(batch["rgb"], expected)  # RGB targets are the pixels themselves


def test_rays_cover_every_pixel_uniformly_and_batch_size_is_mutable():
    scene = _scene(extras=False)
    sampler = RaySampler(scene, "cpu", 20000, pixel_jitter=False)
    batch = sampler.sample()
    pixels = sum(h * w for h, w in SIZES)
    share = torch.bincount(batch["camera_index"], minlength=3).double() / 20000
    expected = torch.tensor([h * w / pixels for h, w in SIZES], dtype=torch.float64)
    torch.testing.assert_close(share, expected, atol=0.015, rtol=0)  # 5 sigma of a binomial at 20000
    assert sampler.count(batch) == 20000
    sampler.batch_size = 37
    batch = sampler.sample()
    assert batch["rgb"].shape == (37, 3) and sampler.count(batch) == 37


def test_view_sampler_visits_every_view_once_per_epoch_in_new_orders():
    scene = _scene()
    sampler = ViewSampler(scene, "cpu")
    epochs = [[sampler.sample()["camera_index"] for _ in range(3)] for _ in range(6)]
    assert all(sorted(e) == [0, 1, 2] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a new permutation each epoch


@pytest.mark.parametrize("background", ["black", "random"])
def test_view_batches_hold_the_views_values(background):
    scene = _scene(background=background)
    sampler = ViewSampler(scene, "cpu")
    for _ in range(3):
        batch = sampler.sample()
        i = batch["camera_index"]
        image, bg = scene.images[i].double(), batch["background"].double()
        a = image[..., 3:]
        torch.testing.assert_close(batch["rgb"].double(), image[..., :3] * a + bg * (1 - a), atol=1e-6, rtol=0)
        assert torch.equal(batch["alpha"], scene.images[i][..., 3])
        assert torch.equal(batch["mask"], scene.masks[i]) and torch.equal(batch["depth"], scene.depths[i])
        cameras = batch["cameras"]
        assert len(cameras) == 1 and torch.equal(cameras.c2w[0], scene.cameras.c2w[i])
        assert torch.equal(cameras.K[0], scene.cameras.K[i]) and float(cameras.time[0]) == float(scene.times[i])
        if background == "black":
            assert torch.equal(batch["background"], torch.zeros(3))
        assert sampler.count(batch) == 1


def test_view_sampler_copies_from_the_host_only_at_construction(monkeypatch):
    """After construction, sampling two epochs neither moves nor makes tensors from host data: the images it
    returns share storage with the ones it moved at construction (RGB scenes are returned as they are)."""
    scene = _scene(alpha=False)
    sampler = ViewSampler(scene, "cpu")
    stored = {i: sampler.images[i].untyped_storage().data_ptr() for i in range(3)}

    def refuse(*args, **kwargs):
        raise AssertionError("host data copied after construction")

    for name in ("to", "cpu", "cuda", "clone"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, refuse)
    for _ in range(6):
        batch = sampler.sample()
        i = batch["camera_index"]
        assert batch["rgb"].untyped_storage().data_ptr() == stored[i]
        assert batch["mask"].untyped_storage().data_ptr() == sampler.masks[i].untyped_storage().data_ptr()
    monkeypatch.undo()
    assert batch["alpha"] is None


@pytest.mark.parametrize("kind", ["rays", "views", "points"])
def test_sample_neither_reads_device_values_nor_makes_tensors_from_host_data(kind, monkeypatch):
    """What would be a host sync (item, tolist, bool/int/float of a tensor) or a host-to-device copy (a tensor
    built from Python or NumPy data, e.g. a background colour per step) is refused inside sample()."""
    scene = _scene(background="white")
    sampler = {"rays": lambda: RaySampler(scene, "cpu", 64), "views": lambda: ViewSampler(scene, "cpu"),
               "points": lambda: PointSampler(scene, "cpu", 64, seed=0)}[kind]()

    def refuse(*args, **kwargs):
        raise AssertionError("host sync or host data inside sample()")

    with monkeypatch.context() as patch:
        for name in ("tensor", "as_tensor", "from_numpy"):
            patch.setattr(torch, name, refuse)
        names = ["item", "numpy", "cpu", "cuda", "__bool__", "__int__", "__float__"]
        names += [] if kind == "views" else ["tolist"]  # views: the epoch's order comes from a CPU randperm
        for name in names:
            patch.setattr(torch.Tensor, name, refuse)
        batches = [sampler.sample() for _ in range(4)]
    assert [sampler.count(b) for b in batches] == [{"rays": 64, "views": 1, "points": 64}[kind]] * 4


def test_view_sampler_keeps_everything_on_its_device():
    """On the meta device (a stand-in for a GPU: no data, no copies back), every tensor of a batch lives there."""
    meta = torch.device("meta")
    for background in ("white", "random"):
        sampler = ViewSampler(_scene(background=background), meta)
        batch = sampler.sample()
        tensors = [batch[k] for k in ("rgb", "alpha", "background", "mask", "depth")]
        tensors += [batch["cameras"].c2w, batch["cameras"].K, batch["cameras"].time]
        assert all(t.device == meta for t in tensors)


def _bilinear_reference(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear filtering with clamp-to-edge as a sum of tent weights over the edge-extended image, float64."""
    H, W, C = image.shape
    out = torch.zeros(len(uv), C, dtype=torch.float64)
    for n, (u, v) in enumerate(uv.double().tolist()):
        x, y = u * W - 0.5, v * H - 0.5  # pixel (i, j) has its centre at x = j, y = i
        for i in range(-2, H + 2):
            for j in range(-2, W + 2):
                weight = max(0.0, 1 - abs(x - j)) * max(0.0, 1 - abs(y - i))
                if weight > 0:
                    out[n] += weight * image[min(max(i, 0), H - 1), min(max(j, 0), W - 1)].double()
    return out


def test_bilinear_lookup_at_centres_edges_and_between():
    g = torch.Generator().manual_seed(1)
    H, W = 5, 7
    image = torch.rand(H, W, 4, generator=g)
    j, i = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
    centres = torch.stack([(j.reshape(-1) + 0.5) / W, (i.reshape(-1) + 0.5) / H], -1)
    torch.testing.assert_close(bilinear_lookup(image, centres), image.reshape(-1, 4))  # centres: the pixels
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5 / W, 0.0], [1.0, 0.37],
                          [0.3 / W, 0.7 / H], [1 - 0.2 / W, 0.5], [0.5, 1 - 0.1 / H], [1.0 / W, 2.0 / H]])
    uv = torch.cat([edges, torch.rand(60, 2, generator=g)])
    torch.testing.assert_close(bilinear_lookup(image, uv).double(), _bilinear_reference(image, uv),
                               atol=1e-6, rtol=0)
    for H, W in ((1, 1), (1, 4), (3, 1)):  # one-pixel-wide images clamp on both sides
        image = torch.rand(H, W, 3, generator=g)
        torch.testing.assert_close(bilinear_lookup(image, uv).double(), _bilinear_reference(image, uv),
                                   atol=1e-6, rtol=0)


def test_point_sampler_targets_views_and_seed():
    scene = _scene()
    sampler = PointSampler(scene, "cpu", batch_size=200, seed=5)
    batch = sampler.sample()
    uv, cam = batch["uv"], batch["camera_index"]
    assert uv.shape == (200, 2) and cam.dtype == torch.int64 and batch["rgb"].shape == (200, 4)
    assert float(uv.min()) >= 0 and float(uv.max()) < 1 and sampler.count(batch) == 200
    for c in range(3):
        rows = cam == c
        torch.testing.assert_close(batch["rgb"][rows].double(), _bilinear_reference(scene.images[c], uv[rows]),
                                   atol=1e-6, rtol=0)
    again = PointSampler(scene, "cpu", batch_size=200, seed=5).sample()
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert not torch.equal(PointSampler(scene, "cpu", batch_size=200, seed=6).sample()["uv"], uv)
    sampler.batch_size = 20000
    big = sampler.sample()
    pixels = sum(h * w for h, w in SIZES)
    share = torch.bincount(big["camera_index"], minlength=3).double() / 20000
    expected = torch.tensor([h * w / pixels for h, w in SIZES], dtype=torch.float64)
    torch.testing.assert_close(share, expected, atol=0.015, rtol=0)  # weighted by pixel count
    assert float(big["uv"].std(0).min()) > 0.28  # uniform in [0, 1): std 0.289


def test_samplers_satisfy_the_protocol_and_reject_bad_batch_sizes():
    from ngraphics.errors import ConfigError

    scene = _scene()
    samplers = [RaySampler(scene, "cpu", 8), ViewSampler(scene, "cpu"), PointSampler(scene, "cpu", 8)]
    assert [s.unit for s in samplers] == ["rays", "views", "points"]
    assert all(isinstance(s, Sampler) for s in samplers)
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            RaySampler(scene, "cpu", bad)
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            PointSampler(scene, "cpu", bad)


@pytest.mark.gpu
def test_samplers_never_wait_for_the_gpu():
    """On CUDA: batches live on the device, the ray table is fp16, and no sample() syncs with the host."""
    device = torch.device("cuda")
    scene = _scene()
    rays, views, points = RaySampler(scene, device, 4096), ViewSampler(scene, device), PointSampler(scene, device,
                                                                                                     4096, seed=0)
    assert rays.table.pixels.dtype == torch.float16 and rays.table.pixels.device.type == "cuda"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [s.sample() for s in (rays, views, points) for _ in range(4)]
        counts = [s.count(b) for s, b in zip([rays] * 4 + [views] * 4 + [points] * 4, batches)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counts == [4096] * 4 + [1] * 4 + [4096] * 4
    for batch in batches:
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "cuda"
    # the CUDA batches hold what the CPU reference computes for the same rays
    batch = batches[0]
    cpu = scene.cameras
    uv = _project(cpu, batch["camera_index"].cpu(), batch["origins"].cpu(), batch["directions"].cpu())
    col, row = torch.floor(uv).long().unbind(-1)
    depth = torch.stack([scene.depths[c][i, j] for c, i, j in
                         zip(batch["camera_index"].tolist(), row.tolist(), col.tolist())])
    frac = uv - torch.floor(uv)
    clear = ((frac > 1e-3) & (frac < 1 - 1e-3)).all(-1)
    torch.testing.assert_close(batch["depth"].cpu()[clear], depth[clear])

"""NeuS / DTU loader on a scene written the way DTU's cameras_sphere.npz is: world_mat = K [R | t],
scale_mat."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ngraphics.data import load_dataset
from ngraphics.data.neus import load_neus
from ngraphics.errors import DataError

W, H = 40, 30


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NGRAPHICS_CACHE", str(tmp_path / "cache"))


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture
def dtu_like(tmp_path):
    """Five cameras around an object at `centre` of radius `radius` (world units), written as DTU does."""
    rng = np.random.default_rng(0)
    centre, radius = np.array([0.3, -0.2, 1.0]), 2.5
    scale_mat = np.diag([radius, radius, radius, 1.0])
    scale_mat[:3, 3] = centre
    Ks, c2ws, npz = [], [], {}
    (tmp_path / "scan" / "image").mkdir(parents=True)
    (tmp_path / "scan" / "mask").mkdir()
    for i in range(5):
        K = np.array([[50.0 + i, 0.7, 20.3], [0, 48.0 - i, 14.6], [0, 0, 1]])
        R = _rotation(rng)  # camera-to-world rotation
        position = centre + R @ np.array([0, 0, -3.0 * radius])  # on the optical axis, looking at the centre
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R, position
        w2c = np.linalg.inv(c2w)
        world_mat = np.eye(4)
        world_mat[:3, :4] = (K @ w2c[:3, :4]) * rng.uniform(0.5, 3.0)  # any positive scale, like DTU's files
        npz[f"world_mat_{i}"], npz[f"scale_mat_{i}"] = world_mat, scale_mat
        npz[f"camera_mat_{i}"] = np.eye(4)
        Ks.append(K), c2ws.append(c2w)
        cv2.imwrite(str(tmp_path / "scan" / "image" / f"{i:06d}.png"),
                    rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        mask = np.zeros((H, W, 3), np.uint8)
        mask[5 + i : 20, 8:30] = 255
        cv2.imwrite(str(tmp_path / "scan" / "mask" / f"{i:03d}.png"), mask)
    np.savez(tmp_path / "scan" / "cameras_sphere.npz", **npz)
    return tmp_path / "scan", Ks, c2ws, centre, radius


def test_recovers_K_and_normalised_c2w(dtu_like):
    folder, Ks, c2ws, centre, radius = dtu_like
    scene = load_dataset(folder, "all")
    assert scene.meta["format"] == "neus" and len(scene) == 5 and scene.images[0].shape == (H, W, 3)
    for i in range(5):
        K_expected = Ks[i].copy()
        K_expected[:2, 2] += 0.5  # NeuS samples pixel (i, j) at (i, j); ngraphics at (i + 0.5, j + 0.5)
        np.testing.assert_allclose(scene.cameras.K[i].double().numpy(), K_expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(scene.cameras.c2w[i, :3, :3].double().numpy(), c2ws[i][:3, :3], atol=1e-5)
        np.testing.assert_allclose(scene.cameras.c2w[i, :3, 3].double().numpy(),
                                   (c2ws[i][:3, 3] - centre) / radius, atol=1e-5)
    torch.testing.assert_close(scene.aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))


def test_projection_agrees_with_world_mat(dtu_like):
    """A world point projected by world_mat (NeuS pixel convention) lands where the loaded camera projects its
    normalised position, half a pixel over."""
    folder, _, _, centre, radius = dtu_like
    world_mats = np.load(folder / "cameras_sphere.npz")
    scene = load_neus(folder, "all")
    rng = np.random.default_rng(1)
    X = centre + rng.uniform(-1, 1, (20, 3))
    for i in range(5):
        P = world_mats[f"world_mat_{i}"]
        p = (P[:3, :3] @ X.T + P[:3, 3:]).T
        neus_pixels = p[:, :2] / p[:, 2:]
        w2c = torch.linalg.inv(scene.cameras.c2w[i].double()).numpy()
        q = ((X - centre) / radius) @ w2c[:3, :3].T + w2c[:3, 3]
        ours = (q @ scene.cameras.K[i].double().numpy().T)
        np.testing.assert_allclose(ours[:, :2] / ours[:, 2:], neus_pixels + 0.5, atol=1e-3)


def test_masks_and_splits(dtu_like):
    folder = dtu_like[0]
    scene = load_neus(folder, "all", downscale=2)
    assert scene.masks is not None and scene.masks[0].shape == (H // 2, W // 2)
    full = load_neus(folder, "all")
    expected = np.zeros((H, W), np.float32)
    expected[5:20, 8:30] = 1
    np.testing.assert_array_equal(full.masks[0].numpy(), expected)
    train, test = load_neus(folder, "train"), load_neus(folder, "test")
    assert test.names == ["000000"] and train.names == ["000001", "000002", "000003", "000004"]


def test_bad_inputs(dtu_like):
    folder = dtu_like[0]
    cams = dict(np.load(folder / "cameras_sphere.npz"))
    del cams["world_mat_3"]
    np.savez(folder / "cameras_sphere.npz", **cams)
    with pytest.raises(DataError, match="cameras_sphere.npz: missing key world_mat_3"):
        load_neus(folder, "all")
    cams["world_mat_3"] = np.full((4, 4), np.nan)
    np.savez(folder / "cameras_sphere.npz", **cams)
    with pytest.raises(DataError, match="world_mat_3 must be a finite 3x4 or 4x4 matrix"):
        load_neus(folder, "all")
    (folder / "cameras_sphere.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_neus(folder, "all")
    (folder / "mask" / "004.png").unlink()
    with pytest.raises(DataError, match="4 masks for 5 images"):
        load_neus(folder, "all")


def test_dtu_scan65_masks_match_their_images():
    """The shared DTU scan: one mask per image, image-sized after downscaling, object pixels inside them."""
    from conftest import need_data

    root = need_data("dtu", "dtu_scan65")
    scene = load_neus(root, "all", downscale=8, max_frames=2, frame_stride=24)
    assert scene.names == ["000000", "000024"] and scene.masks is not None and len(scene.masks) == 2
    for image, mask in zip(scene.images, scene.masks):
        assert image.shape == (150, 200, 3) and mask.shape == (150, 200) and mask.dtype == torch.float32
        assert float(mask.min()) == 0.0 and float(mask.max()) == 1.0
        assert 0.05 < float((mask > 0.5).float().mean()) < 0.8  # the skull covers part of the view
    source = cv2.imread(str(root / "mask" / "024.png"))[..., 2].astype(np.float32) / 255  # red: RGB's first
    block_mean = source.reshape(150, 8, 200, 8).mean((1, 3))  # area downscale of the source mask
    np.testing.assert_allclose(scene.masks[1].numpy(), block_mean, atol=1 / 255)

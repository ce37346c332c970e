"""Blender / NeRF-synthetic loader: the shared lego scene and malformed copies of it."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import need_data

from ngraphics.data import DataWarning, load_dataset
from ngraphics.data.blender import load_blender
from ngraphics.errors import DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NGRAPHICS_CACHE", str(tmp_path / "cache"))


def test_lego_cameras_and_images():
    root = need_data("nerf_synthetic", "lego")
    meta = json.loads((root / "transforms_train.json").read_text())
    scene = load_dataset(root, "train", downscale=8, max_frames=3, frame_stride=5)
    assert scene.meta["format"] == "blender" and scene.names == ["r_0", "r_5", "r_10"]
    assert scene.has_alpha and all(im.shape == (100, 100, 4) for im in scene.images)
    f = 0.5 * 800 / math.tan(0.5 * meta["camera_angle_x"]) / 8
    K = torch.tensor([[f, 0, 50.0], [0, f, 50.0], [0, 0, 1]])
    torch.testing.assert_close(scene.cameras.K, K.expand(3, 3, 3), rtol=1e-6, atol=1e-5)
    for c, j in enumerate([0, 5, 10]):
        gl = np.array(meta["frames"][j]["transform_matrix"])
        cv = gl.copy()
        # OpenGL (y up, -z forward) -> OpenCV (y down, +z forward)
        cv[:3, 1], cv[:3, 2] = -gl[:3, 1], -gl[:3, 2]
        np.testing.assert_allclose(scene.cameras.c2w[c].numpy(), cv, atol=1e-6)
    # The lego sits at the world origin: it must project near the image centre, in front of every camera.
    w2c = torch.linalg.inv(scene.cameras.c2w.double())
    origin_cam = w2c[:, :3, 3]
    assert bool((origin_cam[:, 2] > 3).all())
    uv = (scene.cameras.K.double() @ origin_cam[:, :, None])[:, :2, 0] / origin_cam[:, 2:]
    assert float((uv - 50).abs().max()) < 6
    torch.testing.assert_close(scene.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))


def test_lego_pixels_are_block_means_of_the_png():
    root = need_data("nerf_synthetic", "lego")
    scene = load_blender(root, "val", downscale=8, max_frames=1)
    png = iio.imread(root / "val" / "r_0.png").astype(np.float64) / 255  # (800, 800, 4), independent decoder
    alpha = png[:, :, 3].reshape(100, 8, 100, 8).mean(axis=(1, 3))
    premult = (png[:, :, :3] * png[:, :, 3:]).reshape(100, 8, 100, 8, 3).mean(axis=(1, 3))
    ours = scene.images[0].double().numpy()
    np.testing.assert_allclose(ours[:, :, 3], alpha, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(ours[:, :, :3] * ours[:, :, 3:], premult, atol=2 / 255)
    # Background choice: recorded, images stay RGBA, rgb_on composites.
    black = load_blender(root, "val", downscale=8, max_frames=1, background="black")
    assert black.background == "black" and torch.equal(black.images[0], scene.images[0])
    transparent = scene.images[0][..., 3] == 0
    assert bool(transparent.any())
    assert bool((scene.rgb_on(0, (1.0, 1.0, 1.0))[transparent] == 1).all())
    assert bool((black.rgb_on(0, (0.0, 0.0, 0.0))[transparent] == 0).all())


def test_second_load_hits_the_cache(monkeypatch):
    root = need_data("nerf_synthetic", "lego")
    first = load_blender(root, "test", downscale=16, max_frames=2)
    from ngraphics.data import frames

    def no_decoding(job):
        raise AssertionError(f"decoded {job.path} although it is cached")

    monkeypatch.setattr(frames, "_run_job", no_decoding)
    second = load_blender(root, "test", downscale=16, max_frames=2)
    assert all(torch.equal(a, b) for a, b in zip(first.images, second.images))
    assert torch.equal(first.cameras.K, second.cameras.K) and torch.equal(first.cameras.c2w,
                                                                          second.cameras.c2w)
    with pytest.raises(AssertionError, match="although it is cached"):  # other options are a miss
        load_blender(root, "test", downscale=8, max_frames=2)


@pytest.fixture
def lego_copy(tmp_path):
    """A 3-frame copy of lego's train split in tmp_path: (folder, parsed json)."""
    root = need_data("nerf_synthetic", "lego")
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:3]
    (tmp_path / "lego" / "train").mkdir(parents=True)
    for frame in meta["frames"]:
        name = frame["file_path"].split("/")[-1] + ".png"
        shutil.copy(root / "train" / name, tmp_path / "lego" / "train" / name)
    return tmp_path / "lego", meta


def _write(folder, meta, split="train"):
    (folder / f"transforms_{split}.json").write_text(json.dumps(meta))


def _error(folder, split="train") -> str:
    with pytest.raises(DataError) as e:
        load_blender(folder, split, downscale=16)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_malformed_copies(lego_copy):
    folder, meta = lego_copy
    bad = json.loads(json.dumps(meta))
    bad["frames"][1]["transform_matrix"] = bad["frames"][1]["transform_matrix"][:3]
    _write(folder, bad)
    assert "transforms_train.json frame 1: transform matrix must be 4x4, got shape (3, 4)" in _error(folder)

    bad = json.loads(json.dumps(meta))
    bad["frames"][2]["transform_matrix"][0][3] = float("nan")
    _write(folder, bad)  # json.dumps writes NaN, which Python's json (and many tools) read back
    assert "transforms_train.json frame 2: transform matrix contains NaN" in _error(folder)

    (folder / "transforms_train.json").write_text(json.dumps(meta)[:-20])
    assert "transforms_train.json: not valid JSON" in _error(folder)

    _write(folder, meta)
    assert "transforms_val.json: file not found" in _error(folder, "val")

    bad = {k: v for k, v in meta.items() if k != "camera_angle_x"}
    _write(folder, bad)
    assert "missing key camera_angle_x" in _error(folder)


def test_corrupt_and_missing_images(lego_copy):
    folder, meta = lego_copy
    _write(folder, meta)
    (folder / "train" / "r_1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    message = _error(folder)
    assert "r_1.png" in message and "frame 1" in message

    (folder / "train" / "r_1.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_blender(folder, "train", downscale=16)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1 and "skipped 1 of 3 frames" in str(data_warnings[0].message)
    assert scene.names == ["r_0", "r_2"]

    for frame in meta["frames"]:
        (folder / "train" / (frame["file_path"].split("/")[-1] + ".png")).unlink(missing_ok=True)
    with pytest.warns(DataWarning):
        assert "none of its 3 frames has an image file" in _error(folder)


def test_dnerf_style_time_per_frame(lego_copy):
    """D-NeRF scenes are Blender scenes whose frames carry a `time`; it lands on the cameras in frame order."""
    folder, meta = lego_copy
    for frame, t in zip(meta["frames"], (0.6, 0.0, 0.3)):
        frame["time"] = t
    _write(folder, meta)
    scene = load_blender(folder, "train", downscale=16)
    assert torch.equal(scene.times, torch.tensor([0.6, 0.0, 0.3]))
    assert torch.equal(scene.cameras[1:].time, torch.tensor([0.0, 0.3]))
    del meta["frames"][0]["time"]
    _write(folder, meta)
    assert "2 of 3 frames have a time" in _error(folder)

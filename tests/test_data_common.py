"""Shared data machinery: image reading errors, area resize, distortion model, cache, load_dataset checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ngraphics.cameras.distortion import distort, project_points, undistort, undistort_image
from ngraphics.data import cache as data_cache
from ngraphics.data import detect_format, load_dataset
from ngraphics.data.frames import holdout_indices, parse_c2w, read_json
from ngraphics.data.images import read_image, resize_area
from ngraphics.errors import DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NGRAPHICS_CACHE", str(tmp_path / "cache"))


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- images -----------------------------------------------------------------------------------------------


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "nope.png", "frame 3")
    assert "nope.png" in _one_line(e) and "frame 3" in _one_line(e)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    with pytest.raises(DataError, match="junk.jpg.*cannot decode"):
        read_image(tmp_path / "junk.jpg")


def test_read_image_channels_and_depths(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgba[:, :, [2, 1, 0, 3]])  # OpenCV writes BGRA
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba)
    grey16 = rng.integers(0, 65536, (4, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey16)
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 3, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0], grey16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_area_is_block_mean(dtype):
    rng = np.random.default_rng(1)
    image = (rng.uniform(0, 255, (24, 36, 3))).astype(dtype)
    out = resize_area(image, 9, 6)  # factor 4
    ref = image.astype(np.float64).reshape(6, 4, 9, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=0.51 if dtype == np.uint8 else 1e-3)


def test_resize_area_rgba_premultiplied():
    image = np.zeros((4, 4, 4), np.float32)
    image[:, :2] = [1.0, 0.0, 0.0, 1.0]  # opaque red on the left
    image[:, 2:] = [0.0, 1.0, 0.0, 0.0]  # transparent pixels holding junk green
    out = resize_area(image, 1, 1)[0, 0]
    np.testing.assert_allclose(out, [1.0, 0.0, 0.0, 0.5], atol=1e-6)  # no green bleeds in


# --- distortion -------------------------------------------------------------------------------------------


def test_project_points_matches_opencv():
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.uniform(-1, 1, (50, 2)), rng.uniform(2, 4, (50, 1))], 1)
    K = np.array([[300.0, 0, 161.3], [0, 305.0, 118.7], [0, 0, 1]])
    dist = np.array([-0.21, 0.07, 0.002, -0.0015, 0.01])
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5  # OpenCV puts pixel centres at integers, ngraphics at i + 0.5
    ref, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K_cv, dist)
    ours = project_points(torch.tensor(points), torch.tensor(K), torch.tensor(dist))
    np.testing.assert_allclose(ours.numpy(), ref[:, 0] + 0.5, atol=1e-9)


def test_undistort_inverts_distort():
    rng = np.random.default_rng(3)
    xy = torch.tensor(rng.uniform(-0.5, 0.5, (200, 2)))
    dist = torch.tensor([0.0578, -0.0805, -0.00098, 0.00016, 0.0])  # the fox lens
    np.testing.assert_allclose(undistort(distort(xy, dist), dist).numpy(), xy.numpy(), atol=1e-10)


def test_undistort_image_zero_distortion_is_identity():
    image = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)
    assert undistort_image(image, np.eye(3), np.zeros(5)) is image


# --- poses, json, splits ----------------------------------------------------------------------------------


def test_parse_c2w_checks():
    good = np.eye(4).tolist()
    np.testing.assert_array_equal(parse_c2w(good, "f"), np.eye(4))
    with pytest.raises(DataError, match="where: transform matrix must be 4x4, got shape \\(3, 4\\)"):
        parse_c2w(good[:3], "where")
    bad = np.eye(4)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        parse_c2w(bad.tolist(), "w")
    with pytest.raises(DataError, match="4x4 array of numbers"):
        parse_c2w([[1, 2], [3]], "w")
    bad = np.eye(4)
    bad[3, 0] = 1
    with pytest.raises(DataError, match="last row"):
        parse_c2w(bad, "w")


def test_read_json_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"frames": [1, 2,,]}')
    with pytest.raises(DataError) as e:
        read_json(tmp_path / "bad.json")
    assert "bad.json: not valid JSON (line 1" in _one_line(e)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        read_json(tmp_path / "list.json")


def test_holdout_split_partitions_frames():
    train, test = holdout_indices(20, "train"), holdout_indices(20, "test")
    assert test == [0, 8, 16] and sorted(train + test) == list(range(20))
    assert holdout_indices(20, "val") == test and holdout_indices(20, "all") == list(range(20))


# --- cache ------------------------------------------------------------------------------------------------


def test_cache_key_follows_file_changes(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"abc")
    k1 = data_cache.cache_key("images", [f], {"downscale": 2})
    assert k1 == data_cache.cache_key("images", [f], {"downscale": 2})
    assert k1 != data_cache.cache_key("images", [f], {"downscale": 4})
    f.write_bytes(b"abcd")
    assert k1 != data_cache.cache_key("images", [f], {"downscale": 2})


def test_cache_round_trip_and_off(tmp_path, monkeypatch):
    arrays = {"image/0": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
              "image/1": np.ones((3, 1, 4), np.float32)}
    path = data_cache.save_arrays("k", arrays)
    assert path is not None and path.parent == tmp_path / "cache"
    assert [p.name for p in path.parent.iterdir()] == ["k.safetensors"]  # no temporary file left behind
    back = data_cache.load_arrays("k")
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
    path.write_bytes(b"truncated")
    assert data_cache.load_arrays("k") is None and not path.exists()  # a broken entry is a miss
    monkeypatch.setenv("NGRAPHICS_CACHE", "off")
    assert data_cache.cache_dir() is None and data_cache.save_arrays("k", arrays) is None


# --- load_dataset -----------------------------------------------------------------------------------------


def test_load_dataset_rejects_bad_options(tmp_path):
    with pytest.raises(DataError, match="background: 'pink' is not one of white, black, random"):
        load_dataset(None, background="pink")
    with pytest.raises(DataError, match="downscale"):
        load_dataset(None, downscale=0.5)
    with pytest.raises(DataError, match="split"):
        load_dataset(None, split="training")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "empty")
    assert "unknown dataset layout" in _one_line(e)


def test_detect_format_by_files(tmp_path):
    assert detect_format(None) == "procedural" and detect_format("procedural") == "procedural"
    for name, fmt in [("transforms_train.json", "blender"), ("transforms.json", "instant-ngp"),
                      ("cameras_sphere.npz", "neus"), ("sparse/0/cameras.bin", "colmap")]:
        folder = tmp_path / fmt
        (folder / name).parent.mkdir(parents=True)
        (folder / name).write_bytes(b"{}")
        assert detect_format(folder) == fmt


# --- SceneData ----------------------------------------------------------------------------------------------


def _scene_parts():
    from ngraphics.cameras import Cameras

    cameras = Cameras(torch.eye(4).repeat(2, 1, 1), torch.eye(3).repeat(2, 1, 1), torch.tensor([4, 5]),
                      torch.tensor([3, 2]), time=torch.tensor([0.2, 0.7]))
    return dict(cameras=cameras, images=[torch.rand(3, 4, 3), torch.rand(2, 5, 3)], names=["a", "b"],
                aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))


def test_scene_data_fields_and_shape_checks():
    from ngraphics.data import SceneData

    parts = _scene_parts()
    scene = SceneData(**parts, masks=[torch.ones(3, 4), torch.zeros(2, 5)], points=torch.rand(6, 3),
                      point_colors=torch.rand(6, 3))
    assert scene.times is parts["cameras"].time and not hasattr(scene, "time")
    with pytest.raises(AttributeError):
        scene.times = torch.zeros(2)  # read-only: the time lives on the cameras
    bad = {
        "images": (dict(images=[torch.rand(3, 4, 3), torch.rand(5, 2, 3)]),
                   r"SceneData.images\[1\]: expected \(H, W, 3\|4\) with \(H, W\) = \(2, 5\) from cameras\[1\], "
                   r"got \(5, 2, 3\)"),
        "mixed": (dict(images=[torch.rand(3, 4, 3), torch.rand(2, 5, 4)]), "mixes RGB and RGBA"),
        "count": (dict(names=["a"]), "2 cameras but 2 images and 1 names"),
        "masks": (dict(masks=[torch.ones(3, 4), torch.ones(2, 4)]),
                  r"SceneData.masks\[1\]: expected \(2, 5\) like images\[1\], got \(2, 4\)"),
        "depths": (dict(depths=[torch.ones(3, 4)]), "SceneData.depths: 1 for 2 cameras"),
        "points": (dict(points=torch.rand(6, 2)), r"SceneData.points: expected \(P, 3\), got \(6, 2\)"),
        "colors": (dict(points=torch.rand(6, 3), point_colors=torch.rand(5, 3)),
                   r"SceneData.point_colors: expected \(6, 3\), got \(5, 3\)"),
        "alone": (dict(point_colors=torch.rand(5, 3)), "point_colors: expected points"),
        "background": (dict(background="grey"), "SceneData.background: expected white, black or random"),
    }
    for change, message in bad.values():
        with pytest.raises(DataError, match=message) as e:
            SceneData(**{**parts, **change})
        _one_line(e)

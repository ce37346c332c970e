"""instant-ngp transforms.json loader: the shared fox (missing frames, lens distortion) and synthetic
scenes."""

from __future__ import annotations

import json
import math
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import need_data

from ngraphics.cameras.distortion import distort
from ngraphics.data import DataWarning, load_dataset
from ngraphics.data.images import read_image
from ngraphics.data.instant_ngp import load_instant_ngp
from ngraphics.errors import DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NGRAPHICS_CACHE", str(tmp_path / "cache"))


def _ngp_reference(gl: np.ndarray, scale=0.33, offset=(0.5, 0.5, 0.5)) -> np.ndarray:
    """instant-ngp's nerf_matrix_to_ngp written out per entry: columns 1, 2 negated, position scaled and
    offset, rows cycled (x, y, z) <- (y, z, x)."""
    out = np.eye(4)
    for new_row, old_row in ((0, 1), (1, 2), (2, 0)):
        out[new_row, 0] = gl[old_row, 0]
        out[new_row, 1] = -gl[old_row, 1]
        out[new_row, 2] = -gl[old_row, 2]
        out[new_row, 3] = gl[old_row, 3] * scale + offset[old_row]
    return out


def test_fox_skips_missing_frames_with_one_warning():
    root = need_data("ngp", "fox")
    meta = json.loads((root / "transforms.json").read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_dataset(root, "all", downscale=8, max_frames=3, frame_stride=7)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1 and "skipped 17 of 67 frames" in str(data_warnings[0].message)
    present = [f for f in meta["frames"] if (root / f["file_path"]).is_file()]
    assert len(present) == 50
    chosen = present[::7][:3]
    assert scene.names == [f["file_path"].split("/")[-1][:-4] for f in chosen]
    for c, frame in enumerate(chosen):
        ref = _ngp_reference(np.array(frame["transform_matrix"]))
        np.testing.assert_allclose(scene.cameras.c2w[c].double().numpy(), ref, atol=1e-6)
    K = scene.cameras.K[0]
    assert tuple(scene.images[0].shape) == (240, 135, 3)  # 1920 x 1080 portrait / 8
    torch.testing.assert_close(K,
                               torch.tensor([[meta["fl_x"] / 8, 0, meta["cx"] / 8],
                                             [0, meta["fl_y"] / 8, meta["cy"] / 8],
                                                [0, 0, 1]]), rtol=1e-6, atol=1e-4)
    assert bool((scene.cameras.distortion == 0).all())  # images were undistorted at load
    torch.testing.assert_close(scene.aabb, torch.tensor([[-1.5] * 3, [2.5] * 3]))  # aabb_scale 4 around 0.5
    with pytest.warns(DataWarning):
        contracted = load_instant_ngp(root, "test", downscale=16, max_frames=1, contract=True)
    assert contracted.contract and torch.equal(contracted.aabb, torch.tensor([[0.0] * 3, [1.0] * 3]))


def test_fox_cameras_look_at_the_unit_cube():
    root = need_data("ngp", "fox")
    with pytest.warns(DataWarning):
        scene = load_instant_ngp(root, "train", downscale=16, frame_stride=4)
    o, d = scene.cameras.origins.double(), scene.cameras.c2w[:, :3, 2].double()
    P = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # closest point to all optical axes
    focus = torch.linalg.solve(P.sum(0), (P @ o[:, :, None]).sum(0))[:, 0]
    assert float((focus - 0.5).abs().max()) < 0.15


def test_fox_undistortion_matches_an_independent_resampling():
    root = need_data("ngp", "fox")
    meta = json.loads((root / "transforms.json").read_text())
    with pytest.warns(DataWarning):
        scene = load_instant_ngp(root, "all", downscale=8, max_frames=1)
    source = torch.from_numpy(read_image(root / "images" / "0001.jpg")).double() / 255  # (1920, 1080, 3)
    H, W = source.shape[:2]
    # For each output pixel centre: normalised pinhole coords -> distort -> source pixel; bilinear lookup.
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                          torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    xy = torch.stack([(u - meta["cx"]) / meta["fl_x"], (v - meta["cy"]) / meta["fl_y"]], -1).reshape(-1, 2)
    lens = torch.tensor([meta["k1"], meta["k2"], meta["p1"], meta["p2"], 0.0], dtype=torch.float64)
    xd = distort(xy, lens)
    us, vs = xd[:, 0] * meta["fl_x"] + meta["cx"], xd[:, 1] * meta["fl_y"] + meta["cy"]
    grid = torch.stack([us / W * 2 - 1, vs / H * 2 - 1], -1).reshape(1, H, W, 2)
    resampled = F.grid_sample(source.permute(2, 0, 1)[None], grid, align_corners=False, padding_mode="border")
    ref = F.avg_pool2d(resampled, 8)[0].permute(1, 2, 0)  # area downscale by 8
    ours = scene.images[0].double()
    assert ours.shape == ref.shape
    diff = (ours - ref).abs()
    assert float(diff.mean()) < 0.5 / 255 and float(diff.max()) < 2 / 255  # uint8 rounding only
    plain = torch.from_numpy(cv2.resize(source.numpy(), (W // 8, H // 8), interpolation=cv2.INTER_AREA))
    assert float((plain - ref).abs().mean()) > 3 * float(diff.mean())  # undistortion made a difference


def _tiny_scene(tmp_path, meta_top: dict, frames: list[dict], size=(12, 8)):
    """Write RGB PNGs for the frames and a transforms.json; returns the folder."""
    rng = np.random.default_rng(0)
    (tmp_path / "s" / "img").mkdir(parents=True)
    for i, frame in enumerate(frames):
        frame.setdefault("file_path", f"img/{i}.png")
        frame.setdefault("transform_matrix", np.eye(4).tolist())
        cv2.imwrite(str(tmp_path / "s" / frame["file_path"]),
                    rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    (tmp_path / "s" / "transforms.json").write_text(json.dumps({**meta_top, "frames": frames}))
    return tmp_path / "s"


def test_intrinsics_keys_and_per_frame_overrides(tmp_path):
    angle = 0.9
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    folder = _tiny_scene(tmp_path, {"camera_angle_x": angle, "scale": 0.5, "offset": [0.1, 0.2, 0.3]},
                         [{"transform_matrix": pose.tolist()},
                          {"fl_x": 20.0, "fl_y": 22.0, "cx": 5.0, "cy": 3.5}])
    scene = load_instant_ngp(folder, "all", cache=False)
    f = 0.5 * 12 / math.tan(0.5 * angle)
    torch.testing.assert_close(scene.cameras.K[0], torch.tensor([[f, 0, 6.0], [0, f, 4.0], [0, 0, 1]]))
    torch.testing.assert_close(scene.cameras.K[1], torch.tensor([[20.0, 0, 5.0], [0, 22.0, 3.5], [0, 0, 1]]))
    np.testing.assert_allclose(scene.cameras.c2w[0].numpy(), _ngp_reference(pose, 0.5, (0.1, 0.2, 0.3)),
                               atol=1e-6)
    # an explicit aabb replaces scale/offset so that the box fits [0, 1]^3
    folder2 = _tiny_scene(tmp_path / "b", {"fl_x": 10.0, "aabb": [[-2, -1, 0], [2, 1, 1]]},
                          [{"transform_matrix": pose.tolist()}])
    scene2 = load_instant_ngp(folder2, "all", cache=False)
    np.testing.assert_allclose(scene2.cameras.c2w[0, :3, 3].numpy(),
                               [(2 * 0.25 + 0.5), (3 * 0.25 + 0.375), (1 * 0.25 + 0.5)])


def test_downscale_scales_intrinsics_by_the_exact_size_ratio(tmp_path):
    folder = _tiny_scene(tmp_path, {"fl_x": 30.0, "fl_y": 31.0, "cx": 6.5, "cy": 4.25}, [{}], size=(13, 9))
    scene = load_instant_ngp(folder, "all", downscale=2, cache=False)
    W, H = 13, 9
    w, h = round(W / 2), round(H / 2)  # 6 (6.5 rounds to even), 4
    assert tuple(scene.images[0].shape[:2]) == (h, w)
    torch.testing.assert_close(scene.cameras.K[0],
                               torch.tensor([[30 * w / W, 0, 6.5 * w / W], [0, 31 * h / H, 4.25 * h / H],
                                                                 [0, 0, 1]]))


def test_bad_inputs(tmp_path):
    folder = _tiny_scene(tmp_path, {"fl_x": 10.0, "w": 12, "h": 8}, [{}, {}])
    doc = json.loads((folder / "transforms.json").read_text())

    def error(mutate) -> str:
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        (folder / "transforms.json").write_text(json.dumps(bad))
        with pytest.raises(DataError) as e:
            load_instant_ngp(folder, "all", cache=False)
        assert "\n" not in str(e.value)
        return str(e.value)

    not_4x4 = error(lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]))
    assert "frame 1: transform matrix must be 4x4" in not_4x4
    assert "image is 12x8 but the JSON says w=16.0" in error(lambda d: d.update(w=16))
    assert "no focal length" in error(lambda d: d.pop("fl_x"))
    assert "fl_x must be a finite number" in error(lambda d: d.update(fl_x="big"))
    assert "lens key is_fisheye is not supported" in error(lambda d: d.update(is_fisheye=True))
    assert "expected a 'frames' list" in error(lambda d: d.update(frames={"a": 1}))

    def all_missing(d):
        for frame in d["frames"]:
            frame["file_path"] = "img/gone.png"

    with pytest.warns(DataWarning, match="skipped 2 of 2"):
        assert "none of its 2 frames has an image file" in error(all_missing)
    (folder / "transforms.json").unlink()
    with pytest.raises(DataError, match="no transforms.json"):
        load_instant_ngp(folder, "all")


def test_per_frame_time_becomes_camera_time(tmp_path):
    times = [0.0, 0.8, 0.35, 1.0, 0.5]
    folder = _tiny_scene(tmp_path, {"fl_x": 10.0}, [{"time": t} for t in times])
    scene = load_instant_ngp(folder, "all", cache=False)
    assert torch.equal(scene.times, torch.tensor(times, dtype=torch.float32))
    train = load_instant_ngp(folder, "train", cache=False, holdout=2)  # frames 1, 3
    assert torch.equal(train.times, torch.tensor([0.8, 1.0]))
    assert load_instant_ngp(_tiny_scene(tmp_path / "b", {"fl_x": 10.0}, [{}, {}]), "all").times is None

    doc = json.loads((folder / "transforms.json").read_text())
    del doc["frames"][2]["time"]
    (folder / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="4 of 5 frames have a time, but frame 2 of transforms.json has none"):
        load_instant_ngp(folder, "all", cache=False)
    doc["frames"][2]["time"] = 1.5
    (folder / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"frame 2: time must be in \[0, 1\], got 1.5"):
        load_instant_ngp(folder, "all", cache=False)

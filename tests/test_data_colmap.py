"""COLMAP loader, checked against pycolmap as the independent reference."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import need_data

from ngraphics.cameras.distortion import project_points
from ngraphics.data import DataWarning, load_dataset
from ngraphics.data.colmap import camera_to_opencv, image_c2w, load_colmap, read_model
from ngraphics.errors import DataError

pycolmap = pytest.importorskip("pycolmap")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NGRAPHICS_CACHE", str(tmp_path / "cache"))


def _model_dir():
    return need_data("colmap", "test_colmap", "sparse", "0")


def _c2w_from_pycolmap(image) -> np.ndarray:
    cam_from_world = np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])
    return np.linalg.inv(cam_from_world)


def test_binary_model_matches_pycolmap():
    model, ref = read_model(_model_dir()), pycolmap.Reconstruction(str(_model_dir()))
    assert set(model.cameras) == set(ref.cameras) and set(model.images) == set(ref.images)
    for cid, cam in ref.cameras.items():
        ours = model.cameras[cid]
        assert (ours.model, ours.width, ours.height) == (cam.model.name, cam.width, cam.height)
        np.testing.assert_array_equal(ours.params, cam.params)
    for iid, image in ref.images.items():
        assert model.images[iid].name == image.name and model.images[iid].camera_id == image.camera_id
        np.testing.assert_allclose(image_c2w(model.images[iid]), _c2w_from_pycolmap(image), atol=1e-12)
        np.testing.assert_array_equal(model.images[iid].point3D_ids[model.images[iid].point3D_ids >= 0],
                                      [p.point3D_id for p in image.points2D if p.has_point3D()])
    order = np.argsort(model.point_ids)
    ids = sorted(ref.points3D)
    np.testing.assert_array_equal(model.point_ids[order], ids)
    np.testing.assert_array_equal(model.xyz[order], np.stack([ref.points3D[i].xyz for i in ids]))
    np.testing.assert_array_equal(model.rgb[order], np.stack([ref.points3D[i].color for i in ids]))


def test_shared_scene_loads_with_varying_heights():
    root = need_data("colmap", "test_colmap")
    scene = load_dataset(root, "all", downscale=8, max_frames=6, frame_stride=4)
    ref = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    by_name = {im.name: im for im in ref.images.values()}
    names = sorted(by_name)[::4][:6]
    assert scene.names == [n[:-4] for n in names]
    for c, name in enumerate(names):
        image, cam = by_name[name], ref.cameras[by_name[name].camera_id]
        np.testing.assert_allclose(scene.cameras.c2w[c].double().numpy(), _c2w_from_pycolmap(image),
                                   atol=1e-5)
        w, h = round(cam.width / 8), round(cam.height / 8)
        assert tuple(scene.images[c].shape) == (h, w, 3)
        fx, fy, cx, cy = cam.params
        torch.testing.assert_close(scene.cameras.K[c].double(), torch.tensor(
            [[fx * w / cam.width, 0, cx * w / cam.width], [0, fy * h / cam.height, cy * h / cam.height],
             [0, 0, 1]],
            dtype=torch.float64), rtol=1e-6, atol=1e-4)
    heights = {ref.cameras[im.camera_id].height for im in ref.images.values()}
    assert len(heights) > 1  # why SceneData.images is a list
    points = scene.points
    inside = ((points >= scene.aabb[0]) & (points <= scene.aabb[1])).all(-1).float().mean()
    assert points.shape == (len(ref.points3D), 3) and float(inside) > 0.9
    assert 0 < scene.near < scene.far
    train, test = load_colmap(root, "train", downscale=16), load_colmap(root, "test", downscale=16)
    assert len(train) + len(test) == 23 and not set(train.names) & set(test.names)


def test_points_land_in_the_world_frame_where_colmap_observes_them():
    """pycolmap's points3D, projected through the loaded (downscaled) cameras, fall on the 2D observations
    pycolmap records for them, scaled to the loaded image size; their colours are COLMAP's RGB / 255."""
    root = need_data("colmap", "test_colmap")
    scene = load_colmap(root, "all", downscale=8, max_frames=4, frame_stride=5)
    ref = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    assert scene.points.dtype == torch.float32 and scene.point_colors.dtype == torch.float32
    row = {int(pid): k for k, pid in enumerate(read_model(root / "sparse" / "0").point_ids)}  # file order
    by_name = {Path(im.name).stem: im for im in ref.images.values()}
    assert len(scene.points) == len(ref.points3D) == len(scene.point_colors)
    errors = []
    for c, name in enumerate(scene.names):
        image, cam = by_name[name], ref.cameras[by_name[name].camera_id]
        observed = [p for p in image.points2D if p.has_point3D()]
        assert len(observed) > 20
        xyz = np.stack([ref.points3D[p.point3D_id].xyz for p in observed])
        rows = [row[p.point3D_id] for p in observed]
        np.testing.assert_array_equal(scene.points[rows].numpy(), xyz.astype(np.float32))
        colors = np.stack([ref.points3D[p.point3D_id].color for p in observed]) / 255.0
        np.testing.assert_allclose(scene.point_colors[rows].numpy(), colors, atol=1e-7)
        w2c = torch.linalg.inv(scene.cameras.c2w[c].double())
        p_cam = scene.points[rows].double() @ w2c[:3, :3].T + w2c[:3, 3]
        pixels = project_points(p_cam, scene.cameras.K[c].double()).numpy()
        size = np.array([scene.cameras.width[c], scene.cameras.height[c]], np.float64)
        xy = np.stack([p.xy for p in observed]) * size / [cam.width, cam.height]  # pixel edges map to edges
        errors.append(np.linalg.norm(pixels - xy, axis=1) * 8)  # in source pixels
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.5 and np.percentile(errors, 95) < 1.5  # measured: 0.25, 0.72


def test_text_twin_loads_identically(tmp_path):
    root = need_data("colmap", "test_colmap")
    (tmp_path / "twin" / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(root / "sparse" / "0")).write_text(str(tmp_path / "twin" / "sparse" / "0"))
    (tmp_path / "twin" / "images").symlink_to(root / "images")
    text, binary = read_model(tmp_path / "twin" / "sparse" / "0"), read_model(root / "sparse" / "0")
    for iid, im in binary.images.items():
        np.testing.assert_allclose(image_c2w(text.images[iid]), image_c2w(im), atol=1e-12)
        np.testing.assert_allclose(text.images[iid].xys, im.xys, atol=1e-9)
    for cid, cam in binary.cameras.items():
        np.testing.assert_allclose(text.cameras[cid].params, cam.params, rtol=1e-15)
    np.testing.assert_allclose(text.xyz[np.argsort(text.point_ids)], binary.xyz[np.argsort(binary.point_ids)],
                               atol=1e-12)
    a = load_colmap(tmp_path / "twin", "test", downscale=16)
    b = load_colmap(root, "test", downscale=16)
    assert torch.equal(a.cameras.c2w, b.cameras.c2w) and torch.equal(a.cameras.K, b.cameras.K)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))


MODELS = {
    "SIMPLE_PINHOLE": [2000.0, 500.0, 330.0],
    "PINHOLE": [2010.0, 1990.0, 505.0, 328.0],
    "SIMPLE_RADIAL": [2000.0, 500.0, 330.0, -0.12],
    "RADIAL": [2000.0, 500.0, 330.0, -0.1, 0.05],
    "OPENCV": [2010.0, 1990.0, 505.0, 328.0, -0.1, 0.05, 0.001, -0.002],
}


@pytest.mark.parametrize("binary", [True, False])
def test_projection_matches_pycolmap_for_every_supported_model(tmp_path, binary):
    rec = pycolmap.Reconstruction(str(_model_dir()))
    names = list(MODELS)
    for k, cam in enumerate(rec.cameras.values()):
        name = names[k % len(names)]
        cam.model = getattr(pycolmap.CameraModelId, name)
        cam.params = MODELS[name]
    (rec.write_binary if binary else rec.write_text)(str(tmp_path))
    model = read_model(tmp_path)
    seen = set()
    for iid, image in rec.images.items():
        cam = rec.cameras[image.camera_id]
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        xyz = np.stack([rec.points3D[i].xyz for i in ids])
        ref = cam.img_from_cam(image.cam_from_world() * xyz)  # pycolmap: world -> camera -> pixels
        ours_cam = model.cameras[image.camera_id]
        K, dist = camera_to_opencv(ours_cam)
        w2c = np.linalg.inv(image_c2w(model.images[iid]))
        points_cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
        ours = project_points(torch.tensor(points_cam), torch.tensor(K), torch.tensor(dist)).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-6)
        seen.add(ours_cam.model)
    assert seen == set(MODELS)


def test_undistorted_images_put_points_at_their_pinhole_projection(tmp_path):
    """Render dots where pycolmap projects points through a distorted OPENCV camera; after the loader
    undistorts the image, each dot must sit at the pinhole projection with the same K."""
    rng = np.random.default_rng(0)
    W, H = 160, 120
    params = [150.0, 152.0, 81.0, 59.5, -0.25, 0.08, 0.002, -0.003]
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV", width=W, height=H, params=params,
                                                    camera_id=1))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="dots.png", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0, 0, 0, 1.0])),
                                                      np.zeros(3)))
    gx, gy = np.meshgrid(np.linspace(-0.42, 0.42, 4), np.linspace(-0.3, 0.3, 3))
    xyz = np.stack([gx.ravel(), gy.ravel(), np.ones(12)], 1) + rng.uniform(-0.02, 0.02, (12, 3))
    for p in xyz:
        rec.add_point3D(p, pycolmap.Track(), np.zeros(3, np.uint8))
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    rec.write_binary(str(tmp_path / "sparse" / "0"))
    cam = rec.cameras[1]
    distorted = np.stack([cam.img_from_cam(p) for p in xyz])
    v, u = np.mgrid[0:H, 0:W] + 0.5
    image = np.zeros((H, W))
    for du, dv in distorted:
        image += np.exp(-((u - du) ** 2 + (v - dv) ** 2) / (2 * 1.3**2))
    cv2.imwrite(str(tmp_path / "images" / "dots.png"), np.clip(image * 255, 0, 255).astype(np.uint8))

    scene = load_colmap(tmp_path, "all", cache=False)
    assert bool((scene.cameras.distortion == 0).all())
    K = scene.cameras.K[0].double().numpy()
    undistorted = scene.images[0][..., 0].double().numpy()
    pinhole = xyz[:, :2] / xyz[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    shift = np.abs(pinhole - distorted).max()
    assert shift > 3  # the lens moves the dots by pixels, so the check below has teeth
    for pu, pv in pinhole:
        near = (u - pu) ** 2 + (v - pv) ** 2 < 4.0**2
        weight = undistorted * near
        centroid = np.array([(weight * u).sum(), (weight * v).sum()]) / weight.sum()
        assert np.abs(centroid - [pu, pv]).max() < 0.1  # a half-pixel convention slip would show as 0.5


def test_bad_models(tmp_path):
    for sub in ("t", "b", "f/sparse/0"):
        (tmp_path / sub).mkdir(parents=True)
    rec = pycolmap.Reconstruction(str(_model_dir()))
    rec.write_text(str(tmp_path / "t"))
    lines = (tmp_path / "t" / "cameras.txt").read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1])  # one parameter short
    (tmp_path / "t" / "cameras.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match="cameras.txt line 4: PINHOLE needs 4 parameters, got 3"):
        read_model(tmp_path / "t")

    rec.write_binary(str(tmp_path / "b"))
    data = (tmp_path / "b" / "images.bin").read_bytes()
    (tmp_path / "b" / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="images.bin: file is truncated"):
        read_model(tmp_path / "b")

    fisheye = pycolmap.Reconstruction(str(_model_dir()))
    for cam in fisheye.cameras.values():
        cam.model = pycolmap.CameraModelId.OPENCV_FISHEYE
        cam.params = [2000.0, 2000.0, 500.0, 330.0, 0.01, 0.0, 0.0, 0.0]
    fisheye.write_binary(str(tmp_path / "f" / "sparse" / "0"))
    (tmp_path / "f" / "images").symlink_to(need_data("colmap", "test_colmap", "images"))
    with pytest.raises(DataError, match="model OPENCV_FISHEYE is not supported"):
        load_colmap(tmp_path / "f", "test")

    (tmp_path / "f" / "images").unlink()
    (tmp_path / "f" / "images").mkdir()
    for name in ("DSC_5283.jpg", "DSC_5284.jpg"):
        (tmp_path / "f" / "images" / name).symlink_to(need_data("colmap", "test_colmap", "images", name))
    pinhole = pycolmap.Reconstruction(str(_model_dir()))
    pinhole.write_binary(str(tmp_path / "f" / "sparse" / "0"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_colmap(tmp_path / "f", "all", downscale=16)
    assert len(scene) == 2
    messages = [str(w.message).split(": ", 1)[1][:24] for w in caught if w.category is DataWarning]
    assert messages == ["skipped 21 of 23 frames "]

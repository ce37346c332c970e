"""The procedural default scene: ground truth (depth, mask, mesh) agrees with the analytic SDF."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ngraphics.data import ProceduralScene, load_dataset, load_procedural, render_views
from ngraphics.data.procedural import orbit_cameras


@pytest.fixture(scope="module")
def small():
    return load_procedural("train", resolution=32, n_views=6, mesh_resolution=64)


def _centre_rays(scene, i):
    origins, dirs = scene.cameras.image_rays(i)
    return origins.double(), dirs.double()


def test_depth_points_lie_on_the_surface(small):
    sdf = small.meta["scene"].sdf
    total = 0
    for i in range(len(small)):
        origins, dirs = _centre_rays(small, i)
        depth, mask = small.depths[i].reshape(-1).double(), small.masks[i].reshape(-1) > 0
        forward = small.cameras.c2w[i, :3, 2].double()
        points = origins + (depth / (dirs @ forward))[:, None] * dirs  # z-depth -> distance along the ray
        assert float(sdf(points[mask]).abs().max()) < 2e-4
        assert bool((depth[~mask] == 0).all()) and bool((depth[mask] > 1.5).all())
        total += int(mask.sum())
    assert total > 200


def test_missed_rays_never_enter_an_object(small):
    """Dense samples along every pixel-centre ray that the mask calls a miss stay outside all objects."""
    sdf = small.meta["scene"].sdf
    steps = torch.linspace(1.5, 6.0, 600, dtype=torch.float64)  # 7.5 mm apart; thinnest part is 24 cm
    for i in range(0, len(small), 2):
        origins, dirs = _centre_rays(small, i)
        miss = small.masks[i].reshape(-1) == 0
        o, d = origins[miss], dirs[miss]
        points = (o[:, None, :] + steps[None, :, None] * d[:, None, :]).reshape(-1, 3)
        assert float(sdf(points).min()) > -1e-3


def test_mesh_vertices_on_the_zero_level_set(small):
    vertices, faces = small.surface
    scene = small.meta["scene"]
    voxel = 2.4 / 63
    assert vertices.shape[0] > 1000 and faces.shape[1] == 3 and int(faces.max()) < vertices.shape[0]
    assert float(scene.sdf(vertices.double()).abs().max()) < 0.1 * voxel
    # faces wind outward: their normals agree with the SDF gradient at their centres
    tri = vertices[faces].double()
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    agree = (normal * scene.normal(tri.mean(1))).sum(-1) > 0
    assert float(agree.double().mean()) > 0.99


def test_images_alpha_and_background(small):
    images = torch.stack(small.images)
    assert images.shape == (6, 32, 32, 4) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert float((images[1:] - images[:-1]).abs().mean()) > 0.02  # views differ
    alpha = images[..., 3]
    assert bool(((alpha > 0) & (alpha < 1)).any())  # anti-aliased edges: alpha is coverage
    masks = torch.stack(small.masks)
    assert float((alpha - masks).abs().mean()) < 0.05  # coverage and centre hits differ only along edges
    assert bool((alpha[masks == 1] > 0).all())
    white, black = small.rgb_on(0, (1.0, 1.0, 1.0)), small.rgb_on(0, (0.0, 0.0, 0.0))
    empty, full = small.images[0][..., 3] == 0, small.images[0][..., 3] == 1
    assert bool((white[empty] == 1).all()) and bool((black[empty] == 0).all())
    assert torch.equal(white[full], black[full])
    assert small.background == "white"
    scene = load_procedural("test", resolution=8, n_views=1, background="random", mesh_resolution=0)
    assert scene.background == "random"


def test_deterministic_given_seed():
    a = load_procedural("val", resolution=16, n_views=2, seed=3, mesh_resolution=0)
    b = load_procedural("val", resolution=16, n_views=2, seed=3, mesh_resolution=0)
    c = load_procedural("val", resolution=16, n_views=2, seed=4, mesh_resolution=0)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert torch.equal(a.cameras.c2w, b.cameras.c2w)
    assert not torch.equal(a.images[0], c.images[0])
    train = orbit_cameras(8, 16, "train", seed=3)
    assert float(torch.cdist(train.origins, a.cameras.origins).min()) > 1e-3  # splits do not share views


def test_cameras_look_at_the_origin():
    cams = orbit_cameras(5, 20, "test", seed=0)
    R = cams.c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(5, 3, 3), atol=1e-6, rtol=0)
    assert bool((torch.linalg.det(R) > 0).all())
    to_origin = -cams.origins / cams.origins.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(R[:, :, 2], to_origin, atol=1e-6, rtol=0)
    assert bool((R[:, 2, 1] < 0).all())  # image "down" points down in the world (+z is up)


def test_dynamic_scene_moves_and_stays_consistent():
    scene = ProceduralScene(seed=0, dynamic=True)
    p = torch.tensor([[0.45, 0.35, 0.55]], dtype=torch.float64)  # just above the sphere's resting top (0.44)
    assert float(scene.sdf(p, 0.25)) < 0 < float(scene.sdf(p, 0.75))  # the sphere bobs up, then down
    assert float(ProceduralScene(0, dynamic=False).sdf(p, 0.25)) > 0  # static scenes ignore time
    cams = orbit_cameras(2, 24, "test", seed=1)
    views = render_views(scene, cams, time=torch.tensor([0.0, 0.6]))
    for i, t in enumerate([0.0, 0.6]):
        origins, dirs = cams.image_rays(i)
        mask = views["mask"][i].reshape(-1) > 0
        z = views["depth"][i].reshape(-1)[mask].double()
        d = dirs[mask].double()
        points = origins[mask].double() + (z / (d @ cams.c2w[i, :3, 2].double()))[:, None] * d
        assert float(scene.sdf(points, t).abs().max()) < 2e-4
    data = load_procedural("train", resolution=8, n_views=4, dynamic=True)
    assert data.times is data.cameras.time and data.times.shape == (4,) and data.surface is None
    assert bool((data.times[1:] > data.times[:-1]).all())
    assert 0 <= float(data.times.min()) and float(data.times.max()) <= 1
    # each view is rendered at its camera's time: view 2 equals a render of that camera alone at that time
    alone = render_views(data.meta["scene"], data.cameras[2], float(data.times[2]))
    torch.testing.assert_close(alone["rgba"][0], data.images[2])
    strided = load_procedural("train", resolution=8, n_views=4, dynamic=True, frame_stride=2)
    assert torch.equal(strided.times, data.times[::2])
    assert load_procedural("train", resolution=8, n_views=4, mesh_resolution=0).times is None


def test_load_dataset_default_is_procedural():
    data = load_dataset(None, "test", max_frames=2, mesh_resolution=0)
    assert data.meta["format"] == "procedural" and data.images[0].shape == (80, 80, 4)
    data = load_dataset("procedural", "val", downscale=4, n_views=1, mesh_resolution=0)
    assert data.images[0].shape == (20, 20, 4)
    f = data.cameras.K[0, 0, 0]
    assert math.isclose(float(f), 10 / math.tan(math.radians(18)), rel_tol=1e-5)
    normals = data.meta["normals"][0][data.masks[0] > 0]
    np.testing.assert_allclose(normals.norm(dim=-1).numpy(), 1, atol=1e-5)

"""Rendered views of mesh files: ray-triangle hits, depths on the true surface, the scene -> file frame."""

from __future__ import annotations

import pytest
import torch
from conftest import need_data

from ngraphics.data import load_dataset
from ngraphics.data.mesh_scene import intersect, load_mesh_scene, rasterize, sphere_cameras
from ngraphics.errors import DataError
from ngraphics.metrics.geometry import nearest, sample_surface

pytest.importorskip("trimesh")


def test_intersect_a_triangle_and_miss_it():
    vertices = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 2.0], [1.0, 0.0, 2.0],
                             [0.0, 1.0, 2.0]])
    faces = torch.tensor([[3, 4, 5], [0, 1, 2]])  # the farther one first: the nearest hit wins
    origins = torch.tensor([[0.2, 0.2, 0.0], [0.8, 0.8, 0.0], [0.2, 0.2, 5.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    t, face = intersect(origins, dirs, vertices, faces, chunk=2)
    assert face.tolist() == [1, -1, 0]
    assert t[0] == pytest.approx(1.0) and torch.isinf(t[1]) and t[2] == pytest.approx(3.0)


class _AllTriangles:
    """A stand-in for trimesh's rtree index: every triangle is a candidate for every ray (brute force)."""

    def __init__(self, triangles):
        import numpy as np

        self.n = len(triangles)
        points = triangles.reshape(-1, 3)
        self.bounds = np.concatenate([points.min(0), points.max(0)])

    def intersection(self, bounds):
        return range(self.n)


def test_rasterizer_matches_trimesh_ray_casting():
    """Nearest face and distance under every pixel centre, against trimesh's ray-triangle caster (float64, its
    own code path; rtree is not installed, so every triangle is a candidate) and our brute-force `intersect`:
    three overlapping shapes (occlusion, concave gaps), three views, chunks smaller than one view."""
    import numpy as np
    import trimesh
    from trimesh.ray.ray_triangle import ray_triangle_id

    mesh = trimesh.util.concatenate([
        trimesh.creation.icosphere(1, radius=0.4),
        trimesh.creation.box((0.5, 0.9, 0.3)).apply_translation((0.3, 0.1, 0.2)),
        trimesh.creation.capsule(0.8, 0.15, count=[8, 8]).apply_translation((-0.3, 0.0, 0.0))])
    vertices, faces = torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces)
    cameras = sphere_cameras(3, 23, "train")
    hits = 0
    for i in range(3):
        t, face = rasterize(vertices, faces, cameras.c2w[i], cameras.K[i], 23, 23, budget=300)
        origins, dirs = cameras.image_rays(i)
        tri, ray, location = ray_triangle_id(mesh.triangles, origins.double().numpy(), dirs.double().numpy(),
                                             tree=_AllTriangles(mesh.triangles), multiple_hits=False)
        expected_face = np.full(len(origins), -1)
        expected_face[ray] = tri
        expected_t = np.full(len(origins), np.inf)
        expected_t[ray] = ((location - origins.double().numpy()[ray]) * dirs.double().numpy()[ray]).sum(-1)
        np.testing.assert_allclose(t.numpy(), expected_t, atol=1e-5, rtol=0)  # same hits, same distances
        # the same face, except for pixel centres on an edge two faces share (same distance, either is right)
        differ = face.numpy() != expected_face
        assert differ.mean() < 0.03 and bool((face.numpy()[differ] >= 0).all() and (expected_face[differ] >= 0).all())
        t_ref, _ = intersect(origins, dirs, vertices, faces)
        torch.testing.assert_close(t, t_ref, atol=1e-5, rtol=0)
        hits += int((face >= 0).sum())
    assert 0.1 * 3 * 23 * 23 < hits < 0.6 * 3 * 23 * 23


def test_rasterizer_skips_faces_behind_the_camera():
    vertices = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0], [-1.0, -1.0, -1.0],
                             [1.0, -1.0, -1.0], [0.0, 1.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])  # the second crosses the camera plane
    K = torch.tensor([[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]])
    t, face = rasterize(vertices, faces, torch.eye(4), K, 8, 8)
    assert set(face.tolist()) == {0, -1} and float(t[face == 0].min()) >= 2.0 - 1e-5


def _cube_file(tmp_path):
    import trimesh

    path = tmp_path / "cube.ply"
    box = trimesh.creation.box(extents=(2.0, 4.0, 2.0))
    box.apply_translation([5.0, 0.0, 0.0])
    box.export(path)
    return path


def test_mesh_scene_depths_lie_on_the_surface(tmp_path):
    scene = load_mesh_scene(_cube_file(tmp_path), "train", resolution=16, n_views=3)
    assert len(scene) == 3 and scene.has_alpha and scene.masks is not None
    vertices, faces = scene.surface
    assert float(vertices.norm(dim=-1).max()) == pytest.approx(0.8, abs=1e-5)  # fits the radius-0.8 sphere
    surface_points, _ = sample_surface(vertices, faces, 20_000)
    for i in range(3):
        origins, dirs = scene.cameras.image_rays(i)
        hit = scene.masks[i].reshape(-1) > 0
        assert hit.any() and not hit.all()
        z = scene.depths[i].reshape(-1)[hit]
        t = z / (dirs[hit] @ scene.cameras.c2w[i, :3, 2])
        points = origins[hit] + t[:, None] * dirs[hit]
        # the box's faces: |x| = 0.8 / sqrt(6) * 1 etc.; every hit lies on one of them
        half = torch.tensor([1.0, 2.0, 1.0]) * 0.8 / 6**0.5
        on_face = ((points.abs() - half).abs() < 1e-4) & (points.abs() <= half + 1e-4)
        assert bool(on_face.any(-1).all())
        assert float(nearest(points, surface_points)[0].max()) < 0.05
    # scale_mat maps the scene frame back to the file's coordinates
    m = torch.as_tensor(scene.meta["scale_mat"])
    back = vertices.double() @ m[:3, :3].T + m[:3, 3]
    assert float(back[:, 0].min()) == pytest.approx(4.0, abs=1e-5) and float(back[:, 1].max()) == pytest.approx(2.0)


def test_load_dataset_detects_mesh_files_and_splits_differ(tmp_path):
    path = _cube_file(tmp_path)
    train = load_dataset(path, "train", resolution=8, n_views=2)
    test = load_dataset(path, "test", resolution=8, n_views=2)
    assert train.meta["format"] == "mesh" and not torch.equal(train.cameras.c2w, test.cameras.c2w)
    cams = sphere_cameras(5, 8, "train")
    assert torch.allclose(cams.origins.norm(dim=-1), torch.full((5,), 3.0))
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not a mesh\n")
    with pytest.raises(DataError):
        load_mesh_scene(bad)
    flat = tmp_path / "flat.obj"  # every triangle has zero area (collinear vertices)
    flat.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n")
    with pytest.raises(DataError, match="degenerate"):
        load_mesh_scene(flat)
    empty = tmp_path / "empty.obj"
    empty.write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(DataError, match="no triangles"):
        load_mesh_scene(empty)


def test_bunny_renders():
    path = need_data("meshes", "bunny.obj")
    scene = load_mesh_scene(path, "test", resolution=16, n_views=1)
    coverage = float(scene.masks[0].mean())
    assert 0.05 < coverage < 0.9 and scene.surface[1].shape[0] > 1000


@pytest.mark.gpu
def test_rasterizer_on_cuda_matches_the_cpu():
    """The Armadillo at 256x256 on the GPU and the CPU: the same hits and distances (ties on shared edges aside)."""
    from ngraphics.data.mesh_scene import normalisation, read_mesh

    file_vertices, faces = read_mesh(need_data("meshes", "armadillo.obj"))
    m = normalisation(file_vertices)
    vertices = ((file_vertices - m[:3, 3]) / m[0, 0]).float()
    cameras = sphere_cameras(2, 256, "train")
    for i in range(2):
        t_cpu, face_cpu = rasterize(vertices, faces, cameras.c2w[i], cameras.K[i], 256, 256)
        t_gpu, face_gpu = rasterize(vertices.cuda(), faces.cuda(), cameras.c2w[i].cuda(), cameras.K[i].cuda(), 256, 256)
        torch.testing.assert_close(t_gpu.cpu(), t_cpu, atol=1e-4, rtol=0)
        assert float((face_gpu.cpu() != face_cpu).float().mean()) < 0.01

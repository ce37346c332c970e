"""Mesh extraction and files: marching cubes of analytic SDFs, round trips through trimesh, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ngraphics.errors import ConfigError, DataError
from ngraphics.export import mesh as mesh_module
from ngraphics.export.mesh import Mesh, color_vertices, marching_cubes_sdf, write_mesh

trimesh = pytest.importorskip("trimesh")
BOX = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]


def sphere_sdf(centre=(0.0, 0.0, 0.0), radius=0.5):
    c = torch.tensor(centre)
    return lambda x: (x - c).norm(dim=-1) - radius


def test_marching_cubes_of_a_sphere_lies_on_it_and_faces_outward():
    mesh = marching_cubes_sdf(sphere_sdf(), BOX, resolution=48, chunk=5000)  # several chunks
    r = mesh.vertices.double().norm(dim=-1)
    assert float((r - 0.5).abs().max()) < 0.01  # well inside one cell (2 / 47)
    v = mesh.vertices.double()[mesh.faces]
    normals = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert float(((normals * v.mean(1)).sum(-1) > 0).double().mean()) > 0.99  # outward
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.03)


@pytest.mark.parametrize("fmt", ["ply", "obj", "glb"])
def test_files_read_back(tmp_path, fmt):
    mesh = marching_cubes_sdf(sphere_sdf(), BOX, resolution=24)
    mesh = color_vertices(mesh, lambda x: (x + 1) / 2)
    path = write_mesh(mesh, tmp_path / f"sphere.{fmt}")
    back = trimesh.load(str(path), force="mesh", process=False)
    assert len(back.faces) == mesh.faces.shape[0]
    assert back.area == pytest.approx(mesh.to_trimesh().area, rel=1e-4)
    if fmt == "ply":
        assert len(back.vertices) == mesh.vertices.shape[0]
        colors = np.asarray(back.visual.vertex_colors)[:, :3] / 255.0
        np.testing.assert_allclose(colors, ((mesh.vertices.numpy() + 1) / 2).clip(0, 1), atol=1 / 255 + 1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [f"sphere.{fmt}"]  # no temporary file left


def test_largest_component_and_world_transform():
    two = lambda x: torch.minimum(sphere_sdf((-0.5, 0, 0), 0.3)(x), sphere_sdf((0.6, 0, 0), 0.2)(x))  # noqa: E731
    mesh = marching_cubes_sdf(two, BOX, resolution=40)
    big = mesh.largest_component()
    assert 0 < big.faces.shape[0] < mesh.faces.shape[0]
    assert float(big.vertices[:, 0].max()) < 0.0  # the left sphere (radius 0.3) is the larger
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = [10.0, 0.0, -1.0]
    world = big.transformed(scale)
    torch.testing.assert_close(world.vertices, big.vertices * 2 + torch.tensor([10.0, 0.0, -1.0]))
    mirrored = big.transformed(np.diag([-1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(mirrored.faces, big.faces.flip(-1))  # winding kept outward


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="never crosses zero.*miss the object"):
        marching_cubes_sdf(sphere_sdf(), [[2, 2, 2], [3, 3, 3]], resolution=16)
    with pytest.raises(DataError, match="inside the surface everywhere"):
        marching_cubes_sdf(sphere_sdf(radius=5.0), BOX, resolution=16)
    with pytest.raises(ConfigError, match="max > min"):
        marching_cubes_sdf(sphere_sdf(), [[1, 0, 0], [0, 1, 1]], resolution=16)
    monkeypatch.setattr(mesh_module, "available_memory", lambda: 1 << 20)
    with pytest.raises(ConfigError, match="lower the resolution"):
        marching_cubes_sdf(sphere_sdf(), BOX, resolution=512)
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(DataError, match="empty"):
        write_mesh(empty, tmp_path / "empty.ply")
    flat = Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(DataError, match="degenerate"):
        write_mesh(flat, tmp_path / "flat.ply")
    with pytest.raises(ConfigError, match="not one of"):
        write_mesh(flat, tmp_path / "flat.stl")
    assert list(tmp_path.iterdir()) == []

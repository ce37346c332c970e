"""Geometry metrics against analytic values: a sphere and a scaled sphere are |s - 1| r apart everywhere."""

from __future__ import annotations

import pytest
import torch

from ngraphics.errors import DataError
from ngraphics.metrics.geometry import mesh_metrics, nearest, point_metrics, sample_surface

trimesh = pytest.importorskip("trimesh")


def _sphere(radius: float, subdivisions: int = 5):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def test_sphere_vs_scaled_sphere_matches_the_analytic_offset():
    inner, outer = _sphere(1.0), _sphere(1.1)
    m = mesh_metrics(inner, outer, threshold=0.05, n_points=60_000)
    # exact: 0.1 both ways; sampling adds ~ (spacing / 2)^2 / (2 * 0.1) ~ 0.0005
    assert m["accuracy"] == pytest.approx(0.1, rel=0.02)
    assert m["completeness"] == pytest.approx(0.1, rel=0.02)
    assert m["chamfer_l1"] == pytest.approx(0.1, rel=0.02)
    assert m["normal_consistency"] > 0.99
    assert m["fscore"] == 0.0  # every point is 0.1 > 0.05 away
    assert mesh_metrics(inner, outer, threshold=0.15, n_points=20_000)["fscore"] == 1.0


def test_mesh_against_points_and_itself():
    sphere = _sphere(0.5, 4)
    points, _ = sample_surface(*_sphere(0.6, 4), 20_000, seed=3)
    m = mesh_metrics(sphere, points.float(), threshold=0.01, n_points=20_000)
    assert m["chamfer_l1"] == pytest.approx(0.1, rel=0.03) and "normal_consistency" not in m
    same = mesh_metrics(sphere, sphere, threshold=0.02, n_points=20_000)
    assert same["chamfer_l1"] < 0.01 and same["fscore"] > 0.95


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(300, 3, generator=g), torch.rand(500, 3, generator=g)
    d, i = nearest(q, r)
    full = torch.cdist(q.double(), r.double())
    torch.testing.assert_close(d, full.min(-1).values)
    torch.testing.assert_close(full.gather(1, i[:, None])[:, 0], d)


def test_uniform_sampling_covers_area_proportionally():
    # two triangles: area 1/2 and 2 (scaled by 2): samples split 1 : 4
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [7, 0, 0], [5, 2, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    p, n = sample_surface(v, f, 50_000)
    share = float((p[:, 0] >= 5).double().mean())
    assert share == pytest.approx(0.8, abs=0.01)
    assert torch.allclose(n.abs(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(n))


def test_bad_meshes_are_one_line_errors():
    with pytest.raises(DataError, match="empty"):
        sample_surface(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), 10)
    with pytest.raises(DataError, match="degenerate"):
        sample_surface(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 10)
    with pytest.raises(DataError, match="empty point set"):
        point_metrics(torch.zeros(0, 3), torch.zeros(4, 3), 0.1)

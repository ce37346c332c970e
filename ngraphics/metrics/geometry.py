"""Surface reconstruction metrics: Chamfer-L1 (both directions and their mean), normal consistency, F-score.

    result = mesh_metrics((pred_vertices, pred_faces), (gt_vertices, gt_faces), threshold=0.01)
    result["chamfer_l1"], result["accuracy"], result["completeness"], result["normal_consistency"], result["fscore"]

Both surfaces are sampled uniformly by area (`sample_surface`, a fixed seed), or given as points. With
P the prediction's samples and G the ground truth's:

    accuracy      = mean_{p in P} min_{g in G} |p - g|      (precision side: is the prediction on the truth?)
    completeness  = mean_{g in G} min_{p in P} |p - g|      (recall side: is the truth covered?)
    chamfer_l1    = (accuracy + completeness) / 2           (DTU's "overall", NeuS/NeuS2's Chamfer)
    precision / recall = fraction of P / G within `threshold` of the other; fscore = their harmonic mean
    normal_consistency = mean over both directions of |<n_p, n_g>| at nearest neighbours (meshes only)

Nearest neighbours: scipy's cKDTree when scipy is installed, else torch.cdist in chunks.
Distances are to the other surface's samples, so they overestimate the point-to-surface distance by at most
about the sample spacing (sqrt(area / n)): sample densely enough for the threshold you care about.
"""

from __future__ import annotations

import numpy as np
import torch

from ngraphics.errors import DataError


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor, what: str) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise DataError(f"{what}: expected vertices (V, 3) and faces (F, 3), got {tuple(vertices.shape)} and "
                        f"{tuple(faces.shape)}")
    if faces.shape[0] == 0 or vertices.shape[0] == 0:
        raise DataError(f"{what}: the mesh is empty")


def face_areas_normals(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-face area (F,) and unit normal (F, 3) (counter-clockwise winding; degenerate faces get 0)."""
    v = vertices.double()[faces]
    cross = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    norm = cross.norm(dim=-1)
    return 0.5 * norm, cross / norm.clamp_min(1e-20)[:, None]


def sample_surface(vertices: torch.Tensor, faces: torch.Tensor, n: int, seed: int = 0,
                   what: str = "mesh") -> tuple[torch.Tensor, torch.Tensor]:
    """n points uniformly by area on a triangle mesh and the normals of their faces.

    vertices (V, 3) float, faces (F, 3) int64 -> points (n, 3) float64, normals (n, 3) float64.
    A mesh of zero area is a DataError naming `what`.
    """
    _check_mesh(vertices, faces, what)
    areas, normals = face_areas_normals(vertices, faces)
    total = float(areas.sum())
    if not total > 0:
        raise DataError(f"{what}: the mesh is degenerate (zero surface area)")
    g = torch.Generator().manual_seed(seed)
    face = torch.multinomial(areas / total, n, replacement=True, generator=g)
    r1, r2 = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    s = r1.sqrt()
    w = torch.stack([1 - s, s * (1 - r2), s * r2], -1)  # uniform barycentric coordinates
    v = vertices.double()[faces[face]]
    return (w[:, :, None] * v).sum(1), normals[face]


def nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance from each query point to its nearest reference point, and that point's index.

    query (Q, 3), reference (P, 3) float -> distances (Q,) float64, indices (Q,) int64.
    """
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        d, i = cKDTree(reference.double().numpy()).query(query.double().numpy(), k=1)
        return torch.from_numpy(np.asarray(d, dtype=np.float64)), torch.from_numpy(np.asarray(i, dtype=np.int64))
    ds, idx = [], []
    ref = reference.double()
    for s in range(0, query.shape[0], chunk):
        d = torch.cdist(query[s : s + chunk].double(), ref)
        best = d.min(-1)
        ds.append(best.values)
        idx.append(best.indices)
    return torch.cat(ds), torch.cat(idx)


def point_metrics(pred: torch.Tensor, gt: torch.Tensor, threshold: float, pred_normals: torch.Tensor | None = None,
                  gt_normals: torch.Tensor | None = None) -> dict[str, float]:
    """Chamfer-L1, F-score (and normal consistency with normals) between two point sets (module docstring).

    pred (P, 3), gt (G, 3) float; threshold: F-score distance, same units; normals (P, 3) / (G, 3) unit.
    Returns {"accuracy", "completeness", "chamfer_l1", "precision", "recall", "fscore"[, "normal_consistency"]}.
    """
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        raise DataError("geometry metrics: an empty point set")
    d_pg, i_pg = nearest(pred, gt)
    d_gp, i_gp = nearest(gt, pred)
    accuracy, completeness = float(d_pg.mean()), float(d_gp.mean())
    precision = float((d_pg < threshold).double().mean())
    recall = float((d_gp < threshold).double().mean())
    out = {"accuracy": accuracy, "completeness": completeness, "chamfer_l1": 0.5 * (accuracy + completeness),
           "precision": precision, "recall": recall,
           "fscore": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)}
    if pred_normals is not None and gt_normals is not None:
        a = (pred_normals.double() * gt_normals.double()[i_pg]).sum(-1).abs().mean()
        b = (gt_normals.double() * pred_normals.double()[i_gp]).sum(-1).abs().mean()
        out["normal_consistency"] = float(0.5 * (a + b))
    return out


def mesh_metrics(pred: tuple[torch.Tensor, torch.Tensor], gt: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
                 threshold: float, n_points: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Geometry metrics between a predicted mesh and the ground truth (a mesh or a point set).

    pred: (vertices (V, 3), faces (F, 3)); gt: a mesh tuple like pred, or points (G, 3) (then no normal
    consistency); threshold: F-score distance; n_points: samples per mesh.
    """
    p, pn = sample_surface(*pred, n_points, seed, "predicted mesh")
    if isinstance(gt, torch.Tensor):
        return point_metrics(p, gt.double(), threshold)
    g, gn = sample_surface(*gt, n_points, seed + 1, "ground-truth mesh")
    return point_metrics(p, g, threshold, pn, gn)


__all__ = ["face_areas_normals", "mesh_metrics", "nearest", "point_metrics", "sample_surface"]

"""Meshes from signed distance fields: marching cubes over the SDF sampled in chunks, optional largest
component, vertex colours, a world-coordinate transform, and ply / obj / glb files written atomically.

    vertices, faces = marching_cubes_sdf(field.sdf, bounds, resolution=512)
    mesh = Mesh(vertices, faces).largest_component().transformed(scale_mat)
    write_mesh(mesh, "scan65.ply")

The SDF is evaluated on the grid in chunks of z-slices (on the field's device: the encoding's Triton kernels on
CUDA), gathered in one float32 array on the CPU, and handed to scikit-image's `marching_cubes` (Lewiner).
Every failure is a one-line DataError / ConfigError before anything is written: an SDF that never crosses zero
in the bounds (bounds that miss the object, or lie inside it), a resolution whose grid does not fit in memory,
an empty or degenerate mesh. Files go through `ngraphics.io.atomic`: never a half-written file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ngraphics.errors import ConfigError, DataError
from ngraphics.io.atomic import atomic_write_bytes

FORMATS = ("ply", "obj", "glb")
MAX_RESOLUTION = 2048


def available_memory() -> int:
    """Bytes of physical memory available now (Linux `SC_AVPHYS_PAGES`), or 8 GiB where unknown."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_bounds(bounds, where: str = "--bounds") -> torch.Tensor:
    """Bounds as a (2, 3) float64 tensor (min row, max row); accepts 6 numbers or a (2, 3) nesting."""
    try:
        b = torch.as_tensor(bounds, dtype=torch.float64).reshape(2, 3)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{where}: expected 6 numbers xmin ymin zmin xmax ymax zmax, got {bounds!r}") from None
    if not bool(torch.isfinite(b).all()) or not bool((b[1] > b[0]).all()):
        raise ConfigError(f"{where}: expected finite bounds with max > min on every axis, got {b.tolist()}")
    return b


def sdf_grid(sdf_fn: Callable[[torch.Tensor], torch.Tensor], bounds: torch.Tensor, resolution: int,
             device: torch.device | str = "cpu", chunk: int = 1 << 18) -> np.ndarray:
    """The SDF at resolution^3 grid points spanning `bounds` (corners included).

    sdf_fn: world points (N, 3) float32 on `device` -> (N,); bounds: (2, 3); resolution: points per axis.
    Returns (resolution,) * 3 float32 array indexed [x, y, z]. Raises ConfigError if the grid (and marching
    cubes' working memory, about 4x the grid) does not fit in the memory available.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 8 <= resolution <= MAX_RESOLUTION:
        raise ConfigError(f"--resolution: expected an integer in 8 .. {MAX_RESOLUTION}, got {resolution!r}")
    need = 16 * resolution**3
    if need > available_memory():
        raise ConfigError(f"--resolution {resolution}: the SDF grid needs about {need / 2**30:.1f} GiB, "
                          f"{available_memory() / 2**30:.1f} GiB is available; lower the resolution")
    bounds = torch.as_tensor(bounds, dtype=torch.float64)
    axes = [torch.linspace(float(bounds[0, k]), float(bounds[1, k]), resolution, dtype=torch.float64)
            for k in range(3)]
    out = np.empty((resolution,) * 3, dtype=np.float32)
    slab = max(1, chunk // (resolution * resolution))  # x-slices per chunk
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    starts = range(0, resolution, slab)
    with torch.no_grad():
        for i in tqdm(starts, desc="sampling the SDF", unit="slab", leave=False, file=sys.stderr,
                      disable=True if len(starts) < 4 else None):  # None: only on a terminal
            xs = axes[0][i : i + slab]
            pts = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None], yz.repeat(len(xs), 1)], -1)
            values = sdf_fn(pts.to(device=device, dtype=torch.float32))
            out[i : i + len(xs)] = values.reshape(len(xs), resolution, resolution).float().cpu().numpy()
    return out


@dataclass
class Mesh:
    """A triangle mesh: vertices (V, 3) float32, faces (F, 3) int64 (counter-clockwise = outward), optional
    vertex colours (V, 3) float32 in [0, 1]."""

    vertices: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor | None = None

    def to_trimesh(self):
        import trimesh

        colors = None if self.colors is None else (self.colors.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return trimesh.Trimesh(self.vertices.numpy(), self.faces.numpy(), vertex_colors=colors, process=False)

    def largest_component(self) -> Mesh:
        """The connected component (by shared vertices) with the most faces; vertices re-indexed."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        V = self.vertices.shape[0]
        f = self.faces.numpy()
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(V, V))
        _, labels = connected_components(graph, directed=False)
        face_label = labels[f[:, 0]]
        keep_faces = face_label == np.bincount(face_label).argmax()
        return self.subset_faces(torch.from_numpy(keep_faces))

    def subset_faces(self, keep: torch.Tensor) -> Mesh:
        """The faces where keep (F,) bool is set, unused vertices dropped."""
        faces = self.faces[keep]
        used = torch.unique(faces)
        remap = torch.full((self.vertices.shape[0],), -1, dtype=torch.int64)
        remap[used] = torch.arange(used.numel())
        colors = None if self.colors is None else self.colors[used]
        return Mesh(self.vertices[used], remap[faces], colors)

    def transformed(self, matrix: torch.Tensor | np.ndarray | None) -> Mesh:
        """Vertices mapped by a 4x4 similarity (e.g. DTU's scale_mat: normalised -> world); faces flip if it
        mirrors. None = unchanged."""
        if matrix is None:
            return self
        m = torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
        v = self.vertices.double() @ m[:3, :3].T + m[:3, 3]
        faces = self.faces if float(torch.linalg.det(m[:3, :3])) > 0 else self.faces.flip(-1)
        return Mesh(v.float(), faces, self.colors)


def marching_cubes_sdf(sdf_fn: Callable[[torch.Tensor], torch.Tensor], bounds, resolution: int = 512,
                       device: torch.device | str = "cpu", chunk: int = 1 << 18) -> Mesh:
    """Zero level set of an SDF (negative inside) in `bounds` as a Mesh with outward faces.

    Raises DataError when the SDF does not cross zero inside the bounds (naming which side it stays on).
    """
    from skimage.measure import marching_cubes

    bounds = check_bounds(bounds)
    grid = sdf_grid(sdf_fn, bounds, resolution, device, chunk)
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    if not np.isfinite(grid).all():
        raise DataError("marching cubes: the SDF has non-finite values in the bounds (a diverged model?)")
    if lo > 0 or hi < 0:
        side = "outside the surface everywhere: the bounds miss the object" if lo > 0 else \
            "inside the surface everywhere: the bounds lie within the object"
        raise DataError(f"marching cubes: the SDF never crosses zero in bounds {bounds.tolist()} "
                        f"(min {lo:.4g}, max {hi:.4g}; {side})")
    spacing = tuple(float((bounds[1, k] - bounds[0, k]) / (resolution - 1)) for k in range(3))
    verts, faces, _, _ = marching_cubes(grid, level=0.0, spacing=spacing)
    vertices = torch.from_numpy(verts.copy()).double() + bounds[0]
    # skimage winds faces towards increasing values: outward for an SDF that is negative inside
    return Mesh(vertices.float(), torch.from_numpy(faces.astype(np.int64)))


def color_vertices(mesh: Mesh, color_fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu",
                   chunk: int = 1 << 16) -> Mesh:
    """The mesh with vertex colours color_fn(vertices (N, 3) float32 on device) -> (N, 3) in [0, 1]."""
    parts = [color_fn(mesh.vertices[s : s + chunk].to(device)).detach().float().cpu()
             for s in range(0, mesh.vertices.shape[0], chunk)]
    return Mesh(mesh.vertices, mesh.faces, torch.cat(parts).clamp(0, 1))


def mesh_format(path: str | Path, fmt: str | None = None) -> str:
    """ply, obj or glb: `fmt`, else the file suffix; ConfigError for anything else."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: mesh format {fmt or '(none)'!r} is not one of {', '.join(FORMATS)}")
    return fmt


def write_mesh(mesh: Mesh, path: str | Path, fmt: str | None = None) -> Path:
    """Write a mesh as ply / obj / glb (trimesh), atomically. Returns the path.
    An empty mesh or one of zero area is a DataError and writes nothing."""
    path = Path(path)
    fmt = mesh_format(path, fmt)
    if mesh.faces.shape[0] == 0 or mesh.vertices.shape[0] == 0:
        raise DataError(f"{path}: the mesh is empty; nothing written")
    v = mesh.vertices.double()[mesh.faces]
    if not float(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1).sum()) > 0:
        raise DataError(f"{path}: the mesh is degenerate (zero surface area); nothing written")
    data = mesh.to_trimesh().export(file_type=fmt)
    atomic_write_bytes(path, data if isinstance(data, bytes) else data.encode())
    return path


__all__ = ["FORMATS", "Mesh", "check_bounds", "color_vertices", "marching_cubes_sdf", "mesh_format", "sdf_grid",
           "write_mesh"]

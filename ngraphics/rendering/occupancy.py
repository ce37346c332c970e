"""Occupancy grid: which cells of space hold anything, so ray marching can skip the rest (Instant-NGP style).

The grid has L cascades ("levels") of `resolution^3` cells each. Level 0 covers the scene box `aabb`; level l
covers the same box scaled by 2^l about its centre (instant-ngp's `aabb_scale = 2^(L-1)`), so unbounded scenes
get coarser cells far away. A point belongs to the finest level that contains it; the cells of level l that
level l-1 covers are never queried and never updated.

Each cell keeps an opacity estimate `occs` (the density at a random point in the cell times a step length)
that decays by `ema_decay` at every update and is raised to new samples: occs = max(occs * decay, new).
A cell is occupied when occs > min(mean occs, threshold). During warm-up every cell is sampled; afterwards a
random quarter of the cells plus as many occupied ones, as in instant-ngp.

The grid never owns the field: `update` takes a callback `occ_fn(x: (N, 3) world) -> (N,) opacity`.

Surfaces (NeuS2, instant-nsr-pl): `update_from_sdf` takes a signed distance callback instead and marks the cells
that may hold the zero level set: |sdf(cell centre)| <= half the cell's diagonal + `band`. The SDF is about
1-Lipschitz (the eikonal loss), so a cell whose centre is farther than half its diagonal from the surface
holds none of it; `band` (NeuS: a few 1 / inv_s, the width of the logistic density) keeps the cells where
NeuS's opacities are not yet negligible. No decay, no running average: the flags follow the current SDF.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class OccupancyConfig:
    """Keys of the `occupancy` block.

    resolution: cells per axis and level (instant-ngp: 128).
    levels: cascades; 1 for bounded scenes, more for unbounded ones (aabb_scale = 2^(levels - 1)); 0 = from data.
    update_every: steps between updates.
    ema_decay: decay of every cell's opacity per update.
    threshold: opacity (density x step) above which a cell is occupied (capped by the mean).
    warmup_steps: steps during which every cell is re-sampled at each update.
    """

    resolution: int = 128
    levels: int = 0
    update_every: int = 16
    ema_decay: float = 0.95
    threshold: float = 0.01
    warmup_steps: int = 256

    def validate(self, where: str) -> None:
        if self.resolution < 2 or self.resolution % 2:
            raise ConfigError(f"{where}.resolution: expected an even integer >= 2, got {self.resolution}")
        if self.levels < 0 or self.levels > 8:
            raise ConfigError(f"{where}.levels: expected 0 (from data) to 8, got {self.levels}")
        if self.update_every < 1:
            raise ConfigError(f"{where}.update_every: expected >= 1, got {self.update_every}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"{where}.ema_decay: expected a number in [0, 1], got {self.ema_decay}")


class OccupancyGrid(nn.Module):
    """Multi-cascade occupancy grid.

    Args:
        aabb: scene box of level 0, world units. (2, 3) float: min row, max row.
        resolution: cells per axis per level (even).
        levels: number of cascades L >= 1.
    Buffers (saved in state_dict): occs (L, res^3) float32 opacity estimates, binary (L, res^3) bool.
    Cell (i, j, k) of a level (x index i) has flat index (i * res + j) * res + k.
    """

    def __init__(self, aabb: torch.Tensor, resolution: int = 128, levels: int = 1):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        self.resolution = int(resolution)
        self.levels = int(levels)
        res, L = self.resolution, self.levels
        self.register_buffer("aabb", aabb.clone())
        # host copy of the outer box's diagonal, so marchers size their loops without reading the device
        self.outer_diagonal = float((aabb[1] - aabb[0]).norm()) * 2.0 ** (L - 1)
        self.register_buffer("occs", torch.zeros(L, res**3))
        self.register_buffer("binary", torch.ones(L, res**3, dtype=torch.bool))
        # Cells of level l >= 1 inside level l-1's box (the central half of each axis) are never used.
        ijk = self._grid_coords(torch.arange(res**3))
        inner = ((ijk >= res // 4) & (ijk < 3 * res // 4)).all(-1)
        valid = torch.ones(L, res**3, dtype=torch.bool)
        valid[1:] = ~inner
        self.register_buffer("valid", valid, persistent=False)

    # --- geometry -------------------------------------------------------------------------------------------

    def level_aabb(self, level: int) -> torch.Tensor:
        """Box of one cascade. (2, 3) float32."""
        center = self.aabb.mean(0)
        half = 0.5 * (self.aabb[1] - self.aabb[0]) * 2.0**level
        return torch.stack([center - half, center + half])

    @property
    def outer_aabb(self) -> torch.Tensor:
        """Box of the coarsest cascade: nothing outside it is ever occupied. (2, 3) float32."""
        return self.level_aabb(self.levels - 1)

    def cell_size(self, level: int) -> float:
        """Longest cell edge of a level, world units."""
        return float((self.aabb[1] - self.aabb[0]).max()) * 2.0**level / self.resolution

    def cell_diagonal(self, level: int) -> float:
        """Length of a cell's diagonal at a level, world units (cells may be boxes, not cubes)."""
        return float((self.aabb[1] - self.aabb[0]).norm()) * 2.0**level / self.resolution

    def _grid_coords(self, index: torch.Tensor) -> torch.Tensor:
        res = self.resolution
        return torch.stack([index // (res * res), (index // res) % res, index % res], dim=-1)

    def level_of(self, x: torch.Tensor) -> torch.Tensor:
        """Finest cascade containing each point (L - 1 for points outside everything). (N,) int64"""
        center = self.aabb.mean(0)
        half = 0.5 * (self.aabb[1] - self.aabb[0])
        r = ((x - center).abs() / half).amax(-1)  # 1 on the level-0 box surface
        level = torch.ceil(torch.log2(r.clamp_min(1.0)))
        return level.clamp_(0, self.levels - 1).to(torch.int64)

    def cell_index(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level, flat cell index and inside-the-outer-box flag of world points x (N, 3)."""
        level = self.level_of(x)
        center = self.aabb.mean(0)
        half = 0.5 * (self.aabb[1] - self.aabb[0]) * torch.exp2(level.to(x.dtype))[:, None]
        u = (x - (center - half)) / (2 * half)  # [0, 1) inside the level's box
        inside = ((u >= 0) & (u <= 1)).all(-1)
        res = self.resolution
        ijk = (u * res).to(torch.int64).clamp_(0, res - 1)
        return level, (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2], inside

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Occupied flag of world points. x: (N, 3) float32 -> (N,) bool (False outside the outer box)."""
        if self.levels == 1:  # the common bounded case, without the per-point level search
            res = self.resolution
            u = (x - self.aabb[0]) * (res / (self.aabb[1] - self.aabb[0]))  # (N, 3) in cells
            inside = (u.amin(-1) >= 0) & (u.amax(-1) <= res)
            ijk = u.to(torch.int64).clamp_(0, res - 1)
            return self.binary[0][(ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]] & inside
        level, index, inside = self.cell_index(x)
        return self.binary[level, index] & inside

    # --- updates --------------------------------------------------------------------------------------------

    def _cell_points(self, level: int, index: torch.Tensor, jitter: bool = True) -> torch.Tensor:
        box = self.level_aabb(level)
        ijk = self._grid_coords(index).to(torch.float32)
        offset = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        return box[0] + (ijk + offset) / self.resolution * (box[1] - box[0])

    @torch.no_grad()
    def update(
        self,
        step: int,
        occ_fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        ema_decay: float = 0.95,
        threshold: float = 0.01,
        warmup_steps: int = 256,
        chunk: int = 1 << 20,
    ) -> None:
        """One update: decay every cell, re-sample some, recompute the occupied flags.

        Args:
            step: training step (all cells are sampled while step < warmup_steps).
            occ_fn: opacity at world points, (N, 3) float32 -> (N,) float, usually density x step length.
            ema_decay: factor applied to every cell before the maximum with the new samples.
            threshold: occupied when occs > min(mean over used cells, threshold).
        """
        n_cells = self.resolution**3
        self.occs.mul_(ema_decay)
        for level in range(self.levels):
            if step < warmup_steps:
                index = torch.nonzero(self.valid[level])[:, 0]
            else:
                n = n_cells // 4
                uniform = torch.randint(0, n_cells, (n,), device=self.occs.device)
                occupied = torch.nonzero(self.binary[level] & self.valid[level])[:, 0]
                if occupied.numel() > n:
                    occupied = occupied[torch.randint(0, occupied.numel(), (n,), device=occupied.device)]
                index = torch.cat([uniform, occupied])
                index = index[self.valid[level, index]]
            for start in range(0, index.numel(), chunk):
                part = index[start : start + chunk]
                occ = occ_fn(self._cell_points(level, part)).reshape(-1).float()
                self.occs[level].scatter_reduce_(0, part, occ, reduce="amax")
        used = self.occs[self.valid]
        self.binary.copy_((self.occs > used.mean().clamp(max=threshold)) & self.valid)

    @torch.no_grad()
    def update_from_sdf(self, sdf_fn: Callable[[torch.Tensor], torch.Tensor], band: float,
                        chunk: int = 1 << 18) -> None:
        """Occupied = cells that may hold the zero level set of an SDF (module docstring).

        Args:
            sdf_fn: signed distance at world points, (N, 3) float32 -> (N,) float, world units.
            band: extra distance beyond half the cell diagonal, world units, >= 0 (NeuS: k / inv_s).
            chunk: cell centres per call of sdf_fn.
        Sets `binary` (and `occs` to the same flags as 0. / 1.): |sdf(centre)| <= cell_diagonal / 2 + band.
        """
        if not band >= 0:
            raise ValueError(f"update_from_sdf: band must be >= 0, got {band}")
        for level in range(self.levels):
            index = torch.nonzero(self.valid[level])[:, 0]
            limit = 0.5 * self.cell_diagonal(level) + band
            for start in range(0, index.numel(), chunk):
                part = index[start : start + chunk]
                sdf = sdf_fn(self._cell_points(level, part, jitter=False)).reshape(-1).float()
                self.occs[level, part] = (sdf.abs() <= limit).float()
        self.binary.copy_((self.occs > 0) & self.valid)

    def occupied_fraction(self) -> float:
        """Share of used cells that are occupied (a sync; for logs)."""
        return float(self.binary[self.valid].float().mean())

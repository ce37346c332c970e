"""`Simplex`: a multi-resolution hashed simplex lattice (Wen & Yang, "Efficient Encoding of Graphics
Primitives with Simplex-based Structures", arXiv 2311.15439).

Like tiny-cuda-nn's `HashGrid`, but each level interpolates D + 1 simplex vertices instead of 2^D cube
corners.
For one level with scale `s_l`, a point `x: (D,)` is encoded as follows:

1. Scale like tcnn's grid: `p = x * s_l + 0.5` (the 0.5 staggers the levels, Instant-NGP appendix A).
2. Skew onto the simplex lattice (simplex noise): `q = p + F_D * sum(p)`, `F_D = (sqrt(D + 1) - 1) / D`.
   The skew maps the regular simplex lattice onto the integer lattice Z^D; its inverse, the unskew
   `p = q - G_D * sum(q)` with `G_D = (1 - 1 / sqrt(D + 1)) / D`, places lattice vertex `q` in input space.
3. Base vertex `b = floor(q)`, fractional part `f = q - b` in [0, 1)^D.
4. Sort-based simplicial subdivision (Kuhn / Freudenthal): with `pi` the order that sorts `f` descending,
   the simplex holding `q` has vertices `v_0 = b`, `v_k = v_{k-1} + e_{pi(k-1)}` (k = 1..D).
5. Barycentric weights from the sorted fractions `t = f[pi]`: `w_0 = 1 - t_0`, `w_k = t_{k-1} - t_k`,
   `w_D = t_{D-1}`. They are >= 0, sum to 1 and satisfy `sum_k w_k v_k = q`. Barycentric coordinates are
   invariant under the (linear) skew, so these are also the weights in input space and the unskew `G_D` is
   never needed to evaluate the encoding (the tests use it to place points on lattice vertices).
6. Each vertex reads F features from the level's table, and the level outputs `sum_k w_k * table[index(v_k)]`.

Choices the paper leaves open, taken from tiny-cuda-nn's grid so that configs mean the same thing:

- Level scales: `s_l = exp2(l * log2(per_level_scale)) * base_resolution - 1`, in float32 as tcnn does.
- Indexing: the skewed coordinates of [0, 1]^D at level l lie in [0, (s_l + 0.5) * sqrt(D + 1)], so the
  level's lattice fits a box of `R_l = floor((s_l + 0.5) * sqrt(D + 1)) + 2` vertices per axis. When
  `R_l^D <= table size` the level is dense: `index = sum_d v_d * R_l^d`, a plain stride sum like tcnn's dense
  grids (the box also holds vertices outside the skewed cube, so coarse levels spend up to (D+1)^((D-1)/2)
  times more rows than strictly needed, in exchange for collision-free, coherent indexing). Otherwise the
  level is hashed with tcnn's coherent prime hash: `xor_d (v_d * P_d)` with primes
  `P = 1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737` (so D <= 7).
  Both use uint32 arithmetic (negative coordinates wrap, as tcnn's `(uint32_t)(int)floor` cast does) and end
  with `% table_size`, which also wraps points slightly outside [0, 1]^D into the table.
- Table sizes: `min(next_multiple(R_l^D, 8), 2^log2_hashmap_size)` rows per level (tcnn's rule).
- Layout: `params` is one flat vector, `params.view(-1, F)` holds the levels' tables one after another
  (rows `offsets[l] : offsets[l + 1]`), features innermost; initialised uniform in [-1e-4, 1e-4].
- Output: `(N, L * F)`, level-major (features of level l at columns `l * F : (l + 1) * F`).

The weights are piecewise linear in x, so the encoding is continuous, linear in `params`, and
d2 out / dx2 = 0 almost everywhere, while d(d out / dx) / d params is not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ngraphics import ops
from ngraphics.config import from_dict
from ngraphics.encodings.base import Encoding, check_precision, round_params
from ngraphics.errors import ConfigError

PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
MAX_DIMS = len(PRIMES)
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SimplexConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0

    def validate(self, where: str) -> None:
        if not 1 <= self.n_levels <= 128:
            raise ConfigError(f"{where}.n_levels: must be in 1..128, got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ConfigError(
                f"{where}.n_features_per_level: must be 1, 2, 4 or 8, got {self.n_features_per_level}"
            )
        if not 1 <= self.log2_hashmap_size <= 31:
            raise ConfigError(f"{where}.log2_hashmap_size: must be in 1..31, got {self.log2_hashmap_size}")
        if self.base_resolution < 1:
            raise ConfigError(f"{where}.base_resolution: must be >= 1, got {self.base_resolution}")
        if not (math.isfinite(self.per_level_scale) and self.per_level_scale >= 1.0):
            raise ConfigError(
                f"{where}.per_level_scale: must be a finite number >= 1, got {self.per_level_scale}"
            )


@dataclass(frozen=True)
class SimplexSpec:
    """Everything a kernel needs about one Simplex encoding (hashable, so it can key kernel caches).

    n_dims: D. n_levels: L. n_features: F per level.
    scales: (L,) level scales s_l (float32 values as Python floats); a point maps to `x * s_l + 0.5`.
    resolutions: (L,) R_l, vertices per axis of the level's dense box (stride base of dense indexing).
    hashed: (L,) True where the level uses the prime hash (R_l^D > table size), False where dense.
    offsets: (L + 1,) first row of each level's table in `params.view(-1, F)`; offsets[L] = total rows.
    table_sizes: (L,) rows per level. n_params: total rows * F.
    """

    n_dims: int
    n_levels: int
    n_features: int
    scales: tuple[float, ...]
    resolutions: tuple[int, ...]
    hashed: tuple[bool, ...]
    offsets: tuple[int, ...]
    table_sizes: tuple[int, ...]
    n_params: int


def skew_factor(n_dims: int) -> float:
    """F_D = (sqrt(D + 1) - 1) / D: input space -> skewed lattice space, `q = p + F_D * sum(p)`."""
    return (math.sqrt(n_dims + 1) - 1) / n_dims


def unskew_factor(n_dims: int) -> float:
    """G_D = (1 - 1 / sqrt(D + 1)) / D: skewed lattice space -> input space, `p = q - G_D * sum(q)`."""
    return (1 - 1 / math.sqrt(n_dims + 1)) / n_dims


def level_scales(n_levels: int, base_resolution: int, per_level_scale: float) -> tuple[float, ...]:
    """tcnn's `exp2f(l * log2(per_level_scale)) * base_resolution - 1.0f`, evaluated in float32."""
    f32 = np.float32
    log2_scale = f32(np.log2(f32(per_level_scale)))
    return tuple(
        float(f32(np.exp2(f32(f32(level) * log2_scale))) * f32(base_resolution) - f32(1.0))
        for level in range(n_levels)
    )


def simplex_spec(n_dims: int, config: SimplexConfig | dict | None = None) -> SimplexSpec:
    """Sizes and per-level constants of a Simplex encoding, `n_dims` inputs; config: SimplexConfig or dict."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in ("otype", "n_dims_to_encode")}
    if not isinstance(config, SimplexConfig):
        config = from_dict(SimplexConfig, config, "Simplex")
    if not isinstance(n_dims, int) or not 1 <= n_dims <= MAX_DIMS:
        raise ConfigError(
            f"Simplex: n_input_dims must be in 1..{MAX_DIMS} (one hash prime per dim), got {n_dims!r}"
        )
    scales = level_scales(config.n_levels, config.base_resolution, config.per_level_scale)
    max_rows = 1 << config.log2_hashmap_size
    resolutions, hashed, offsets, sizes = [], [], [0], []
    for scale in scales:
        res = math.floor((scale + 0.5) * math.sqrt(n_dims + 1)) + 2
        dense_rows = res**n_dims
        rows = min(-(-dense_rows // 8) * 8, max_rows)
        resolutions.append(res)
        hashed.append(dense_rows > rows)
        sizes.append(rows)
        offsets.append(offsets[-1] + rows)
    F = config.n_features_per_level
    return SimplexSpec(
        n_dims=n_dims,
        n_levels=config.n_levels,
        n_features=F,
        scales=scales,
        resolutions=tuple(resolutions),
        hashed=tuple(hashed),
        offsets=tuple(offsets),
        table_sizes=tuple(sizes),
        n_params=offsets[-1] * F,
    )


def simplex_vertices_and_weights(x_level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The simplex of the skewed lattice that holds each point, and the point's barycentric weights.

    Args:
        x_level: points in level units, already scaled (`x * s_l + 0.5`), not yet skewed. (N, D) float.
    Returns:
        vertices: skewed-lattice integer coordinates of the D + 1 vertices, v_0 = floor(skew(x)).
            (N, D+1, D) int64.
        weights: barycentric weights, >= 0, summing to 1; differentiable w.r.t. x_level. (N, D+1), x's dtype.
    Ties between fractional coordinates are broken by the lower dimension first (stable sort); at a tie the
    vertex that differs gets weight 0, so either choice gives the same interpolated value.
    """
    n, d = x_level.shape
    total = x_level[:, :1]
    for dim in range(1, d):  # left to right, as the Triton kernel: at fine levels (s ~ 5e5) float32 keeps
        total = total + x_level[:, dim:dim + 1]  # few fraction bits, so the rounding order must match
    q = x_level + skew_factor(d) * total  # (N, D) skewed
    base = torch.floor(q)  # (N, D), no gradient
    frac, order = torch.sort(q - base, dim=1, descending=True, stable=True)  # (N, D) each
    steps = torch.nn.functional.one_hot(order, d).cumsum(
        dim=1
    )  # (N, D, D): row k = sum of first k+1 unit steps
    vertices = base.long().unsqueeze(1) + torch.cat([steps.new_zeros(n, 1, d), steps], dim=1)  # (N, D+1, D)
    weights = torch.cat([1 - frac[:, :1], frac[:, :-1] - frac[:, 1:], frac[:, -1:]], dim=1)  # (N, D+1)
    return vertices, weights


def _mul_u32(a: torch.Tensor, constant: int) -> torch.Tensor:
    """(a * constant) mod 2^32 for int64 `a` in [0, 2^32), the constant split in halves to avoid overflow."""
    lo, hi = constant & 0xFFFF, constant >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _U32


def simplex_level_index(vertices: torch.Tensor, spec: SimplexSpec, level: int) -> torch.Tensor:
    """Row of each vertex in its level's table (add spec.offsets[level] for the row in params.view(-1, F)).

    Args:
        vertices: skewed-lattice coordinates. (..., D) int64.
    Returns: (...,) int64 in [0, spec.table_sizes[level]).
    """
    coords = vertices & _U32  # tcnn's (uint32_t)(int) cast: negative coordinates wrap
    index = torch.zeros_like(coords[..., 0])
    if spec.hashed[level]:
        for dim in range(spec.n_dims):
            index = index ^ _mul_u32(coords[..., dim], PRIMES[dim])
    else:  # stride < R^D <= table size < 2^31, so each product fits in int64 before the uint32 wrap
        stride = 1
        for dim in range(spec.n_dims):
            index = (index + ((coords[..., dim] * stride) & _U32)) & _U32
            stride *= spec.resolutions[level]
    return index % spec.table_sizes[level]


def simplex_encode_torch(x: torch.Tensor, params: torch.Tensor, spec: SimplexSpec) -> torch.Tensor:
    """Multi-resolution simplex encoding, pure PyTorch (the reference for the Triton kernel).

    Args:
        x: points, nominally in [0, 1] (outside wraps into the tables). (N, D) float.
        params: the flat tables, `params.view(-1, F)` rows per level as in `spec.offsets`.
            (spec.n_params,) float.
        spec: from `simplex_spec(D, config)`.
    Returns: (N, L * F) level-major features, in the promoted dtype of x and params (float64 in, float64 out).
    Differentiable w.r.t. params and x, including double backward (d2/dx2 is 0 almost everywhere).
    Example: `simplex_encode_torch(torch.rand(4, 3), torch.zeros(s.n_params), s := simplex_spec(3, {}))`.
    """
    assert x.shape[1] == spec.n_dims and params.numel() == spec.n_params, "x or params do not match the spec"
    dtype = torch.promote_types(x.dtype, params.dtype)
    x = x.to(dtype)
    table = params.to(dtype).view(-1, spec.n_features)  # (rows, F)
    outputs = []
    for level in range(spec.n_levels):
        vertices, weights = simplex_vertices_and_weights(
            x * spec.scales[level] + 0.5
        )  # (N, D+1, D), (N, D+1)
        rows = spec.offsets[level] + simplex_level_index(vertices, spec, level)  # (N, D+1)
        features = table[rows]  # (N, D+1, F)
        outputs.append((weights.unsqueeze(-1) * features).sum(dim=1))  # (N, F)
    return torch.cat(outputs, dim=1)  # (N, L * F)


class Simplex(Encoding):
    """Multi-resolution hashed simplex lattice: x (N, D) in [0, 1] -> (N, n_levels * n_features_per_level).

    Keys and defaults as tcnn's HashGrid: n_levels 16, n_features_per_level 2, log2_hashmap_size 19,
    base_resolution 16, per_level_scale 2.0. `seed` seeds the uniform [-1e-4, 1e-4] initialisation of the
    float32 master `params`. Runs the Triton kernel (ngraphics.kernels.simplex) where `ngraphics.ops` says
    so for `backend` (op `simplex_encode`), else torch.
    dtype: tables' and output precision, as for `HashGrid`. Our default training dtype: fp32 master params;
        float32 in the native API, float16 tables+outputs when dtype=torch.float16 (the tcnn drop-in on
        CUDA). None (default; float32 kernels, the exact twin of the reference, whose output has the
        promoted dtype of x and params), torch.float32, or torch.float16 (tiny-cuda-nn's precision: an fp16
        copy of the tables per call and fp16 output in the kernels, the same rounding emulated on the torch
        backend; params stay float32 with float32 gradients).
    gradient_dtype: None / torch.float32 (float32 sums of the table gradient in the kernels) or
        torch.float16 (tiny-cuda-nn's half2 sums on sm_90 GPUs when n_features_per_level >= 2: faster, every
        partial sum rounded to fp16, inf past 65504, so use loss scaling; see `HashGrid`). The torch backend
        always sums in float32.
    """

    otype = "Simplex"
    Config = SimplexConfig
    has_dtype = True
    has_gradient_dtype = True

    def __init__(
        self, n_input_dims: int, config=None, *, backend: str = "auto", strict: bool = True, seed: int = 1337,
        dtype: torch.dtype | None = None, gradient_dtype: torch.dtype | None = None,
    ):
        super().__init__(n_input_dims, config, backend=backend, strict=strict)
        self.dtype = check_precision(dtype, self.otype)
        self.gradient_dtype = check_precision(gradient_dtype, self.otype, "gradient_dtype")
        self.spec = simplex_spec(n_input_dims, self.config)
        self.n_output_dims = self.spec.n_levels * self.spec.n_features
        generator = torch.Generator().manual_seed(seed)
        init = (torch.rand(self.spec.n_params, generator=generator, dtype=torch.float32) * 2 - 1) * 1e-4
        self.params = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, D) float in [0, 1] -> (N, L * F), in `dtype` when it is set."""
        self.check_input(x)
        if ops.use_kernel("simplex_encode", self.backend, x.device):
            out = ops.kernel("simplex_encode")(x, self.params, self.spec, table_dtype=self.dtype,
                                               out_dtype=self.dtype, gradient_dtype=self.gradient_dtype)
        else:
            out = simplex_encode_torch(x, round_params(self.params, self.dtype), self.spec)
        return out if self.dtype is None else out.to(self.dtype)

"""Multiresolution grid encodings: `HashGrid`, `DenseGrid`, `TiledGrid` and `Grid` (tiny-cuda-nn's "Grid").

A point `x: (N, D)` is looked up in L grids of growing resolution; each level returns F features, bilinearly
(D-linearly) interpolated from the 2^D corners of the cell that holds the point. Levels whose full grid fits
in the level's table are stored densely; finer levels of a `Hash` grid hash their corners into a table of
2^log2_hashmap_size entries. `grid_encode_torch` is the readable reference; `ngraphics.kernels.grid` holds the
Triton twin with the same signature.

Conventions, each one as tiny-cuda-nn defines it (files under `include/tiny-cuda-nn/`; read at commits
2ec562e (grid.h, 2023) and the newest stored common_device.h; commit 6ee3546 itself is not in the index):

- Keys and defaults (`encodings/grid.h`, `create_grid_encoding*`): n_levels=16, n_features_per_level=2
  (1, 2, 4 or 8), log2_hashmap_size=19, base_resolution=16, interpolation="Linear", hash="CoherentPrime",
  stochastic_interpolation=false, type = "Hash" for otype Grid/HashGrid, "Dense" for DenseGrid, "Tiled" for
  TiledGrid (every otype reads `type`). per_level_scale defaults to 2.0, except for Dense grids:
  `expf(logf(256.0f / base_resolution) / (n_levels - 1))`, all in float32. `n_features` (or
  `n_grid_features`) may replace n_levels: n_levels = n_features / n_features_per_level. Strings are matched
  case-insensitively; "Tile" means "Tiled". At most 128 levels (`MAX_N_LEVELS`, `grid_interface.h`).
- Level scale and resolution (`common_device.h`, `grid_scale`, `grid_resolution`), float32 throughout:
  `scale_l = exp2f(l * log2f(per_level_scale)) * base_resolution - 1.0f`,
  `res_l = (uint32)ceilf(scale_l) + 1`.
  We round each float32 operation exactly; CUDA's exp2f (2 ulp) and fma contraction may differ by an ulp.
- Table sizes (`encodings/grid.h`, `GridEncodingTemplated` constructor): `params_in_level = res^D` (capped at
  2^31 - 1 when res^D > 2^31), rounded up to a multiple of 8; Hash: `min(that, 2^log2_hashmap_size)`;
  Tiled: `min(that, base_resolution^D)`; Dense: unchanged. Levels are concatenated in order: level l's
  entries start at `offsets[l]` (in entries; in params at `offsets[l] * F`), each entry holds F features
  (features innermost). `n_params = sum(params_in_level) * F`.
- Position (`common_device.h`, `pos_fract`): `pos = fmaf(scale, x, 0.5f)` (one rounding),
  `grid = (uint32)(int)floorf(pos)`, `frac = pos - floorf(pos)`. No clamping: x outside [0, 1] reaches cells
  outside the grid; negative cells wrap to large uint32 values (we emulate uint32 with int64 & 0xFFFFFFFF).
- Index (`common_device.h`, `grid_index`): `stride = 1; for d in dims while stride <= hashmap_size:
  index += grid[d] * stride; stride *= res` (uint32 wrap-around); if the type is Hash and
  `hashmap_size < stride`: `index = hash(grid)`; finally `index % hashmap_size`. Tiled levels thus use the
  dims that fit and wrap. (tiny-cuda-nn PR #501, June 2025, later replaced the loop guard by a table of
  maximal resolutions per D; Hash grids index identically both ways except when res^D overflows uint32.)
- Hash (`common_device.h`, `lcg_hash`, `coherent_prime_hash`): `xor_d grid[d] * prime[d]` in uint32 with
  primes (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737) ("CoherentPrime"; "Prime"
  puts 1958374283 first, "ReversedPrime" reverses the list). Hence D <= 7.
- Interpolation (`encodings/grid.h`, `kernel_grid`): Linear weights `w = frac` per dim, corner weight the
  product over dims of `w` (bit set) or `1 - w` (bit clear), corners visited in bit order; Smoothstep first
  maps `frac -> frac^2 (3 - 2 frac)`, whose derivative `6 frac (1 - frac)` (`smoothstep_derivative`) autograd
  reproduces; Nearest returns the entry at `grid` itself (floor of `scale * x + 0.5`), d/dx = 0.
- Output (`kernel_grid` + `transpose_encoded_position`): level-major, `out[:, l * F + f]`.
- Initialisation (`encodings/grid.h`, `initialize_params`): uniform in [-1e-4, 1e-4].

Not supported (ConfigError): stochastic_interpolation=true (a tcnn training trick that only changes the
parameter gradient), hash "Rng" / "BaseConvert". tiny-cuda-nn compiles D in {2, 3, 4}; we allow 1..7.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ngraphics import ops
from ngraphics.config import from_dict
from ngraphics.encodings.base import Encoding, check_precision, round_params
from ngraphics.errors import ConfigError, choice_message

GRID_TYPES = ("Hash", "Dense", "Tiled")
INTERPOLATIONS = ("Nearest", "Linear", "Smoothstep")
HASH_TYPES = ("CoherentPrime", "Prime", "ReversedPrime")
HASH_PRIMES = {
    "CoherentPrime": (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "Prime": (1958374283, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "ReversedPrime": (2165219737, 1434869437, 2097192037, 3674653429, 805459861, 2654435761, 1958374283),
}
MAX_DIMS = 7  # tcnn's hash has 7 primes
MAX_LEVELS = 128  # tcnn's MAX_N_LEVELS
MASK32 = 0xFFFFFFFF
INIT_RANGE = 1e-4  # tcnn initialize_params: uniform(-1e-4, 1e-4)


def _canonical(value: str, options: tuple[str, ...], where: str,
               aliases: dict[str, str] | None = None) -> str:
    """Case-insensitive match of `value` against `options` (tcnn's `equals_case_insensitive`)."""
    lookup = {o.lower(): o for o in options}
    lookup.update({k.lower(): v for k, v in (aliases or {}).items()})
    if isinstance(value, str) and value.lower() in lookup:
        return lookup[value.lower()]
    raise ConfigError(choice_message(where, value, options))


@dataclass(frozen=True)
class GridConfig:
    """tiny-cuda-nn's Grid keys. `per_level_scale=None` means tcnn's default (2.0; Dense: 256-finest)."""

    type: str = "Hash"
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float | None = None
    interpolation: str = "Linear"
    hash: str = "CoherentPrime"
    stochastic_interpolation: bool = False

    def validate(self, where: str) -> None:
        _canonical(self.type, GRID_TYPES, f"{where}.type", {"Tile": "Tiled"})
        _canonical(self.interpolation, INTERPOLATIONS, f"{where}.interpolation")
        if isinstance(self.hash, str) and self.hash.lower() in ("rng", "baseconvert"):
            raise ConfigError(f"{where}.hash: {self.hash!r} is not supported by ngraphics; use one of "
                              f"{', '.join(HASH_TYPES)}")
        _canonical(self.hash, HASH_TYPES, f"{where}.hash")
        if not 1 <= self.n_levels <= MAX_LEVELS:
            raise ConfigError(f"{where}.n_levels: must be 1..{MAX_LEVELS}, got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ConfigError(f"{where}.n_features_per_level: must be 1, 2, 4 or 8, "
                              f"got {self.n_features_per_level}")
        if not 1 <= self.log2_hashmap_size <= 31:
            raise ConfigError(f"{where}.log2_hashmap_size: must be 1..31, got {self.log2_hashmap_size}")
        if self.base_resolution < 1:
            raise ConfigError(f"{where}.base_resolution: must be >= 1, got {self.base_resolution}")
        s = self.per_level_scale
        if s is not None and not (s > 0 and math.isfinite(s)):
            raise ConfigError(f"{where}.per_level_scale: must be a positive number, got {s}")
        if self.stochastic_interpolation:
            raise ConfigError(f"{where}.stochastic_interpolation: true is not supported by ngraphics "
                              "(tiny-cuda-nn's default is false)")


@dataclass(frozen=True)
class HashGridConfig(GridConfig):
    type: str = "Hash"


@dataclass(frozen=True)
class DenseGridConfig(GridConfig):
    type: str = "Dense"


@dataclass(frozen=True)
class TiledGridConfig(GridConfig):
    type: str = "Tiled"


CONFIG_BY_OTYPE = {"grid": GridConfig, "hashgrid": HashGridConfig, "densegrid": DenseGridConfig,
                   "tiledgrid": TiledGridConfig}


@dataclass(frozen=True)
class GridSpec:
    """Everything a grid kernel needs, resolved once from a config (hashable, so kernels can cache on it).

    scales: per-level `scale_l` (float32 values). resolutions: `res_l`. offsets: first table entry of each
    level (params start at `offsets[l] * n_features`). hashmap_sizes: `params_in_level` (entries).
    n_params: total parameter count. hash_type: which prime set hashes (see `HASH_PRIMES`).
    """

    n_dims: int
    n_levels: int
    n_features: int
    grid_type: str
    interpolation: str
    scales: tuple[float, ...]
    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]
    hashmap_sizes: tuple[int, ...]
    n_params: int
    hash_type: str = "CoherentPrime"


def _f32(v: float) -> np.float32:
    return np.float32(v)


def default_per_level_scale(grid_type: str, n_levels: int, base_resolution: int) -> float:
    """tcnn's default: 2.0, or for Dense `expf(logf(256.0f / base) / (n_levels - 1))` in float32.

    With one level the scale is never used; tcnn divides by zero there, we return 1.0.
    """
    if grid_type != "Dense":
        return 2.0
    if n_levels == 1:
        return 1.0
    ratio = _f32(256.0) / _f32(base_resolution)
    log = _f32(math.log(float(ratio)))
    return float(_f32(math.exp(float(log / _f32(n_levels - 1)))))


def level_scale(level: int, log2_per_level_scale: np.float32, base_resolution: int) -> np.float32:
    """`exp2f(level * log2_per_level_scale) * base_resolution - 1.0f`, each operation rounded to float32."""
    exponent = _f32(level) * log2_per_level_scale
    return _f32(_f32(2.0 ** float(exponent)) * _f32(base_resolution)) - _f32(1.0)


def grid_spec(n_dims: int, config: Any, where: str = "grid") -> GridSpec:
    """Resolve a grid config into a `GridSpec` (float32 scales, resolutions, table layout).

    Args:
        n_dims: D, the input dimension, 1..7.
        config: a `GridConfig` (or subclass) or a dict of tiny-cuda-nn keys; a dict's `otype` (Grid,
            HashGrid, DenseGrid, TiledGrid; default Grid) picks the default `type`.
        where: prefix for error messages.
    Example: `grid_spec(3, {"otype": "HashGrid"}).n_params == 14229504`.
    """
    if isinstance(config, dict) or config is None:
        config = dict(config or {})
        otype = str(config.pop("otype", "Grid"))
        cls = CONFIG_BY_OTYPE.get(otype.lower())
        if cls is None:
            raise ConfigError(choice_message("otype", otype, ["Grid", "HashGrid", "DenseGrid", "TiledGrid"]))
        config = from_dict(cls, _levels_from_n_features(config, otype), otype)
    if not isinstance(n_dims, int) or not 1 <= n_dims <= MAX_DIMS:
        raise ConfigError(f"{where}: n_input_dims must be 1..{MAX_DIMS} (the hash has {MAX_DIMS} primes), "
                          f"got {n_dims}")
    grid_type = _canonical(config.type, GRID_TYPES, f"{where}.type", {"Tile": "Tiled"})
    interpolation = _canonical(config.interpolation, INTERPOLATIONS, f"{where}.interpolation")
    hash_type = _canonical(config.hash, HASH_TYPES, f"{where}.hash")
    L, F, base = config.n_levels, config.n_features_per_level, config.base_resolution
    per_level_scale = config.per_level_scale
    if per_level_scale is None:
        per_level_scale = default_per_level_scale(grid_type, L, base)
    log2_scale = _f32(math.log2(float(_f32(per_level_scale))))  # host std::log2(float)

    scales, resolutions, offsets, sizes = [], [], [], []
    offset = 0
    for level in range(L):
        scale = level_scale(level, log2_scale, base)
        if not (0.0 <= float(scale) < 2.0**31):
            raise ConfigError(f"{where}.per_level_scale: {per_level_scale} gives level {level} the scale "
                              f"{float(scale)}, outside [0, 2^31)")
        res = math.ceil(float(scale)) + 1
        dense = res**n_dims
        size = 2**31 - 1 if dense > 2**31 else dense  # tcnn: std::pow((float)res, D) > (float)max_params
        size = (size + 7) // 8 * 8
        if grid_type == "Tiled":
            size = min(size, (base**n_dims) & MASK32)
        elif grid_type == "Hash":
            size = min(size, 1 << config.log2_hashmap_size)
        scales.append(float(scale))
        resolutions.append(res)
        offsets.append(offset)
        if size == 0:  # tcnn's uint32 powi(base_resolution, D) wrapped to 0
            raise ConfigError(f"{where}.base_resolution: {base}^{n_dims} overflows tiny-cuda-nn's uint32 "
                              "tile size")
        sizes.append(size)
        offset += size
    if offset * F >= 2**32:
        raise ConfigError(f"{where}: this grid needs {offset * F} parameters, more than tiny-cuda-nn's "
                          "uint32 limit; lower n_levels, base_resolution or per_level_scale")
    return GridSpec(n_dims, L, F, grid_type, interpolation, tuple(scales), tuple(resolutions), tuple(offsets),
                    tuple(sizes), offset * F, hash_type)


def grid_index_plan(spec: GridSpec, level: int) -> tuple[tuple[int, ...], bool]:
    """How `grid_index` addresses `level`: (strides of the dims that enter the dense index, hashed?).

    tcnn's loop `for d while stride <= hashmap_size: index += grid[d] * stride; stride *= res` depends on the
    level only, so it is resolved here; strides wrap like uint32. A hashed level ignores the strides.
    """
    size, res = spec.hashmap_sizes[level], spec.resolutions[level]
    strides, stride = [], 1
    for _ in range(spec.n_dims):
        if stride > size:
            break
        strides.append(stride)
        stride = (stride * res) & MASK32
    hashed = spec.grid_type == "Hash" and size < stride
    return tuple(strides), hashed


def _mul32(a: torch.Tensor, b: int) -> torch.Tensor:
    """(a * b) mod 2^32 for int64 `a` in [0, 2^32) and int `b` in [0, 2^32), without int64 overflow."""
    if b == 1:
        return a
    low = (a & 0xFFFF) * b  # < 2^48
    high = ((a >> 16) * b) & 0xFFFF  # only its low 16 bits survive the shift by 16
    return (low + (high << 16)) & MASK32


def _scaled_position(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale * x + 0.5`. For float32 this is `fmaf(scale, x, 0.5f)` (tcnn's `pos_fract`): the float64 product
    of two float32 values is exact and the float64 sum rounds far below float32's ulp, so the cast to float32
    is the one rounding (bar float64 landing exactly on a float32 tie). Differentiable: d/dx = scale."""
    if x.dtype == torch.float64:
        return x * scale + 0.5
    return (x.to(torch.float64) * scale + 0.5).to(x.dtype)


def _encode_level(x: torch.Tensor, level_params: torch.Tensor, spec: GridSpec, level: int) -> torch.Tensor:
    """One level: x (N, D), the level's own table (hashmap_sizes[level] * F,) -> features (N, F), in x's
    dtype."""
    D, F = spec.n_dims, spec.n_features
    size = spec.hashmap_sizes[level]
    table = level_params.view(size, F)
    pos = _scaled_position(x, spec.scales[level])  # (N, D)
    pos_floor = torch.floor(pos)
    frac = pos - pos_floor  # (N, D) in [0, 1), d/dx = scale
    # (uint32)(int)floorf(pos): CUDA saturates the float->int cast, then the int wraps to uint32.
    cell = pos_floor.detach().clamp(-(2.0**31), 2.0**31 - 1).to(torch.int64) & MASK32  # (N, D)
    strides, hashed = grid_index_plan(spec, level)
    factors = HASH_PRIMES[spec.hash_type] if hashed else strides

    # Per dim and per corner bit, the term this dim adds (dense: + g*stride) or xors (hash: ^ g*prime).
    terms = []  # terms[d][bit]: (N,) int64 in [0, 2^32)
    for d in range(D if hashed else len(strides)):
        lower = cell[:, d]
        upper = (lower + 1) & MASK32
        terms.append((_mul32(lower, factors[d]), _mul32(upper, factors[d])))

    def entry(corner: int) -> torch.Tensor:  # (N,) table row of `corner` (bit d set: upper cell in dim d)
        index = None
        for d, (lower, upper) in enumerate(terms):
            term = upper if (corner >> d) & 1 else lower
            index = term if index is None else (index ^ term if hashed else index + term)
        return (index & MASK32) % size

    if spec.interpolation == "Nearest":
        out = table[entry(0)]  # (N, F)
        # keep x in the graph so d(out)/dx is 0 (as in tcnn) rather than an autograd error
        return out + 0.0 * frac[:, :1] if frac.requires_grad else out

    w_upper = frac * frac * (3.0 - 2.0 * frac) if spec.interpolation == "Smoothstep" else frac  # (N, D)
    w_lower = 1.0 - w_upper
    out = None
    for corner in range(1 << D):
        weight = None  # product over dims in dim order, as tcnn's `weight *= ...`
        for d in range(D):
            wd = w_upper[:, d] if (corner >> d) & 1 else w_lower[:, d]
            weight = wd if weight is None else weight * wd
        contribution = weight[:, None] * table[entry(corner)]  # (N, F)
        out = contribution if out is None else out + contribution
    return out


def grid_encode_torch(x: torch.Tensor, params: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Multiresolution grid encoding, pure PyTorch (tiny-cuda-nn's GridEncoding forward).

    Args:
        x: positions. (N, D) float, nominally in [0, 1]; values outside are not clamped (tcnn wraps them).
        params: flat grid table, levels at `spec.offsets`, features innermost. (spec.n_params,) float.
        spec: from `grid_spec(D, config)`.
    Returns: (N, L * F) features, level-major (`out[:, l * F + f]`), in the promoted dtype of x, params and
    float32 (float64 inputs stay float64, so `gradcheck` works).
    Differentiable w.r.t. params and x to any order (double backward for eikonal losses); d/dx is 0 for
    Nearest and, like tcnn, ignores that cell indices jump at cell faces. Memory: corners are visited one at a
    time, O(N * (D + F)) each; with autograd each level is checkpointed (recomputed in backward), so the graph
    holds O(N * D) per level (about 2.5 GB peak for fwd+bwd of 2^20 points through the default 3D HashGrid);
    params are split into per-level views once per call, so each level's gather gradient is the size of its
    own table. Example: `grid_encode_torch(torch.rand(4, 3), p, grid_spec(3, {}))`.
    """
    if x.dim() != 2 or x.shape[1] != spec.n_dims or not x.is_floating_point():
        raise ValueError(f"positions must be (N, {spec.n_dims}) float, got {tuple(x.shape)} {x.dtype}")
    if params.dim() != 1 or params.numel() != spec.n_params:
        raise ValueError(f"params must be ({spec.n_params},), got {tuple(params.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, params.dtype), torch.float32)
    x, params = x.to(dtype), params.to(dtype)
    needs_graph = torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
    # Per-level views, split once: each level's gather then has a gradient the size of its own table, and one
    # split backward assembles d params (slicing params per level would build a full-size gradient per level).
    tables = torch.split(params, [size * spec.n_features for size in spec.hashmap_sizes])
    levels = []
    for level, table in enumerate(tables):
        if needs_graph:  # recompute each level in backward, not keep 2^D index/weight tensors per level
            levels.append(checkpoint(_encode_level, x, table, spec, level, use_reentrant=False,
                                     preserve_rng_state=False))
        else:
            levels.append(_encode_level(x, table, spec, level))
    return torch.cat(levels, dim=1)


def _levels_from_n_features(config: Any, where: str) -> Any:
    """tcnn accepts `n_features` (or `n_grid_features`) instead of n_levels: n_levels = n_features / F."""
    if not isinstance(config, dict):
        return config
    key = next((k for k in ("n_features", "n_grid_features") if k in config), None)
    if key is None:
        return config
    config = dict(config)
    n_features = config.pop(key)
    config.pop("n_grid_features", None)
    if "n_levels" in config:
        raise ConfigError(f"{where}: give {key} or n_levels, not both (one determines the other)")
    per_level = config.get("n_features_per_level", 2)
    if not isinstance(n_features, int) or n_features < 1 or not isinstance(per_level, int) or per_level < 1 \
            or n_features % per_level:
        raise ConfigError(f"{where}.{key}: must be a positive multiple of n_features_per_level={per_level}, "
                          f"got {n_features!r}")
    config["n_levels"] = n_features // per_level
    return config


class Grid(Encoding):
    """Trainable multiresolution grid (tiny-cuda-nn `Grid`; `type` Hash, Dense or Tiled).

    x: (N, D) float in [0, 1] (not clamped) -> (N, n_levels * n_features_per_level).
    `self.spec` holds the resolved layout; `self.params` the flat table (tcnn order, so state dicts load),
    float32 master parameters initialised uniform in [-1e-4, 1e-4] from `seed`.
    Backends (`ngraphics.ops`, op `grid_encode`): `torch` (reference), `triton` (`ngraphics.kernels.grid`;
    a spec the kernel lacks is a ConfigError at construction); `auto` takes Triton on CUDA when the kernel
    supports the spec (`ngraphics.kernels.grid.unsupported_reason`), else torch.
    dtype: the tables' and the output's precision. Our default training dtype: fp32 master params; float32
        in the native API, float16 tables+outputs when dtype=torch.float16 (the tcnn drop-in on CUDA).
        None (default): params' dtype, float32 for the float32 master params, the exact twin of the
        reference. torch.float16: tiny-cuda-nn's precision: the kernels read an fp16 copy of the tables made
        each call (interpolation still sums in float32) and write fp16 outputs; the torch backend gives the
        same numbers on any device by rounding the params to fp16 and the output to fp16. Either way the
        params stay float32 and receive float32 gradients (as through the identity). torch.float32: float32
        tables and output.
    gradient_dtype: the precision in which the Triton kernels sum the table gradient over points (a speed
        option; the params' gradient is float32 either way). None or torch.float32 (default): float32 sums.
        torch.float16: tiny-cuda-nn's half2 accumulation, on sm_90 GPUs with n_features_per_level >= 2
        (float32 otherwise, as tcnn for F = 1): half the reduction bytes, faster backward, but every partial
        sum is rounded to fp16 (relative error ~2^-11 sqrt(contributions per entry)), tiny gradients lose
        bits and sums past 65504 become inf: use loss scaling (torch.amp.GradScaler detects the inf and skips
        the step). The torch backend always sums in float32, whatever this says.
    """

    otype = "Grid"
    Config = GridConfig
    has_dtype = True
    has_gradient_dtype = True

    def __init__(self, n_input_dims: int, config: Any = None, *, backend: str = "auto", strict: bool = True,
                 seed: int = 1337, dtype: torch.dtype | None = None,
                 gradient_dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, _levels_from_n_features(config, self.otype), backend=backend,
                         strict=strict)
        self.dtype = check_precision(dtype, self.otype)
        self.gradient_dtype = check_precision(gradient_dtype, self.otype, "gradient_dtype")
        self.spec = grid_spec(n_input_dims, self.config, self.otype)
        self.n_output_dims = self.spec.n_levels * self.spec.n_features
        ops.check_supported("grid_encode", self.backend, self.spec)  # before the table is allocated
        generator = torch.Generator().manual_seed(seed)
        init = torch.rand(self.spec.n_params, generator=generator, dtype=torch.float32)
        self.params = nn.Parameter(init * (2 * INIT_RANGE) - INIT_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, D) float -> (N, L * F) in `dtype` (None: params' dtype)."""
        self.check_input(x)
        if not x.is_floating_point():
            raise ValueError(f"{self.otype}: positions must be float, got {x.dtype}")
        if ops.use_kernel("grid_encode", self.backend, x.device, self.spec):
            out = ops.kernel("grid_encode")(x, self.params, self.spec, table_dtype=self.dtype,
                                            out_dtype=self.dtype, gradient_dtype=self.gradient_dtype)
        else:
            out = grid_encode_torch(x, round_params(self.params, self.dtype), self.spec)
        return out.to(self.dtype or self.params.dtype)

    def config_dict(self) -> dict:
        """The resolved config, as tiny-cuda-nn's `hyperparams()` reports it (per_level_scale filled in)."""
        out = {"otype": self.otype, **dataclasses.asdict(self.config)}
        spec = self.spec
        per_level_scale = self.config.per_level_scale
        if per_level_scale is None:
            per_level_scale = default_per_level_scale(spec.grid_type, spec.n_levels,
                                                      self.config.base_resolution)
        out.update(type=spec.grid_type, interpolation=spec.interpolation, hash=spec.hash_type,
                   per_level_scale=float(_f32(per_level_scale)))
        return out

    def extra_repr(self) -> str:
        s = self.spec
        dtype = "" if self.dtype is None else f", dtype={self.dtype}"
        if self.gradient_dtype is not None:
            dtype += f", gradient_dtype={self.gradient_dtype}"
        return (f"{super().extra_repr()}, type={s.grid_type}, n_levels={s.n_levels}, F={s.n_features}, "
                f"resolutions={s.resolutions[0]}..{s.resolutions[-1]}, "
                f"interpolation={s.interpolation}{dtype}")


class HashGrid(Grid):
    """tiny-cuda-nn `HashGrid`: a `Grid` whose `type` defaults to Hash."""

    otype = "HashGrid"
    Config = HashGridConfig


class DenseGrid(Grid):
    """tiny-cuda-nn `DenseGrid`: a `Grid` whose `type` defaults to Dense (per_level_scale reaching 256)."""

    otype = "DenseGrid"
    Config = DenseGridConfig


class TiledGrid(Grid):
    """tiny-cuda-nn `TiledGrid`: a `Grid` whose `type` defaults to Tiled (tables of base_resolution^D)."""

    otype = "TiledGrid"
    Config = TiledGridConfig


__all__ = [
    "HASH_PRIMES",
    "DenseGrid",
    "DenseGridConfig",
    "Grid",
    "GridConfig",
    "GridSpec",
    "HashGrid",
    "HashGridConfig",
    "TiledGrid",
    "TiledGridConfig",
    "default_per_level_scale",
    "grid_encode_torch",
    "grid_index_plan",
    "grid_spec",
]

"""Input encodings with tiny-cuda-nn's names, keys and defaults.

`create_encoding(n_input_dims, {"otype": "HashGrid", ...})` builds any of them; `ENCODINGS` is the one
name -> class table (tiny-cuda-nn matches `otype` case-insensitively, and so do we).
"""

from __future__ import annotations

from typing import Any

import torch

from ngraphics.encodings.base import Encoding
from ngraphics.encodings.composite import Composite
from ngraphics.encodings.frequency import Frequency, TriangleWave
from ngraphics.encodings.grid import DenseGrid, Grid, HashGrid, TiledGrid
from ngraphics.encodings.identity import Identity
from ngraphics.encodings.oneblob import OneBlob
from ngraphics.encodings.simplex import Simplex
from ngraphics.encodings.spherical_harmonics import SphericalHarmonics
from ngraphics.errors import ConfigError, choice_message

ENCODINGS: dict[str, type[Encoding]] = {
    "HashGrid": HashGrid,
    "DenseGrid": DenseGrid,
    "TiledGrid": TiledGrid,
    "Grid": Grid,
    "Simplex": Simplex,
    "Frequency": Frequency,
    "TriangleWave": TriangleWave,
    "OneBlob": OneBlob,
    "SphericalHarmonics": SphericalHarmonics,
    "Identity": Identity,
    "Composite": Composite,
}


def encoding_class(otype: Any, where: str = "encoding.otype") -> type[Encoding]:
    """Look up an encoding class by tiny-cuda-nn `otype` (case-insensitive)."""
    by_lower = {name.lower(): cls for name, cls in ENCODINGS.items()}
    if not isinstance(otype, str) or otype.lower() not in by_lower:
        raise ConfigError(choice_message(where, otype, ENCODINGS))
    return by_lower[otype.lower()]


def create_encoding(
    n_input_dims: int, config: dict, *, backend: str = "auto", strict: bool = True, where: str = "encoding",
    dtype: torch.dtype | None = None, gradient_dtype: torch.dtype | None = None,
) -> Encoding:
    """Build the encoding described by a tiny-cuda-nn style dict (`otype` plus that encoding's keys).

    Args:
        n_input_dims: D, the input dimension.
        config: e.g. `{"otype": "HashGrid", "n_levels": 16}`; missing keys take tiny-cuda-nn's defaults.
        backend: `auto | torch | triton`.
        strict: unknown keys are errors (True) or collected in `encoding.unknown_keys` (False).
        dtype: tables' and output precision of the encodings that have tables (grids, Simplex; a Composite
            hands it to its nested encodings): None (float32), torch.float32 or torch.float16 (see
            `HashGrid`). Encodings without tables ignore it (their output is float32).
        gradient_dtype: None, or torch.float16 for tiny-cuda-nn's fp16 sums of the table gradient in the
            grid and Simplex kernels (see `HashGrid`); only those encodings accept it.
    """
    if not isinstance(config, dict) or "otype" not in config:
        raise ConfigError(f"{where}: needs an otype key, one of {', '.join(ENCODINGS)}")
    cls = encoding_class(config["otype"], f"{where}.otype")
    if gradient_dtype is not None:
        if not cls.has_gradient_dtype:
            raise ConfigError(f"{where}: {config['otype']} has no gradient_dtype option (grids and Simplex do)")
        return cls(n_input_dims, config, backend=backend, strict=strict, dtype=dtype, gradient_dtype=gradient_dtype)
    if cls.has_dtype:
        return cls(n_input_dims, config, backend=backend, strict=strict, dtype=dtype)
    return cls(n_input_dims, config, backend=backend, strict=strict)


__all__ = ["ENCODINGS", "Encoding", "create_encoding", "encoding_class", *ENCODINGS]

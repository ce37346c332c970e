"""Backend selection: `auto | torch | triton` for the hot operations.

`torch` is the readable reference and runs everywhere. `triton` runs the kernels in `ngraphics.kernels` on
CUDA tensors (and under `TRITON_INTERPRET=1` on CPU tensors, for tests). `auto` picks `triton` when the
tensors live on a CUDA device and Triton imports, else `torch`.
"""

from __future__ import annotations

import functools
import os

import torch

from ngraphics.errors import ConfigError, choice_message

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    """True when Triton imports and either a CUDA device exists or the interpreter is switched on."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or triton_interpreter()


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(name: str, where: str = "backend") -> str:
    if name not in BACKENDS:
        raise ConfigError(choice_message(where, name, BACKENDS))
    return name


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend that will run for tensors on `device`: `torch` or `triton`."""
    check_backend(name)
    device = torch.device(device)
    can_triton = triton_available() and (device.type == "cuda" or triton_interpreter())
    if name == "auto":
        return "triton" if (can_triton and device.type == "cuda") else "torch"
    if name == "triton" and not can_triton:
        raise ConfigError(
            f"backend 'triton' needs a CUDA device and the triton package (or TRITON_INTERPRET=1), "
            f"got tensors on {device}; use backend='torch' or 'auto'"
        )
    return name

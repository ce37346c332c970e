"""Which torch device a run uses: one picker for every verb (train, eval, render, fit-image, profile)."""

from __future__ import annotations

import torch

from ngraphics.errors import ConfigError


def pick_device(name: str | None = "auto", where: str = "device") -> torch.device:
    """`auto` (or None) = cuda when available, else cpu; `cpu`, `cuda`, `cuda:1`, ... as given.

    ConfigError naming `where` for an unknown name or a CUDA device that is not there.
    Example: pick_device("cpu") == torch.device("cpu")."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: {name!r} requested but torch.cuda.is_available() is False; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: {name!r}: ngraphics runs on cpu or cuda")
    return device


def peak_gpu_gb(device: torch.device) -> float | None:
    """The most GPU memory torch has allocated on `device` so far, GiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_rss_gb() -> float:
    """The process's peak resident set size so far, GiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)

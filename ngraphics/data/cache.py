"""On-disk cache of decoded (undistorted, downscaled) dataset images, so a second run starts fast.

Location: `$NGRAPHICS_CACHE`, else `$XDG_CACHE_HOME/ngraphics`, else `~/.cache/ngraphics`. Set
`NGRAPHICS_CACHE=off` to disable it. One safetensors file per load, named by a hash of every source file's
absolute path, size and modification time plus the processing options, so editing or touching a file, or
asking for another downscale, makes a new entry. Files are written to a temporary name and renamed, so a
crash never leaves a half-written entry; an unreadable entry counts as a miss and is rewritten.
Delete the folder at any time to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ngraphics.io.atomic import atomic_path

CACHE_VERSION = 1


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is switched off (NGRAPHICS_CACHE=off)."""
    env = os.environ.get("NGRAPHICS_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "none", "false", ""):
        return None
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ngraphics"


def file_signature(path: str | Path) -> list:
    """[absolute path, size, mtime in ns] of a file: changes whenever the file is replaced or edited."""
    path = Path(path).resolve()
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(kind: str, files: list[str | Path], options: object) -> str:
    """Hex digest naming a cache entry for `kind` built from `files` with JSON-serialisable `options`."""
    record = {"v": CACHE_VERSION, "kind": kind, "files": [file_signature(f) for f in files],
              "options": options}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{key}.safetensors"


def load_arrays(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `key`, or None on a miss (or when the entry cannot be read)."""
    path = cache_path(key)
    if path is None or not path.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001  truncated or foreign file: drop it and rebuild
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def save_arrays(key: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Store arrays under `key` atomically; returns the file, or None when caching is off or not writable."""
    path = cache_path(key)
    if path is None:
        return None
    from safetensors.numpy import save_file

    try:
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    except OSError:  # read-only home, full disk: caching is an optimisation, never a failure
        return None
    return path

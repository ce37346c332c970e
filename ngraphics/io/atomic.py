"""Write files so that a crash never leaves a half-written one: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _plain_permissions(tmp)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_yaml(path: str | Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a single write of one line; readers skip a torn last line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def atomic_path(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Context manager yielding a temporary path beside `path` for writers that want a filename
    (imageio, safetensors, torch.save); renamed onto `path` on success, removed on failure."""

    @contextlib.contextmanager
    def manager() -> Iterator[Path]:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        _plain_permissions(tmp)
        try:
            yield Path(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    return manager()


def _plain_permissions(path: str | Path) -> None:
    """mkstemp creates files 0600; give them the mode a plain `open` would (0666 minus the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

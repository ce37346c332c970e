"""Checkpoints that survive crashes and load without running code.

A checkpoint is a nested dict of tensors and plain Python values (a method's `state_dict()`, the trainer's
step, random states) written with `torch.save` to a temporary file beside the target and renamed into place,
so a crash or Ctrl-C during a save leaves the previous checkpoint untouched. Loading uses
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers (no pickled code).

`CheckpointFolder` keeps the last `keep` checkpoints as `step_0001234.pt`; `latest()` returns the newest one
that loads, falling back to older ones if the newest is damaged.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from ngraphics.errors import DataError
from ngraphics.io.atomic import atomic_path

_NAME = re.compile(r"^step_(\d+)\.pt$")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights only: no code runs). DataError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a checkpoint, or objects weights_only refuses
        raise DataError(f"{path}: cannot read checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not an ngraphics checkpoint (expected a dict, got {type(state).__name__})")
    return state


class CheckpointFolder:
    """The `checkpoints/` folder of a run.

    Args:
        folder: where the files live (created on first save).
        keep: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, int(keep))

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, state: dict) -> Path:
        """Write the checkpoint of `step`, then delete all but the newest `keep`. Returns its path."""
        path = self.folder / f"step_{step:07d}.pt"
        save_checkpoint(path, state)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
        """The newest checkpoint that loads, as (path, state); None if there is none."""
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path, map_location)
            except DataError as err:
                warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=2)
        return None

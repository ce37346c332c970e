"""Checkpoints that survive crashes, prove their contents and load without running code.

A checkpoint is a nested dict of tensors and plain Python values (a method's `state_dict()`, the trainer's
step, random states). On disk it is one header line, then the `torch.save` bytes of the dict:

    ngraphics-checkpoint 2 sha256=<64 hex digits> size=<bytes>\\n<torch.save bytes>

written to a temporary file beside the target and renamed into place, so a crash or Ctrl-C during a save leaves
the previous checkpoint untouched. Loading checks the size and the SHA-256 of the bytes (a truncated or
overwritten file is refused, naming it), reads them with `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers (no pickled code), and refuses NaN/inf in any floating tensor
(parameters, optimizer moments, occupancy grids), naming the file and the key.

`CheckpointFolder` keeps the last `keep` checkpoints as `step_0001234.pt`; `latest()` returns the newest one
that loads; a damaged newer one is reported in one line on stderr that names the one used instead.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ngraphics.errors import ConfigError, DataError
from ngraphics.io.atomic import atomic_path

_NAME = re.compile(r"^step_(\d+)\.pt$")
_MAGIC = b"ngraphics-checkpoint 2 "
_HEADER = re.compile(rb"^ngraphics-checkpoint 2 sha256=([0-9a-f]{64}) size=(\d+)\n")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically (temporary file, then rename), with its size and SHA-256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = _MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} size={len(payload)}\n".encode()
    with atomic_path(path) as tmp:
        _write(tmp, header, payload)


def _write(path: Path, header: bytes, payload: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(header)
        f.write(payload)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`: checksum checked, weights only (no code runs), every
    floating tensor finite. DataError naming the file (and the key) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    head = _HEADER.match(data[:200])
    if head is None:
        what = "written by an older ngraphics without a checksum" if data[:2] == b"PK" else "no checkpoint header"
        raise DataError(f"{path}: not a verifiable ngraphics checkpoint ({what})")
    payload = memoryview(data)[head.end():]
    if len(payload) != int(head.group(2)):
        raise DataError(f"{path}: damaged checkpoint (truncated: {len(payload)} of {int(head.group(2))} bytes)")
    if hashlib.sha256(payload).hexdigest() != head.group(1).decode():
        raise DataError(f"{path}: damaged checkpoint (SHA-256 of its contents does not match its header)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - objects weights_only refuses, or a torch version it cannot read
        raise DataError(f"{path}: cannot read checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not an ngraphics checkpoint (expected a dict, got {type(state).__name__})")
    bad = _first_non_finite(state)
    if bad is not None:
        key, count, total = bad
        raise DataError(f"{path}: damaged checkpoint ({count} of {total} values of {key} are NaN or inf)")
    return state


def _first_non_finite(obj, prefix: str = "") -> tuple[str, int, int] | None:
    """(key path, non-finite count, size) of the first floating tensor with NaN/inf in a nested state."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            finite = torch.isfinite(obj)
            if not bool(finite.all()):
                return prefix or "<root>", int((~finite).sum()), obj.numel()
        return None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def load_method_state(method, state: dict, path: str | Path, model_config: dict) -> None:
    """`method.load_state_dict(state["method"])`, with a shape mismatch reported in one line that names the
    config keys that differ from the ones the checkpoint was trained with (`model.field.encoding.n_levels:
    checkpoint 16, config 4`), or the parameter when the checkpoint does not record its config."""
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, ValueError, IndexError) as err:
        text = str(err)
        saved = state.get("model_config")
        diff = _config_diff(saved, model_config, "model") if isinstance(saved, dict) else []
        if diff:
            raise ConfigError(f"{path}: does not fit the config: {'; '.join(diff[:4])} "
                              "(train a new run, or set the key back)") from None
        match = re.search(r"size mismatch for ([\w.]+): copying a param with shape (\S+ \S+) from checkpoint, "
                          r"the shape in current model is (\S+ \S+)", text)
        if match:
            raise ConfigError(f"{path}: does not fit the config: parameter {match.group(1)} is "
                              f"{match.group(2).rstrip(',')} in the checkpoint, {match.group(3).rstrip('.')} "
                              "in the model (a model.* key changed since training)") from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
        raise ConfigError(f"{path}: does not fit the config ({type(err).__name__}: {first})") from None


def _config_diff(saved: dict, current: dict, prefix: str) -> list[str]:
    """`key: checkpoint a, config b` for every leaf that differs between two nested config dicts."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b, name = saved.get(key), current.get(key), f"{prefix}.{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, name)
        elif _plain(a) != _plain(b):
            out.append(f"{name}: checkpoint {a!r}, config {b!r}")
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


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
        """Write the checkpoint of `step`, then delete all but the newest `keep`. Returns its path.

        Checkpoints of later steps are deleted too: they belong to a timeline the run left (after resuming
        past a damaged newest checkpoint, which `latest()` reported)."""
        path = self.folder / f"step_{step:07d}.pt"
        save_checkpoint(path, state)
        paths = self.paths()
        later = paths[paths.index(path) + 1:]
        for old in paths[: paths.index(path) + 1][: -self.keep] + later:
            old.unlink(missing_ok=True)
        return path

    def latest(self, map_location: str | torch.device = "cpu",
               report: Callable[[str], None] = _stderr_line) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads, as (path, state); None if the folder holds none.

        Damaged newer ones are reported through `report` in one line naming the checkpoint used instead;
        DataError (naming the newest) when every checkpoint is damaged."""
        paths = list(reversed(self.paths()))
        damaged: list[DataError] = []
        for path in paths:
            try:
                state = load_checkpoint(path, map_location)
            except DataError as err:
                damaged.append(err)
                continue
            if damaged:
                skipped = ", ".join(Path(str(e).split(": ")[0]).name for e in damaged)
                why = str(damaged[0]).split(": ", 1)[-1]
                why = why[len("damaged checkpoint ("):-1] if why.startswith("damaged checkpoint (") else why
                report(f"warning: skipping damaged checkpoint {skipped} ({why}); using {path}")
            return path, state
        if damaged:
            more = f" (and {len(damaged) - 1} older, also damaged)" if len(damaged) > 1 else ""
            raise DataError(f"{damaged[0]}{more}")
        return None

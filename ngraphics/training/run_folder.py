"""The run folder `runs/<name>/`: everything one training run writes, enough to resume and re-evaluate it.

    runs/<name>/
        config.yaml      the resolved config (every key, defaults included), written once at the start
        metrics.jsonl    one JSON object per line: training logs and evaluations
        checkpoints/     step_0001234.pt, the newest `keep` of them (see checkpoint.py)
        renders/         test-view images written at the end of training
        eval/            `ngraphics eval` output: images and metrics.json
        video/           `ngraphics render` output
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ngraphics.config import load_mapping
from ngraphics.errors import DataError
from ngraphics.io.atomic import append_jsonl, atomic_write_text, atomic_write_yaml
from ngraphics.training.checkpoint import CheckpointFolder


class RunFolder:
    """Paths and small writers of one run folder.

    Args:
        path: the folder (created by `create`).
        keep_checkpoints: how many checkpoints `checkpoints` keeps.
    """

    def __init__(self, path: str | Path, keep_checkpoints: int = 2):
        self.path = Path(path)
        self.checkpoints = CheckpointFolder(self.path / "checkpoints", keep=keep_checkpoints)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def renders(self) -> Path:
        return self.path / "renders"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def video_dir(self) -> Path:
        return self.path / "video"

    def create(self, config: dict) -> None:
        """Make the folder and write the resolved config."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.config_path, config)

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise DataError(f"{self.path}: not a run folder (no config.yaml)")
        return load_mapping(self.config_path)

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (with a wall-clock timestamp)."""
        append_jsonl(self.metrics_path, {"wall": round(time.time(), 3), **record})

    def drop_records_after(self, step: int) -> int:
        """Remove the records of metrics.jsonl logged after `step` (atomically: the file is rewritten and
        renamed into place). A resumed run redoes those steps, so no step appears twice. Returns how many
        records were dropped; a torn last line is dropped too."""
        if not self.metrics_path.is_file():
            return 0
        lines = self.metrics_path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step):
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        return len(lines) - len(kept)

    def read_metrics(self) -> list[dict]:
        """All records of metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


def resolve_run(name_or_path: str | Path, runs_dir: str | Path = "runs") -> RunFolder:
    """A run given as a folder path or as a name under `runs_dir`; DataError if it is not a run folder."""
    path = Path(name_or_path)
    if not (path / "config.yaml").is_file() and (Path(runs_dir) / path / "config.yaml").is_file():
        path = Path(runs_dir) / path
    if not path.is_dir():
        raise DataError(f"{name_or_path}: run folder not found (looked in . and {runs_dir}/)")
    if not (path / "config.yaml").is_file():
        raise DataError(f"{path}: not a run folder (no config.yaml)")
    return RunFolder(path)

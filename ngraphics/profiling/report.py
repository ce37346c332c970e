"""Benchmark reports: a plain-text table printer, the environment record and an atomic JSON writer."""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path

import torch

from ngraphics.io.atomic import atomic_write_text


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Align `rows` into a text table.

    Args:
        rows: dicts; a missing or None value prints as `n/a`, floats get 3 significant digits.
        columns: (key, header) pairs in print order.
    """
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([format_value(row.get(key)) for key, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [all(_numeric(r[i]) or r[i] in ("n/a", "") for r in cells[1:]) for i in range(len(columns))]
    lines = []
    for n, r in enumerate(cells):
        cells = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 1024 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return str(value)


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell[:1] == "-" and cell[1:2].isdigit() or cell.startswith("2^")


def environment(device: torch.device | str) -> dict:
    """Versions and the device name, to store with every benchmark result."""
    device = torch.device(device)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - only recording what is installed
        env["triton"] = None
    try:
        import tinycudann

        env["tinycudann"] = getattr(tinycudann, "__version__", "importable")
    except Exception:  # noqa: BLE001 - a broken tinycudann build can raise anything
        env["tinycudann"] = None
    import ngraphics

    env["ngraphics"] = ngraphics.__version__
    env["argv"] = sys.argv
    return env


def write_json(path: str | Path, payload: dict) -> None:
    """Write `payload` as indented JSON, atomically (NaN/inf become null)."""
    atomic_write_text(path, json.dumps(_finite(payload), indent=1) + "\n")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


__all__ = ["environment", "format_table", "format_value", "write_json"]

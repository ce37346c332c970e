"""What a training loop shows and logs: a progress bar, SI-prefixed rates, and rounded metrics records.

One home for the trainer (`ngraphics train`) and the image demo (`ngraphics fit-image`), so both print
numbers the same way:

    bar = progress_bar(steps, enabled=not quiet)            # tqdm on stderr, or a no-op stand-in
    bar.set_postfix_str(f"loss {loss:.4g}, {rate_text(rays, seconds, 'rays')}")   # "..., 12.3M rays/s"
    run.log(round_record({"step": step, "loss": loss}))    # floats to 6 decimals / 6 significant digits
"""

from __future__ import annotations

import math
import sys

import numpy as np

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


class _NoBar:
    """Stands in for a tqdm bar when progress is off: the three methods a loop calls, doing nothing."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, initial: int = 0, enabled: bool = True, unit: str = "step"):
    """A tqdm bar on stderr counting `unit`s from `initial` to `total`, or, with `enabled=False`, an object
    with the same `update(n)`, `set_postfix_str(s)` and `close()` that prints nothing.

    Args:
        total: the count at which the bar is full (steps of the run).
        initial: where it starts (a resumed run's step).
        enabled: False for `--quiet` / `progress: false`.
        unit: what one count is; tqdm shows the rate as `<unit>/s` ("step/s").
    """
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=sys.stderr)


def format_si(value: float) -> str:
    """`value` with 3 significant digits and an SI prefix (k, M, G, T), no space, no unit.

    12_345_678 -> "12.3M", 1234 -> "1.23k", 999 -> "999", 0.5 -> "0.5", 999_950 -> "1M" (rounded before
    the prefix is picked), -2500 -> "-2.5k", nan -> "nan", inf -> "inf".
    """
    if not math.isfinite(value):
        return str(float(value))
    sign = "-" if value < 0 else ""
    x = float(f"{abs(value):.3g}")  # round first: 999,950 is "1M", not "1e+03k"
    for scale, prefix in _PREFIXES:
        if x >= scale:
            return f"{sign}{x / scale:.3g}{prefix}"
    return f"{sign}{x:.3g}"


def rate_text(count: float, seconds: float, unit: str) -> str:
    """`count` things in `seconds` as a rate: rate_text(12.3e6, 1.0, "rays") -> "12.3M rays/s".

    `seconds <= 0` (nothing timed yet) gives "- rays/s" rather than a division by zero."""
    if seconds <= 0:
        return f"- {unit}/s"
    return f"{format_si(count / seconds)} {unit}/s"


def round_record(record: dict) -> dict:
    """A metrics record with its floats rounded for metrics.jsonl: to 6 decimals, but never to fewer than 6
    significant digits (a loss of 1.2345678e-5 stays 1.23457e-05). numpy floats become Python floats; NaN
    and +-inf pass through unchanged (json writes NaN / Infinity, which Python's json reads back); every
    other value is kept as it is. Returns a new dict; `record` is not changed.

    Example: round_record({"step": 3, "loss": 0.123456789}) == {"step": 3, "loss": 0.123457}.
    """
    return {k: _round_float(float(v)) if isinstance(v, (float, np.floating)) else v
            for k, v in record.items()}


def _round_float(value: float) -> float:
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, max(6, 5 - math.floor(math.log10(abs(value)))))


__all__ = ["format_si", "progress_bar", "rate_text", "round_record"]

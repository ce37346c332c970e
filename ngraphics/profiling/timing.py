"""Timing helpers for benchmarks: warm up, synchronise, repeat, report the median.

On CUDA each repeat is bracketed by CUDA events (device time of the queued work); on CPU by
`time.perf_counter`. `time_fn` synchronises after every call (each call timed alone); `time_queued` queues
all calls back to back and synchronises once, so the host's launch overhead overlaps device work as in a
training loop. Tests never time; benchmarks are programs (`ngraphics profile …`, `kernels/bench_*.py`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over `repeats` timed calls (after the warm-up)."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on `device` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str,
    *,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 50,
    min_time_s: float = 0.25,
) -> Timing:
    """Time `fn()` on `device`.

    Args:
        fn: the work; called `warmup` times untimed, then timed until `min_repeats` calls were made and
            `min_time_s` seconds passed, or `max_repeats` calls.
        device: where the work runs; CUDA uses events, CPU uses perf_counter.
    Returns: Timing with the median, min and max in milliseconds.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats
                                        or time.perf_counter() - start_all < min_time_s):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), min(times), max(times), len(times))


def time_queued(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 5,
                repeats: int = 30) -> Timing:
    """Time `repeats` calls of `fn()` queued back to back (after `warmup` calls), each bracketed by its own
    pair of CUDA events, with one synchronisation at the end; on CPU, perf_counter around each call.
    Returns: Timing (milliseconds per call)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    else:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    return Timing(statistics.median(times), min(times), max(times), len(times))


def wall_time(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds for one call of `fn()` including synchronisation (e.g. a first call that compiles)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


__all__ = ["Timing", "synchronize", "time_fn", "time_queued", "wall_time"]

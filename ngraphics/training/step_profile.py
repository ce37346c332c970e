"""Where a training step's time goes: `StepProfile`, behind `trainer.profile_at` / `profile_steps`."""

from __future__ import annotations

import sys
import time

import torch

from ngraphics.io.atomic import atomic_write_text


class StepProfile:
    """torch.profiler over a few training steps; `finish` writes RUN/profile.txt and a metrics record.

    Device time is grouped with the method's optional `profile_categories` ({category: (substring, ...)}
    matched against kernel/operation names); what matches none is "rest". `step_ms` is wall time per step
    (synchronised), so step_ms minus the device total is time the GPU sat idle (launches, host syncs)."""

    def __init__(self, trainer):
        from torch.profiler import ProfilerActivity, profile

        self.trainer = trainer
        self.cuda = trainer.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._sync()
        self.start = time.perf_counter()
        self.prof = profile(activities=activities)
        self.prof.__enter__()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.trainer.device)

    def finish(self, steps: int) -> dict:
        self._sync()
        wall_ms = (time.perf_counter() - self.start) * 1e3 / steps
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        categories = self.trainer.method.profile_categories
        split: dict[str, float] = {name: 0.0 for name in categories}
        split["rest"] = 0.0
        for e in events:  # kernels only (operator rows repeat their kernels' time)
            if not self.cuda or e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.self_device_time_total
            if us <= 0:
                continue
            name = next((c for c, keys in categories.items() if any(k in e.key for k in keys)), "rest")
            split[name] += us / 1e3 / steps
        device_ms = sum(split.values())
        lines = [f"profile of {steps} steps from step {self.trainer.step - steps} on {self.trainer.device}",
                 f"wall time per step: {wall_ms:.3f} ms"]
        if self.cuda:
            lines.append(f"GPU busy per step: {device_ms:.3f} ms (idle {max(wall_ms - device_ms, 0):.3f} ms)")
            lines += [f"  {k:<12} {v:8.3f} ms  {100 * v / max(wall_ms, 1e-9):5.1f}% of the step" for k, v in split.items()]
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        lines += ["", events.table(sort_by=sort, row_limit=30)]
        atomic_write_text(self.trainer.run.path / "profile.txt", "\n".join(lines) + "\n")
        record = {"step": self.trainer.step, "split": "profile", "step_ms": round(wall_ms, 3)}
        if self.cuda:
            record.update({f"{k}_ms": round(v, 3) for k, v in split.items()})
        self.trainer.run.log(record)
        print("\n".join(lines[:3 + (len(split) if self.cuda else 0)]), file=sys.stderr)
        return record

"""Learning-rate schedules as plain functions of (step, progress), so step and time budgets work alike."""

from __future__ import annotations

from collections.abc import Sequence


def warmup_step_decay(step: int, progress: float, lr: float, warmup_steps: int, decay: float,
                      milestones: Sequence[float]) -> float:
    """Linear warm-up over `warmup_steps`, then x `decay` at each progress fraction in `milestones`
    (nerfacc's Instant-NGP schedule: milestones (0.5, 0.75, 0.9), decay 0.33).

    Args:
        step: optimisation steps taken so far (0 for the first).
        progress: share of the run done, in [0, 1] (the trainer's `batch["progress"]`).
        lr: peak learning rate.
    Returns: the learning rate of this step.
    Example: warmup_step_decay(99, 0.6, 1e-2, 100, 0.33, (0.5, 0.75)) == 1e-2 * 0.33
    """
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    passed = sum(progress >= m for m in milestones)
    return lr * warm * decay**passed

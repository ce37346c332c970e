"""Exponential moving average of parameters, used for evaluation (instant-ngp's `Ema` optimizer wrapper).

Adam at NeRF learning rates leaves the parameters jittering around their optimum from step to step; the
average over the last ~1 / (1 - decay) steps renders cleaner images than any single step (instant-ngp
trains with decay 0.95). Training keeps updating the raw parameters; `copy_to(shadow)` writes the average
into a separate copy of the module that renders, so the live parameters (and the tensors a CUDA-graph step
recorded) are never swapped, and a render can come between any two steps.
"""

from __future__ import annotations

import torch
from torch import nn


class ParameterEMA:
    """average <- decay * average + (1 - decay) * parameter, after every optimizer step.

    Args:
        module: whose parameters are averaged (starting from their current values, so no bias correction).
        decay: in [0, 1); 0 turns the average into a copy of the last step.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.names = [name for name, _ in module.named_parameters()]
        self.params = [p for _, p in module.named_parameters()]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average (no host sync; CUDA-graph safe)."""
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, shadow: nn.Module) -> None:
        """Write the average into `shadow`'s parameters of the same names (a copy of the averaged module,
        e.g. `copy.deepcopy(module)`); the averaged module itself is left alone."""
        params = dict(shadow.named_parameters())
        torch._foreach_copy_([params[name] for name in self.names], self.average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copies in place (tensors recorded in a CUDA graph stay valid)."""
        with torch.no_grad():
            for name, a in zip(self.names, self.average):
                a.copy_(state[name])

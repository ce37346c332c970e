"""tiny-cuda-nn's Adam optimizer (`include/tiny-cuda-nn/optimizers/adam.h`) in PyTorch, config keys included.

Use it where a method should train like its tcnn original (the image demo, Instant-NGP): it differs from
`torch.optim.Adam` in the per-element step counters, the skipped zero-gradient elements of the encoding
tables, and L2 regularisation on the MLP weights only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class AdamConfig:
    """tiny-cuda-nn's `Adam` optimizer: keys and defaults of `include/tiny-cuda-nn/optimizers/adam.h`."""

    otype: Literal["Adam"] = "Adam"
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    l2_reg: float = 1e-8
    adabound: bool = False
    relative_decay: float = 0.0
    absolute_decay: float = 0.0
    clipping_magnitude: float = 0.0
    non_matrix_learning_rate_factor: float = 1.0
    optimize_matrix_params: bool = True
    optimize_non_matrix_params: bool = True

    def validate(self, where: str) -> None:
        if not self.learning_rate > 0:
            raise ConfigError(f"{where}.learning_rate: must be > 0, got {self.learning_rate}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be in [0, 1), got {getattr(self, key)}")


class TcnnAdam(torch.optim.Optimizer):
    """Adam with tiny-cuda-nn's semantics (`optimizers/adam.h`), for parity with tcnn's image demo.

    tcnn splits one flat parameter vector into matrix weights (the MLP, first `n_matrix` elements) and
    non-matrix parameters (the encoding that follows):

    - matrix weights: `l2_reg * w` is added to the gradient;
    - non-matrix parameters: no L2, learning rate times `non_matrix_learning_rate_factor`, and an element
      whose gradient is exactly 0 is skipped entirely, moments and step counter included (the sparse
      update hash grids rely on);
    - every element has its own step counter t for the bias correction
      `lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`;
    - update `w <- decay(w) - clamp(lr_t / (sqrt(v) + eps), lo, hi) * m` with
      `decay(w) = (1 - relative_decay * lr_t) * w - copysign(absolute_decay * lr_t, w)`, (lo, hi) = (0, inf)
      or AdaBound's bounds, then optional clipping to +-clipping_magnitude.

    Mixed precision: `torch.amp.GradScaler` hands it the loss scale and an overflow flag as tensors
    (`grad_scale`, `found_inf`, the protocol of torch's fused optimizers), so the gradients are unscaled and
    an overflowing step is skipped on the device, without a host sync: the step can be part of a CUDA
    graph, and a group's `lr` may be a 0-dim device tensor for the same reason.

    Args:
        params: parameter groups as for torch optimizers; a group's `n_matrix` (int) says how many leading
            elements of each of its tensors are matrix weights (default: all). `tcnn_param_groups(model)`
            builds them for ngraphics modules.
        config: `AdamConfig`; `learning_rate` becomes each group's `lr` (schedulers may change it).
    """

    _step_supports_amp_scaling = True  # GradScaler sets self.grad_scale / self.found_inf before step()

    def __init__(self, params, config: AdamConfig):
        super().__init__(params, {"lr": config.learning_rate, "n_matrix": None})
        self.config = config
        self.n_steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        c = self.config
        self.n_steps += 1
        scale = getattr(self, "grad_scale", None)  # set by GradScaler for this step only
        found_inf = getattr(self, "found_inf", None)
        keep = None if found_inf is None else found_inf == 0  # 0-dim bool: False skips the whole step
        bounds = (0.0, math.inf)
        if c.adabound:
            bounds = (0.1 - 0.1 / ((1 - c.beta2) * self.n_steps + 1), 0.1 + 0.1 / ((1 - c.beta2) * self.n_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    for key in ("m", "v", "t"):
                        state[key] = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
                n = p.numel() if group["n_matrix"] is None else int(group["n_matrix"])
                w_all, g_all = p.data.view(-1), p.grad.reshape(-1).float()
                if scale is not None:
                    g_all = g_all / scale.float()
                for lo, hi, matrix in ((0, n, True), (n, p.numel(), False)):
                    if hi > lo and (c.optimize_matrix_params if matrix else c.optimize_non_matrix_params):
                        lr = group["lr"] * (1.0 if matrix else c.non_matrix_learning_rate_factor)
                        self._update(w_all[lo:hi], g_all[lo:hi], {k: v[lo:hi] for k, v in state.items()},
                                     lr, matrix, bounds, keep)

    def _update(self, w: torch.Tensor, g: torch.Tensor, state: dict, lr, matrix: bool, bounds,
                keep: torch.Tensor | None = None) -> None:
        """One Adam step on the 1-D slices w, g and their state slices (updated in place). lr: float or 0-dim
        tensor; keep: None, or a 0-dim bool tensor that is False when the step must leave everything as is."""
        c = self.config
        w32 = w.float()
        if matrix:
            g = g + c.l2_reg * w32
        m = c.beta1 * state["m"] + (1 - c.beta1) * g
        v = c.beta2 * state["v"] + (1 - c.beta2) * g * g
        t = state["t"] + 1
        lr_t = lr * torch.sqrt(1 - c.beta2**t) / (1 - c.beta1**t)
        step = (lr_t / (torch.sqrt(v) + c.epsilon)).clamp(*bounds)
        new = (1 - c.relative_decay * lr_t) * w32 - torch.copysign(c.absolute_decay * lr_t, w32) - step * m
        if c.clipping_magnitude:
            new = new.clamp(-c.clipping_magnitude, c.clipping_magnitude)
        update = None if matrix else g != 0  # untouched table entries keep their value and state
        if keep is not None:
            update = keep if update is None else update & keep
        if update is not None:
            m, v, t = torch.where(update, m, state["m"]), torch.where(update, v, state["v"]), torch.where(update, t, state["t"])
            new = torch.where(update, new, w32)
        state["m"].copy_(m)
        state["v"].copy_(v)
        state["t"].copy_(t)
        w.copy_(new)


def tcnn_param_groups(model: nn.Module) -> list[dict]:
    """Parameter groups with tcnn's matrix / non-matrix split for an ngraphics module.

    A module with one flat `params` and `n_network_params` (NetworkWithInputEncoding) gives one group whose
    first `n_network_params` elements are matrix weights; parameters of `Encoding` submodules are
    non-matrix; every other parameter (MLPs, plain torch layers) counts as matrix weights."""
    from ngraphics.encodings.base import Encoding

    if hasattr(model, "n_network_params") and isinstance(getattr(model, "params", None), nn.Parameter):
        rest = [p for name, p in model.named_parameters() if name != "params"]
        groups = [{"params": [model.params], "n_matrix": int(model.n_network_params)}]
        return groups + ([{"params": rest}] if rest else [])
    encoding_ids = {id(p) for m in model.modules() if isinstance(m, Encoding) for p in m.parameters()}
    other = [p for p in model.parameters() if id(p) in encoding_ids]
    matrix = [p for p in model.parameters() if id(p) not in encoding_ids]
    groups = [{"params": matrix}] if matrix else []
    return groups + ([{"params": other, "n_matrix": 0}] if other else [])


__all__ = ["AdamConfig", "TcnnAdam", "tcnn_param_groups"]

"""Adaptive density control for Gaussian splats: policies as small dataclasses, running state kept apart
(gsplat's `strategy/default.py`, `strategy/mcmc.py` shape).

Parameters are a dict {name: nn.Parameter}, one row per Gaussian: `means` (N, 3), `scales` (N, 3) log
standard deviations, `quats` (N, 4), `opacities` (N,) logits, and any others (`sh0`, `shN`, `features`, ...)
that simply follow their rows. The optimizer is one torch Adam whose param_groups each hold one of these
parameters and carry its `name`; its moments (`exp_avg`, `exp_avg_sq`) follow the rows: pruned rows leave,
kept rows keep theirs, new rows (clones, split children, relocated Gaussians) start from zero moments.

    strategy = DefaultStrategy(); state = strategy.initialize_state()
    out = rasterization(...); strategy.step_pre_backward(out)      # means2d.retain_grad()
    loss.backward(); optimizer.step()
    strategy.step_post_backward(params, optimizer, state, step, out, scene_scale)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ngraphics.errors import DataError
from ngraphics.splatting.project import quat_scale_to_covar

Params = dict[str, torch.nn.Parameter]


# --- row operations that keep the optimizer in step ---------------------------------------------------------

def _group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(f"optimizer has no param group named {name!r}")


def update_rows(params: Params, optimizer: torch.optim.Optimizer,
                param_fn: Callable[[str, torch.Tensor], torch.Tensor],
                state_fn: Callable[[str, torch.Tensor], torch.Tensor], names: list[str] | None = None) -> None:
    """Replace each parameter by param_fn(name, old) (a new leaf Parameter) and each of its per-row
    optimizer tensors (Adam's exp_avg, exp_avg_sq) by state_fn(key, old); `step` counters stay."""
    for name in names or list(params):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        group = _group(optimizer, name)
        state = optimizer.state.pop(old, {})
        for key, value in list(state.items()):
            if key != "step" and isinstance(value, torch.Tensor) and value.shape == old.shape:
                state[key] = state_fn(key, value)
        group["params"] = [new]
        if state:
            optimizer.state[new] = state
        params[name] = new


@torch.no_grad()
def duplicate(params: Params, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Append a copy of the rows in `mask` (N,) bool; the copies start with zero Adam moments."""
    idx = mask.nonzero().squeeze(1)
    update_rows(params, optimizer, lambda _, p: torch.cat([p, p[idx]]),
                lambda _, v: torch.cat([v, torch.zeros_like(v[idx])]))


@torch.no_grad()
def remove(params: Params, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Drop the rows in `mask` (N,) bool; the kept rows keep their parameters and moments, in order."""
    keep = ~mask
    update_rows(params, optimizer, lambda _, p: p[keep], lambda _, v: v[keep])


@torch.no_grad()
def split(params: Params, optimizer: torch.optim.Optimizer, mask: torch.Tensor, revised_opacity: bool = False) -> None:
    """3DGS's split: each Gaussian in `mask` becomes two children at means + R (s * eps), eps ~ N(0, I),
    with scales s / 1.6 (covariance / 1.6^2) and the parent's opacity (or 1 - sqrt(1 - o) with
    `revised_opacity`, Rota Bulo et al. 2024). Children go to the end with zero moments; parents leave."""
    idx = mask.nonzero().squeeze(1)
    rest = (~mask).nonzero().squeeze(1)
    scales = torch.exp(params["scales"][idx])
    rot = _rotations(params["quats"][idx])
    offsets = torch.einsum("nij,bnj->bni", rot, scales * torch.randn(2, len(idx), 3, device=scales.device))

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "means":
            children = (p[idx] + offsets).reshape(-1, 3)
        elif name == "scales":
            children = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            children = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[idx]))).repeat(2)
        else:
            children = p[idx].repeat(2, *[1] * (p.ndim - 1))
        return torch.cat([p[rest], children])

    update_rows(params, optimizer, param_fn,
                lambda _, v: torch.cat([v[rest], torch.zeros((2 * len(idx), *v.shape[1:]), dtype=v.dtype,
                                                             device=v.device)]))


@torch.no_grad()
def reset_opacity(params: Params, optimizer: torch.optim.Optimizer, value: float) -> None:
    """Clamp every opacity to at most `value` (in [0, 1]) and zero the opacities' Adam moments."""
    update_rows(params, optimizer, lambda _, p: p.clamp(max=math.log(value / (1 - value))),
                lambda _, v: torch.zeros_like(v), names=["opacities"])


def _rotations(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of (N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def check_gaussians(params: Params, where: str) -> None:
    """DataError when no Gaussian is left (after pruning) or some have NaN/infinite parameters (training
    diverged). Called on refine steps, which wait for the device anyway."""
    N = len(params["means"])
    if N == 0:
        raise DataError(f"{where}: no Gaussians left (all were pruned as transparent or too large): lower "
                        "the strategy's prune_opa or start from more points")
    bad = {name: int((~torch.isfinite(p.detach()).reshape(N, -1).all(1)).sum()) for name, p in params.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        which = ", ".join(f"{name} ({n})" for name, n in bad.items())
        raise DataError(f"{where}: Gaussians with NaN or infinite parameters: {which} of {N}; training diverged: "
                        "lower the learning rates (model.*_lr) or resume from an earlier checkpoint")


# --- 3DGS's adaptive density control ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DefaultStrategy:
    """3DGS's adaptive density control (Kerbl et al. 2023, gsplat's DefaultStrategy defaults).

    Every `refine_every` steps in (refine_start, refine_stop): Gaussians whose mean screen-space gradient
    (NDC units, averaged over the views that saw them) exceeds `grow_grad2d` are cloned if their largest
    scale is <= grow_scale3d x scene_scale, split otherwise; then those with opacity < prune_opa (and, after
    the first opacity reset, largest scale > prune_scale3d x scene_scale) are removed. Every `reset_every`
    steps (before refine_stop) all opacities are clamped to 2 x prune_opa.
    """

    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    revised_opacity: bool = False

    def initialize_state(self) -> dict[str, Any]:
        """Running sums of gradient norms and of views per Gaussian (sized on first use)."""
        return {"grad2d": None, "count": None}

    def step_pre_backward(self, info: dict[str, torch.Tensor]) -> None:
        """Keep the gradient of rasterization()'s `means2d` (C, N, 2)."""
        info["means2d"].retain_grad()

    @torch.no_grad()
    def accumulate(self, state: dict[str, Any], info: dict[str, torch.Tensor]) -> None:
        """Add each visible Gaussian's screen-space gradient norm (pixel gradients x (W/2, H/2) x C: NDC, as
        3DGS and gsplat measure it) to the state. info: rasterization()'s output after backward."""
        means2d, radii = info["means2d"], info["radii"]
        C, N = radii.shape
        grads = means2d.grad.clone()
        H, W = info["alpha"].shape[1:3]
        grads[..., 0] *= W / 2.0 * C
        grads[..., 1] *= H / 2.0 * C
        if state["grad2d"] is None or len(state["grad2d"]) != N:
            state["grad2d"] = torch.zeros(N, device=grads.device)
            state["count"] = torch.zeros(N, device=grads.device)
        seen = radii > 0
        state["grad2d"] += (grads.norm(dim=-1) * seen).sum(0)
        state["count"] += seen.sum(0).float()

    @torch.no_grad()
    def step_post_backward(self, params: Params, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                           step: int, info: dict[str, torch.Tensor], scene_scale: float) -> dict[str, int]:
        """After backward (and the optimizer step): accumulate, refine, reset. Returns counts of this step's
        n_cloned, n_split, n_pruned Gaussians (all 0 when it did not refine)."""
        counts = {"n_cloned": 0, "n_split": 0, "n_pruned": 0}
        if step >= self.refine_stop:
            return counts
        self.accumulate(state, info)
        if step > self.refine_start and step % self.refine_every == 0:
            counts.update(self.grow(params, optimizer, state, scene_scale))
            counts["n_pruned"] = self.prune(params, optimizer, step, scene_scale)
            check_gaussians(params, f"step {step}")
            state["grad2d"] = torch.zeros(len(params["means"]), device=params["means"].device)
            state["count"] = torch.zeros_like(state["grad2d"])
        if step > 0 and step % self.reset_every == 0:
            reset_opacity(params, optimizer, 2.0 * self.prune_opa)
        return counts

    def grow(self, params: Params, optimizer: torch.optim.Optimizer, state: dict[str, Any],
             scene_scale: float) -> dict[str, int]:
        """Clone the small, split the large among Gaussians with a high mean gradient."""
        high = state["grad2d"] / state["count"].clamp_min(1.0) > self.grow_grad2d
        small = torch.exp(params["scales"]).max(-1).values <= self.grow_scale3d * scene_scale
        clone, to_split = high & small, high & ~small
        duplicate(params, optimizer, clone)
        n_clone = int(clone.sum())
        to_split = torch.cat([to_split, torch.zeros(n_clone, dtype=torch.bool, device=to_split.device)])
        split(params, optimizer, to_split, self.revised_opacity)
        return {"n_cloned": n_clone, "n_split": int(to_split.sum())}

    def prune(self, params: Params, optimizer: torch.optim.Optimizer, step: int, scene_scale: float) -> int:
        """Remove transparent Gaussians and, after the first opacity reset, huge ones; returns how many."""
        drop = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            drop |= torch.exp(params["scales"]).max(-1).values > self.prune_scale3d * scene_scale
        remove(params, optimizer, drop)
        return int(drop.sum())


# --- MCMC (Kheradmand et al. 2024): a budget of Gaussians, relocated rather than pruned ------------------------

@dataclass(frozen=True)
class MCMCStrategy:
    """3DGS as MCMC (Kheradmand et al. 2024, gsplat's MCMCStrategy defaults).

    Every `refine_every` steps in (refine_start, refine_stop): Gaussians with opacity <= min_opacity are
    relocated onto live ones drawn with probability proportional to opacity, then 5 % more are added (drawn
    the same way) until `cap_max`; a Gaussian drawn n times shares itself among n + 1 copies with opacity
    1 - (1 - o)^(1/(n+1)) and scales that keep the rendered sum (the paper's eq. 9). Every step, positions
    get noise ~ N(0, Sigma) x noise_lr x position lr, damped for opaque Gaussians.
    """

    cap_max: int = 1_000_000
    noise_lr: float = 5e5
    refine_start: int = 500
    refine_stop: int = 25000
    refine_every: int = 100
    min_opacity: float = 0.005

    def initialize_state(self) -> dict[str, Any]:
        return {}

    def step_pre_backward(self, info: dict[str, torch.Tensor]) -> None:
        pass

    @torch.no_grad()
    def step_post_backward(self, params: Params, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                           step: int, info: dict[str, torch.Tensor], lr: float) -> dict[str, int]:
        """After the optimizer step: relocate and grow (on refine steps), then add position noise.
        lr: the current position learning rate. Returns {"n_relocated": n, "n_added": n}."""
        counts = {"n_relocated": 0, "n_added": 0}
        if self.refine_start < step < self.refine_stop and step % self.refine_every == 0:
            check_gaussians(params, f"step {step}")
            counts["n_relocated"] = self.relocate(params, optimizer)
            counts["n_added"] = self.add(params, optimizer)
        self.inject_noise(params, lr)
        return counts

    def _draw(self, params: Params, n: int, alive: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(params["opacities"]).detach() * alive
        if float(probs.sum()) <= 0:
            raise DataError("MCMC: no live Gaussians to relocate onto (every opacity <= min_opacity)")
        return torch.multinomial(probs, n, replacement=True)

    def _share(self, params: Params, sampled: torch.Tensor) -> None:
        """Give each drawn Gaussian (drawn n times) the opacity and scale of one of its n + 1 copies."""
        ratios = torch.bincount(sampled, minlength=len(params["means"]))[sampled] + 1
        opacity, scale = relocation(torch.sigmoid(params["opacities"][sampled]), torch.exp(params["scales"][sampled]),
                                    ratios)
        opacity = opacity.clamp(self.min_opacity, 1.0 - 1e-6)
        params["opacities"].data[sampled] = torch.logit(opacity)
        params["scales"].data[sampled] = torch.log(scale)

    @torch.no_grad()
    def relocate(self, params: Params, optimizer: torch.optim.Optimizer) -> int:
        dead = torch.sigmoid(params["opacities"]) <= self.min_opacity
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        dead_idx = dead.nonzero().squeeze(1)
        sampled = self._draw(params, n_dead, ~dead)
        self._share(params, sampled)
        for name, p in params.items():
            p.data[dead_idx] = p.data[sampled]
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value[sampled] = 0
                    value[dead_idx] = 0
        return n_dead

    @torch.no_grad()
    def add(self, params: Params, optimizer: torch.optim.Optimizer) -> int:
        N = len(params["means"])
        n_new = max(0, min(self.cap_max, int(1.05 * N)) - N)
        if n_new == 0:
            return 0
        sampled = self._draw(params, n_new, torch.ones(N, dtype=torch.bool, device=params["means"].device))
        self._share(params, sampled)
        update_rows(params, optimizer, lambda _, p: torch.cat([p, p[sampled]]),
                    lambda _, v: torch.cat([v, torch.zeros_like(v[sampled])]))
        return n_new

    @torch.no_grad()
    def inject_noise(self, params: Params, lr: float) -> None:
        opacity = torch.sigmoid(params["opacities"])
        covars = quat_scale_to_covar(params["quats"], torch.exp(params["scales"]))
        damp = torch.sigmoid(100.0 * ((1.0 - opacity) - 0.995))  # ~1 for transparent, ~0 for opaque Gaussians
        noise = torch.randn_like(params["means"]) * (damp * self.noise_lr * lr)[:, None]
        params["means"].data += torch.einsum("nij,nj->ni", covars, noise)


def relocation(opacity: torch.Tensor, scale: torch.Tensor, ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New opacity and scales when a Gaussian is shared among `ratio` copies (Kheradmand et al. 2024, eq. 9):
    o' = 1 - (1 - o)^(1/r); s' = s o / sum_{i=1}^{r} sum_{k=0}^{i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1).
    opacity: (M,) in (0, 1); scale: (M, 3) > 0; ratio: (M,) int >= 1. Returns (M,), (M, 3)."""
    ratio = ratio.to(opacity.dtype)
    new_opacity = 1.0 - torch.pow(1.0 - opacity, 1.0 / ratio)
    r_max = int(ratio.max()) if len(ratio) else 1
    denom = torch.zeros_like(opacity)
    for i in range(1, r_max + 1):
        active = ratio >= i
        for k in range(i):
            term = math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_opacity ** (k + 1)
            denom = denom + term * active
    return new_opacity, scale * (opacity / denom)[:, None]

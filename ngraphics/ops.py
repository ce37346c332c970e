"""The dispatch table of the hot operations: for each, its PyTorch reference, its Triton kernel, and why the
kernel cannot run here.

One policy for every op, behind the `backend` option (`auto | torch | triton`) of the modules and functions
that use them:
    torch   the readable reference; runs everywhere.
    triton  the kernel; where it cannot run (no Triton, tensors off CUDA without TRITON_INTERPRET=1, a
            configuration the kernel lacks), a ConfigError names the op and the reason: at construction for
            what a module knows then (`check_supported`), else at the call (`use_kernel`).
    auto    the kernel where it can run on CUDA tensors, else the reference; the first decision for each op
            is written once to the `ngraphics.ops` log (and kept in `decisions()` for the run log).

References under `ngraphics/` never import `ngraphics.kernels`: they ask `use_kernel` and, on True, call
`kernel(name)`; only this module (and `ngraphics.profiling`, which times kernels) loads kernel modules, by
the names in `OPS`. The kernels import the references' specs and helpers, so imports point one way.

    from ngraphics import ops
    if ops.use_kernel("composite", backend, sigmas.device):
        return ops.kernel("composite")(sigmas, rgbs, ...)
    ...the reference...

The log lines reach the terminal through the CLI (`ngraphics.cli.log_to_stderr`); the library installs no
handler.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ngraphics.errors import ConfigError, choice_message

BACKENDS = ("auto", "torch", "triton")
log = logging.getLogger("ngraphics.ops")


@dataclass(frozen=True)
class Op:
    """One hot operation.

    reference: "module:function" of the PyTorch reference (the twin that defines the op's meaning).
    kernel: "module:function" of the Triton kernel, same signature as far as the reference goes.
    unsupported: optional "module:function" of the kernel module: `f(*details) -> str | None`, the reason the
        kernel cannot run this configuration (None: it can).
    """

    reference: str
    kernel: str
    unsupported: str | None = None


OPS: dict[str, Op] = {
    "grid_encode": Op("ngraphics.encodings.grid:grid_encode_torch", "ngraphics.kernels.grid:grid_encode_triton",
                      "ngraphics.kernels.grid:unsupported_reason"),
    "simplex_encode": Op("ngraphics.encodings.simplex:simplex_encode_torch",
                         "ngraphics.kernels.simplex:simplex_encode_triton"),
    "mlp_forward": Op("ngraphics.networks.mlp:mlp_forward_torch", "ngraphics.kernels.mlp:mlp_forward_triton",
                      "ngraphics.kernels.mlp:unsupported_reason"),
    "march": Op("ngraphics.rendering.marching:march_torch", "ngraphics.kernels.marching:march_triton"),
    "composite": Op("ngraphics.rendering.compositing:composite_torch",
                    "ngraphics.kernels.compositing:composite_triton"),
    "splat_project": Op("ngraphics.splatting.project:project_gaussians_torch",
                        "ngraphics.kernels.splat_project:project_gaussians_triton"),
    "splat_rasterize": Op("ngraphics.splatting.rasterize:rasterize_to_pixels_torch",
                          "ngraphics.kernels.splat_rasterize:rasterize_to_pixels_triton"),
}

_decisions: dict[str, tuple[str, str]] = {}


def check_backend(backend: str, where: str = "backend") -> str:
    """`backend` itself, or a ConfigError naming `where` and the valid names."""
    if backend not in BACKENDS:
        raise ConfigError(choice_message(where, backend, BACKENDS))
    return backend


def triton_interpreter() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on CPU tensors, slowly: for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means no kernels
        return f"triton does not import ({type(err).__name__}: {err})"
    return None


def unavailable_reason(name: str, device: torch.device | str, *details) -> str | None:
    """Why op `name`'s kernel cannot run on tensors on `device` with this configuration; None if it can.

    details: passed to the op's `unsupported` check (e.g. a GridSpec)."""
    op = _op(name)
    device = torch.device(device)
    missing = _triton_missing()
    if missing:
        return missing
    if device.type != "cuda" and not triton_interpreter():
        return f"tensors are on {device} (kernels need CUDA, or TRITON_INTERPRET=1)"
    return _unsupported(op, *details)


def check_supported(name: str, backend: str, *details) -> None:
    """The construction-time half of the policy, before any tensor exists: for `backend="triton"`, a
    ConfigError (naming the op and the reason) when op `name`'s kernel cannot run this configuration on any
    device (Triton missing, or the op's `unsupported` check refuses `details`). `auto` and `torch` pass: auto
    decides per call in `use_kernel`."""
    if check_backend(backend) != "triton":
        return
    reason = _triton_missing() or _unsupported(_op(name), *details)
    if reason:
        raise ConfigError(_refusal(name, reason))


def use_kernel(name: str, backend: str, device: torch.device | str, *details) -> bool:
    """The policy: True when op `name` should run its kernel for `backend` on `device` (see the module doc).

    Raises ConfigError for `backend="triton"` where the kernel cannot run, naming the op and the reason.
    `auto` picks the kernel only for CUDA tensors (the interpreter is for explicit tests)."""
    check_backend(backend)
    if backend == "torch":
        return _decide(name, "torch", "backend='torch' was asked for")
    device = torch.device(device)
    reason = unavailable_reason(name, device, *details)
    if backend == "triton":
        if reason:
            raise ConfigError(_refusal(name, reason))
        return _decide(name, "triton", "backend='triton' was asked for")
    if reason is None and device.type == "cuda":
        return _decide(name, "triton", f"CUDA tensors on {device}")
    return _decide(name, "torch", reason or f"tensors are on {device}")


def kernel(name: str) -> Callable:
    """The Triton function of op `name` (imports its kernel module on first use)."""
    return _load(_op(name).kernel)


def reference(name: str) -> Callable:
    """The PyTorch reference of op `name`."""
    return _load(_op(name).reference)


def decisions() -> dict[str, dict[str, str]]:
    """The first backend decision of each op used so far in this process: {op: {"backend", "reason"}}."""
    return {name: {"backend": b, "reason": r} for name, (b, r) in _decisions.items()}


def _decide(name: str, backend: str, reason: str) -> bool:
    if name not in _decisions:
        _decisions[name] = (backend, reason)
        log.info("%s runs on %s: %s", name, backend, reason)
    return backend == "triton"


def _refusal(name: str, reason: str) -> str:
    return f"{name}: backend 'triton' cannot run here: {reason}; use backend 'torch' or 'auto'"


def _unsupported(op: Op, *details) -> str | None:
    if op.unsupported is None:
        return None
    try:
        return _load(op.unsupported)(*details)
    except ImportError as err:
        return f"{op.kernel.split(':')[0]} does not import ({err})"


def _op(name: str) -> Op:
    if name not in OPS:
        raise KeyError(choice_message("op", name, OPS))
    return OPS[name]


def _load(target: str) -> Callable:
    # Looked up on every call, not cached: a reloaded module (the interpreter switch of the kernel tests) or a
    # monkeypatched function is what runs. Once imported, this is a dict lookup and a getattr.
    module, _, attr = target.partition(":")
    loaded = sys.modules.get(module) or importlib.import_module(module)
    return getattr(loaded, attr)


__all__ = ["BACKENDS", "OPS", "Op", "check_backend", "check_supported", "decisions", "kernel", "reference",
           "triton_interpreter", "unavailable_reason", "use_kernel"]

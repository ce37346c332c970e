"""Optional NaN/inf checks at the boundaries of encodings and MLPs (`trainer.check_finite`,
`ngraphics train --check-finite`): forward hooks, so the hot path pays nothing unless they are installed."""

from __future__ import annotations

import torch
from torch import nn

from ngraphics.encodings.base import Encoding
from ngraphics.errors import DataError
from ngraphics.networks.mlp import MLP


def check_finite_boundaries(owner) -> list:
    """Check the inputs and outputs of every encoding and MLP inside `owner` for NaN/inf on each call.

    owner: an nn.Module, or any object (e.g. a method) whose attributes hold modules. Adds forward hooks, so
    nothing is paid unless this is called. A non-finite value raises `DataError` naming the module
    (`field.encoding (HashGrid): input has 3 NaN/inf of 3072 values`). Returns the hook handles (call
    `.remove()` on them to stop checking)."""
    roots = [("", owner)] if isinstance(owner, nn.Module) else [
        (name, value) for name, value in vars(owner).items() if isinstance(value, nn.Module)]
    handles, seen = [], set()
    for root_name, root in roots:
        for name, module in root.named_modules(prefix=root_name):
            if isinstance(module, (Encoding, MLP)) and id(module) not in seen:
                seen.add(id(module))
                label = f"{name or type(module).__name__} ({type(module).__name__})"
                handles.append(module.register_forward_pre_hook(_input_check(label)))
                handles.append(module.register_forward_hook(_output_check(label)))
    return handles


def _raise_if_non_finite(tensor, label: str, what: str) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            raise DataError(f"{label}: {what} has {int((~finite).sum())} NaN/inf of {tensor.numel()} values "
                            f"(found by trainer.check_finite)")


def _input_check(label: str):
    def hook(module, args):
        for arg in args:
            _raise_if_non_finite(arg, label, "input")
    return hook


def _output_check(label: str):
    def hook(module, args, output):
        _raise_if_non_finite(output, label, "output")
    return hook


__all__ = ["check_finite_boundaries"]

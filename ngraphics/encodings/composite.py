"""`Composite`: different nested encodings for different input dimensions, as in tiny-cuda-nn.

Each entry of `nested` is an encoding dict with an optional `n_dims_to_encode` (at most one entry may omit
it and takes the dimensions the others leave) and optional `dims_to_encode_begin` (first input column;
by default each entry starts where the previous one ended). Entries that end up with 0 dims are dropped.
Outputs are concatenated in order (`reduction: Concatenation`) or summed / multiplied elementwise
(`Sum`, `Product`, which need equal output widths).

Like tcnn, when concatenating, an entry's output is padded so that the next entry starts at a multiple of
that entry's required alignment: `n_features_per_level` for grid-like encodings (HashGrid, DenseGrid,
TiledGrid, Grid, Simplex), 1 for the rest. The padding holds tcnn's values: 0 after grids, 1 after the
others, 1 in front of SphericalHarmonics (tcnn's SH kernel writes its padding first).

Parameters: `params` is one flat nn.Parameter, the nested encodings' parameter vectors concatenated in order
(tcnn's layout, so its state dicts load). The nested modules keep no Parameter of their own: `params` of
each is a view into the composite's vector (attached to the graph during forward, detached otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ngraphics.encodings.base import Encoding, check_precision
from ngraphics.errors import ConfigError, choice_message

GRID_LIKE = ("HashGrid", "DenseGrid", "TiledGrid", "Grid", "Simplex")
REDUCTIONS = ("Concatenation", "Sum", "Product")


@dataclass(frozen=True)
class CompositeConfig:
    nested: tuple[dict, ...] = ()
    reduction: str = "Concatenation"  # or Sum, Product; case-insensitive like tcnn

    def validate(self, where: str) -> None:
        canonical = {r.lower(): r for r in REDUCTIONS}.get(self.reduction.lower())
        if canonical is None:
            raise ConfigError(choice_message(f"{where}.reduction", self.reduction, REDUCTIONS))
        object.__setattr__(self, "reduction", canonical)
        if not self.nested:
            raise ConfigError(f"{where}.nested: needs a list of encodings, e.g. [{{otype: Frequency}}]")


def required_output_alignment(encoding: Encoding) -> int:
    """tcnn's `required_output_alignment`: grids need their output to start on a multiple of F."""
    if encoding.otype == "Composite":
        return math.lcm(1, *(required_output_alignment(e) for e in encoding.nested))
    if encoding.otype in GRID_LIKE:
        return int(getattr(encoding.config, "n_features_per_level", 1))
    return 1


def pad_value(encoding: Encoding) -> float:
    """What tcnn writes into an encoding's padded output columns: 0 for grids, 1 for the others."""
    return 0.0 if encoding.otype in GRID_LIKE else 1.0


def pad_rule(encoding: Encoding) -> tuple[float, bool]:
    """(value, in_front): what tcnn writes into an encoding's padded output columns, and where.
    SphericalHarmonics writes its padding before its outputs, everything else after. A Composite pads
    through its last nested encoding (Concatenation; approximated here as padding the whole output) or
    through all of them (Sum / Product: the pad values add up / multiply)."""
    if encoding.otype == "SphericalHarmonics":
        return 1.0, True
    if encoding.otype == "Composite":
        rules = [pad_rule(e) for e in encoding.nested]
        if encoding.config.reduction == "Concatenation":
            return rules[-1]
        values = [value for value, _ in rules]
        return (sum(values) if encoding.config.reduction == "Sum" else math.prod(values)), rules[0][1]
    return pad_value(encoding), False


class Composite(Encoding):
    """x (N, D) -> nested encodings of column slices of x, concatenated (or summed / multiplied).

    dtype: None, torch.float32 or torch.float16: handed to the nested encodings with tables (see `HashGrid`);
    the combined output is cast to it (None: the nested outputs' promoted dtype)."""

    otype = "Composite"
    Config = CompositeConfig
    has_dtype = True

    def __init__(self, n_input_dims: int, config=None, *, backend: str = "auto", strict: bool = True,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, config, backend=backend, strict=strict)
        from ngraphics.encodings import create_encoding  # the package imports this module

        self.dtype = check_precision(dtype, self.otype)
        where = f"{self.otype}.nested"
        slices = self._split_dims(n_input_dims, where)
        self.nested = nn.ModuleList()
        self.slices: list[tuple[int, int]] = []
        for i, (begin, count, entry) in enumerate(slices):
            if count == 0:
                continue
            entry = {k: v for k, v in entry.items() if k not in ("n_dims_to_encode", "dims_to_encode_begin")}
            self.nested.append(
                create_encoding(count, entry, backend=backend, strict=strict, where=f"{where}[{i}]",
                                dtype=dtype)
            )
            self.slices.append((begin, count))
        if not self.nested:
            raise ConfigError(
                f"{where}: every nested encoding has 0 dims to encode (n_input_dims={n_input_dims})"
            )
        self.pads = self._paddings(where)
        if self.config.reduction == "Concatenation":
            self.n_output_dims = sum(e.n_output_dims + p for e, p in zip(self.nested, self.pads))
        else:
            self.n_output_dims = self.nested[0].n_output_dims + self.pads[0]

        # One flat Parameter; the nested encodings get views into it (see _share_params).
        chunks, self.param_counts, self._has_params = [], [], []
        for encoding in self.nested:
            own = encoding._parameters.pop("params", None)
            chunks.append(torch.empty(0) if own is None else own.detach().reshape(-1))
            self.param_counts.append(chunks[-1].numel())
            self._has_params.append(own is not None)
        self.params = nn.Parameter(torch.cat(chunks))
        self._share_params(attached=False)

    def _split_dims(self, n_input_dims: int, where: str) -> list[tuple[int, int, dict]]:
        """(begin, count, entry) per nested entry, following tcnn's rules for n_dims_to_encode."""
        entries = list(self.config.nested)
        for i, entry in enumerate(entries):
            if "otype" not in entry:
                raise ConfigError(f"{where}[{i}]: needs an otype key")
            for key in ("n_dims_to_encode", "dims_to_encode_begin"):
                value = entry.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{where}[{i}].{key}: must be a non-negative integer, got {value!r}")
        explicit_begin = any("dims_to_encode_begin" in e for e in entries)
        total = sum(e.get("n_dims_to_encode", 0) for e in entries)
        if not explicit_begin and total > n_input_dims:
            raise ConfigError(
                f"{where}: n_dims_to_encode add up to {total}, more than the {n_input_dims} input dims"
            )
        unspecified = [i for i, e in enumerate(entries) if "n_dims_to_encode" not in e]
        if len(unspecified) > 1 or (unspecified and explicit_begin):
            raise ConfigError(
                f"{where}[{unspecified[-1]}]: set n_dims_to_encode; only one nested encoding may omit it "
                "(and none when dims_to_encode_begin is used)"
            )
        out, offset = [], 0
        for i, entry in enumerate(entries):
            offset = entry.get("dims_to_encode_begin", offset)
            count = entry.get("n_dims_to_encode", n_input_dims - total)
            if offset + count > n_input_dims:
                raise ConfigError(
                    f"{where}[{i}]: encodes dims {offset}..{offset + count - 1}, "
                    f"but there are {n_input_dims} input dims"
                )
            out.append((offset, count, entry))
            offset += count
        return out

    def _paddings(self, where: str) -> list[int]:
        """Output columns of padding after each nested encoding (tcnn's alignment rules)."""
        widths = [e.n_output_dims for e in self.nested]
        if self.config.reduction == "Concatenation":
            pads, so_far = [], 0
            for i, width in enumerate(widths):
                align = required_output_alignment(self.nested[i + 1]) if i + 1 < len(widths) else 1
                pads.append(-(-(so_far + width) // align) * align - so_far - width)
                so_far += width + pads[-1]
            return pads
        align = math.lcm(1, *(required_output_alignment(e) for e in self.nested))
        padded = [-(-w // align) * align for w in widths]
        if len(set(padded)) != 1:
            raise ConfigError(
                f"{where}: reduction {self.config.reduction} needs equal output widths, got {widths}"
            )
        return [p - w for p, w in zip(padded, widths)]

    def _share_params(self, attached: bool) -> None:
        """Point each nested encoding's `params` at its slice of self.params. During forward the slices are
        attached (gradients flow into self.params); otherwise they are detached views of the same storage,
        so the nested modules can be read, copied and pickled. Redone on every forward and after .to(),
        .double() etc., so optimizers and load_state_dict acting on self.params are always seen."""
        params = self.params if attached else self.params.detach()
        offset = 0
        for encoding, count, has_params in zip(self.nested, self.param_counts, self._has_params):
            if has_params:
                encoding.params = params[offset : offset + count]
                if isinstance(encoding, Composite) and not attached:
                    encoding._share_params(attached=False)
            offset += count

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._share_params(attached=False)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, n_input_dims) -> (N, n_output_dims)."""
        self.check_input(x)
        self._share_params(attached=True)
        try:
            outputs = []
            for encoding, (begin, count), pad in zip(self.nested, self.slices, self.pads):
                y = encoding(x[:, begin : begin + count])
                if pad:
                    value, in_front = pad_rule(encoding)
                    fill = y.new_full((y.shape[0], pad), value)
                    y = torch.cat([fill, y] if in_front else [y, fill], dim=1)
                outputs.append(y)
        finally:
            self._share_params(attached=False)
        if self.config.reduction == "Sum":
            out = torch.stack(outputs).sum(dim=0)
        elif self.config.reduction == "Product":
            out = torch.stack(outputs).prod(dim=0)
        else:
            out = torch.cat(outputs, dim=1)
        return out if self.dtype is None else out.to(self.dtype)

"""Benchmarks behind `ngraphics profile`: encodings, MLPs and encoding + MLP, on every backend side by side.

Each case (bench, name, backend, D, N) is timed for the forward pass (under no_grad) and for forward +
backward (gradients to the parameters, and to the inputs with `input_grad=True`) with a fixed random output
gradient. Backends: `torch` (the readable reference), `triton` (ngraphics's kernels, CUDA only), `tcnn` (the
real `tinycudann` package, when it imports). A backend that cannot run a case gives a row with status
`n/a` and the reason, never an exception.

    rows = profile_encodings(["HashGrid"], dims=[3], batch_sizes=[2**18], backends=["torch", "triton"],
                             device="cuda")
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ngraphics import ops
from ngraphics.profiling.timing import time_fn

BACKENDS = ("torch", "triton", "tcnn")
BENCHES = ("encodings", "mlp", "encoding-mlp")

# Encoding configs used by the profiler: tiny-cuda-nn's defaults where they make sense in every dimension.
# DenseGrid sizes depend on D (a dense 2048^3 grid does not fit in memory): levels x base x scale per D.
ENCODING_CONFIGS: dict[str, dict] = {
    "HashGrid": {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                 "base_resolution": 16, "per_level_scale": 2.0},
    "Simplex": {"otype": "Simplex", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                "base_resolution": 16, "per_level_scale": 2.0},
    "TiledGrid": {"otype": "TiledGrid", "n_levels": 8, "n_features_per_level": 2, "base_resolution": 16,
                  "per_level_scale": 1.5},
    "Frequency": {"otype": "Frequency", "n_frequencies": 12},
    "TriangleWave": {"otype": "TriangleWave", "n_frequencies": 12},
    "OneBlob": {"otype": "OneBlob", "n_bins": 16},
    "SphericalHarmonics": {"otype": "SphericalHarmonics", "degree": 4},
    "Identity": {"otype": "Identity"},
}
DENSE_GRID_BY_DIM = {1: (8, 16, 2.0), 2: (8, 16, 2.0), 3: (4, 16, 2.0), 4: (3, 8, 2.0)}
DEFAULT_NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                   "n_neurons": 64, "n_hidden_layers": 2}


def encoding_config(name: str, n_dims: int) -> dict:
    """The profiler's config for encoding `name` in `n_dims` dimensions: any ngraphics otype (with the
    settings above), or a JSON/YAML file holding one encoding dict."""
    from ngraphics.encodings import encoding_class

    if name.lower().endswith((".json", ".yaml", ".yml")):
        from ngraphics.config import load_mapping

        cfg = load_mapping(name)
        encoding_class(cfg.get("otype"), f"{name}: otype")
        return cfg
    otype = encoding_class(name, "--encodings").otype
    if otype == "DenseGrid":
        levels, base, scale = DENSE_GRID_BY_DIM.get(n_dims, (2, 8, 2.0))
        return {"otype": "DenseGrid", "n_levels": levels, "n_features_per_level": 2, "base_resolution": base,
                "per_level_scale": scale}
    return copy.deepcopy(ENCODING_CONFIGS.get(otype, {"otype": otype}))


def case_label(name: str, config: dict) -> str:
    """Row name: the otype, plus the file stem for configs read from a file."""
    if name.lower().endswith((".json", ".yaml", ".yml")):
        return f"{config['otype']}({Path(name).stem})"
    return config["otype"]


@dataclass
class Case:
    """One benchmark case; `build()` returns the module (on the device) or raises with the reason."""

    bench: str
    name: str
    backend: str
    n_input_dims: int
    batch_size: int
    config: dict
    build: Callable[[], nn.Module] = field(repr=False)
    check: Callable[[nn.Module, torch.Tensor], str | None] | None = field(default=None, repr=False)


# --- backends -----------------------------------------------------------------------------------------------


@functools.cache
def tcnn_status() -> str | None:
    """None when the real tinycudann package imports and works here, else the reason it cannot run."""
    try:
        import tinycudann  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken CUDA build raising anything
        first_line = str(err).splitlines()[0] if str(err) else ""
        return f"tinycudann not importable ({type(err).__name__}: {first_line})"
    if not torch.cuda.is_available():
        return "tinycudann needs a CUDA device"
    return None


def backend_status(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else the reason (printed as n/a)."""
    if backend == "torch":
        return None
    if backend == "triton":
        if device.type != "cuda":
            return "triton needs a CUDA device (the CPU interpreter is for tests, not timing)"
        try:
            import triton  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means: not available
            return f"triton not importable ({type(err).__name__})"
        return None
    if backend == "tcnn":
        return tcnn_status() if device.type == "cuda" else "tinycudann needs a CUDA device"
    return f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})"


# --- case builders ------------------------------------------------------------------------------------------


def encoding_cases(names, dims, batch_sizes, backends, device, dtype) -> list[Case]:
    cases = []
    for name in names:
        for d in dims:
            cfg = encoding_config(name, d)
            for n in batch_sizes:
                for backend in backends:
                    cases.append(Case("encodings", case_label(name, cfg), backend, d, n, cfg,
                                      functools.partial(_build_encoding, backend, d, cfg, device, dtype)))
    return cases


def _build_encoding(backend, d, cfg, device, dtype) -> nn.Module:
    if backend == "tcnn":
        import tinycudann

        return tinycudann.Encoding(d, cfg, dtype=dtype).to(device)
    from ngraphics.encodings import create_encoding

    module = create_encoding(d, cfg, backend=backend).to(device)
    return module if dtype == torch.float32 else module.to(dtype)


def mlp_cases(widths, hidden_layers, n_input, n_output, batch_sizes, backends, device, dtype) -> list[Case]:
    cases = []
    for width in widths:
        cfg = {**DEFAULT_NETWORK, "n_neurons": width, "n_hidden_layers": hidden_layers}
        name = f"MLP {n_input}->{width}x{hidden_layers}->{n_output}"
        for n in batch_sizes:
            for backend in backends:
                cases.append(Case("mlp", name, backend, n_input, n, cfg,
                                  functools.partial(_build_mlp, backend, n_input, n_output, cfg, device,
                                                    dtype),
                                  _mlp_triton_check if backend == "triton" else None))
    return cases


def _build_mlp(backend, n_input, n_output, cfg, device, dtype) -> nn.Module:
    if backend == "tcnn":
        import tinycudann

        return tinycudann.Network(n_input, n_output, cfg).to(device)
    from ngraphics.networks import MLP

    return MLP(n_input, n_output, cfg, seed=1337, dtype=dtype, backend=backend).to(device)


def _mlp_triton_check(module: nn.Module, x: torch.Tensor) -> str | None:
    """Calls the Triton MLP does not run (`ngraphics.ops` refuses them under backend triton): n/a, and why."""
    dtype = module.compute_dtype(x, module.params)
    pad = module.spec.padded_input_dims - module.n_input_dims
    h = torch.cat([x.to(dtype), x.new_ones(x.shape[0], pad, dtype=dtype)], 1) if pad else x.to(dtype)
    return ops.unavailable_reason("mlp_forward", h.device, h[:16], [w.to(dtype) for w in module.weights()],
                                  module.spec)


def encoding_mlp_cases(names, dims, batch_sizes, backends, device, dtype, network=None) -> list[Case]:
    network = network or DEFAULT_NETWORK
    cases = []
    for name in names:
        for d in dims:
            enc = encoding_config(name, d)
            for n in batch_sizes:
                for backend in backends:
                    cfg = {"encoding": enc, "network": network}
                    label = f"{case_label(name, enc)}+MLP{network['n_neurons']}x{network['n_hidden_layers']}"
                    cases.append(Case("encoding-mlp", label, backend, d, n, cfg,
                                      functools.partial(_build_encoding_mlp, backend, d, cfg, device, dtype)))
    return cases


def _build_encoding_mlp(backend, d, cfg, device, dtype) -> nn.Module:
    if backend == "tcnn":
        import tinycudann

        return tinycudann.NetworkWithInputEncoding(d, 16, cfg["encoding"], cfg["network"]).to(device)
    from ngraphics.networks import NetworkWithInputEncoding

    return NetworkWithInputEncoding(d, 16, cfg["encoding"], cfg["network"], seed=1337, dtype=dtype,
                                    backend=backend).to(device)


# --- measuring ----------------------------------------------------------------------------------------------


def measure(case: Case, device: torch.device, *, input_grad: bool = False,
            timing: dict | None = None) -> dict:
    """Time one case. Returns a row: the case's keys, n_params, n_output_dims, forward_ms, forward_pts_per_s,
    fwd_bwd_ms, fwd_bwd_pts_per_s, status (`ok` / `n/a`) and reason."""
    timing = timing or {}
    row = {"bench": case.bench, "name": case.name, "backend": case.backend, "n_input_dims": case.n_input_dims,
           "batch_size": case.batch_size, "config": case.config, "status": "ok", "reason": None}
    reason = backend_status(case.backend, device)
    if reason:
        return {**row, "status": "n/a", "reason": reason}
    module = None
    try:
        module = case.build()
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(case.batch_size, case.n_input_dims, device=device, generator=gen)
        if case.check is not None and (why := case.check(module, x)):
            return {**row, "status": "n/a", "reason": why}
        params = [p for p in module.parameters() if p.requires_grad]
        row["n_params"] = sum(p.numel() for p in params)
        with torch.no_grad():
            out = module(x)
        row["n_output_dims"] = int(out.shape[1])
        row["output_dtype"] = str(out.dtype).replace("torch.", "")
        dy = torch.randn(out.shape, device=device, generator=gen).to(out.dtype)
        xg = x.clone().requires_grad_(input_grad)

        def forward():
            with torch.no_grad():
                module(x)

        def forward_backward():
            for p in params:
                p.grad = None
            xg.grad = None
            module(xg).backward(dy)

        fwd = time_fn(forward, device, **timing)
        row["forward_ms"] = fwd.median_ms
        row["forward_pts_per_s"] = case.batch_size / (fwd.median_ms * 1e-3)
        if params or input_grad:
            both = time_fn(forward_backward, device, **timing)
            row["fwd_bwd_ms"] = both.median_ms
            row["fwd_bwd_pts_per_s"] = case.batch_size / (both.median_ms * 1e-3)
        row["repeats"] = fwd.repeats
    except torch.OutOfMemoryError:
        row = {**row, "status": "n/a", "reason": "out of memory"}
    except Exception as err:  # noqa: BLE001 - a backend that cannot run this case: record why, go on
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        row = {**row, "status": "n/a", "reason": f"{type(err).__name__}: {msg}"[:200]}
    finally:
        module = None  # free the tables before the next case
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[dict]) -> None:
    """Add `forward_vs_torch` and `fwd_bwd_vs_torch` (torch ms / this backend's ms: > 1 is faster than torch)
    to every row whose torch twin (same bench, name, D, N) was measured."""
    ref = {(r["bench"], r["name"], r["n_input_dims"], r["batch_size"]): r
           for r in rows if r["backend"] == "torch"}
    for r in rows:
        t = ref.get((r["bench"], r["name"], r["n_input_dims"], r["batch_size"]))
        for key in ("forward", "fwd_bwd"):
            a, b = (t or {}).get(f"{key}_ms"), r.get(f"{key}_ms")
            r[f"{key}_vs_torch"] = a / b if a and b else None


def run_cases(cases: Iterable[Case], device, *, input_grad=False, timing=None, progress=None) -> list[dict]:
    """Measure every case (in order) and add the ratios. `progress(row)` is called after each case."""
    device = torch.device(device)
    rows = []
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compat warnings of tinycudann configs, fallbacks are checked
            row = measure(case, device, input_grad=input_grad, timing=timing)
        rows.append(row)
        if progress:
            progress(row)
    add_ratios(rows)
    return rows


TABLE_COLUMNS = [
    ("name", "case"), ("n_input_dims", "D"), ("batch_size", "N"), ("backend", "backend"),
    ("forward_ms", "fwd ms"), ("forward_pts_per_s", "fwd pts/s"), ("forward_vs_torch", "fwd x torch"),
    ("fwd_bwd_ms", "f+b ms"), ("fwd_bwd_pts_per_s", "f+b pts/s"), ("fwd_bwd_vs_torch", "f+b x torch"),
    ("note", "note"),
]


def table_rows(rows: list[dict], device) -> tuple[list[dict], list[str]]:
    """Rows for `format_table(rows, TABLE_COLUMNS)` and notes. A backend that cannot run at all on this
    device becomes one note instead of a row per case; other n/a rows carry their reason in `note`."""
    device = torch.device(device)
    absent = {b: why for b in {r["backend"] for r in rows} if (why := backend_status(b, device))}
    notes = [f"{b}: n/a ({why})" for b, why in sorted(absent.items())]
    out = []
    for r in rows:
        if r["backend"] in absent:
            continue
        note = r.get("reason") or ("no parameters: backward not timed (use --input-grad)"
                                   if r["status"] == "ok" and r.get("fwd_bwd_ms") is None else "")
        out.append({**r, "note": note,
                    "forward_pts_per_s": si(r.get("forward_pts_per_s")),
                    "fwd_bwd_pts_per_s": si(r.get("fwd_bwd_pts_per_s")),
                    "forward_vs_torch": ratio(r.get("forward_vs_torch")),
                    "fwd_bwd_vs_torch": ratio(r.get("fwd_bwd_vs_torch"))})
    return out, notes


def si(x: float | None) -> str | None:
    """1234567 -> '1.23M'."""
    if x is None:
        return None
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def ratio(x: float | None) -> str | None:
    return None if x is None else f"{x:.2f}x"


__all__ = [
    "BACKENDS",
    "BENCHES",
    "DEFAULT_NETWORK",
    "ENCODING_CONFIGS",
    "TABLE_COLUMNS",
    "Case",
    "add_ratios",
    "backend_status",
    "encoding_cases",
    "encoding_config",
    "encoding_mlp_cases",
    "measure",
    "mlp_cases",
    "ratio",
    "run_cases",
    "si",
    "table_rows",
    "tcnn_status",
]

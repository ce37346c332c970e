"""Benchmark of the grid and simplex kernels on one CUDA GPU: `python -m ngraphics.kernels.bench_grid`.

Sections (each a flag; no flag = all but --sweep):
  --ceilings   device-to-device copy bandwidth (bytes read + written) and the rate of random 4- and 8-byte
               gathers from L2-resident tables of 2^19..2^22 entries (and 2^24, past L2).
  --sweep      levels per program (1, 2, 4, 8, 16 and the "auto" rule) per kernel on config A, 2^22 points.
  --main       config A (3D, 16 levels x 2 features, 2^19 table, base 16, scale 2), N = 2^20 and 2^22:
               forward, forward + backward (tables), forward + backward (tables + inputs), fp32 and fp16
               tables; the same in 4D; a 2^22 table with 4 features in 3D; Simplex vs HashGrid at equal
               levels/features/table in 3D and 4D. Rows with grad=fp16 sum the table gradient in fp16
               (gradient_dtype=torch.float16, tiny-cuda-nn's half2 accumulation), fp16 tables and outputs.
               CUDA events around each call, calls queued back to back, median of 30 after 5 warm-ups;
               achieved bytes/s and corner reads/s against the ceilings.
  --compile    first-call compile time of each kernel, in a child process with a fresh TRITON_CACHE_DIR (cold)
               and in a second child process with the same cache (cached).
  --tune K=V   launch-shape overrides for --main, e.g. `--tune grid.fwd.block=256`.
  --once       one forward, backward (tables) and backward (tables + x) of grid and simplex on config A,
               2^22 points, fp16 tables: a target for `ncu` (e.g. `ncu --metrics ... python -m ... --once`);
               with --grad16 the backward sums table gradients in fp16.
Results print as tables; `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import triton
import triton.language as tl
from ngraphics.kernels import grid as kgrid
from ngraphics.kernels import simplex as ksimplex

from ngraphics.encodings.grid import grid_spec
from ngraphics.encodings.simplex import simplex_spec
from ngraphics.profiling.timing import time_queued

CONFIG_A = {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19, "base_resolution": 16,
            "per_level_scale": 2.0}


def cuda_time(fn, warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of `fn()` over `reps` calls queued back to back between CUDA events, after `warmup`
    calls (`time_queued`: the host's launch overhead overlaps the device work, as in a training loop)."""
    return time_queued(fn, "cuda", warmup=warmup, repeats=reps).median_ms


# ---------------------------------------------------------------------------------------------------------
# Ceilings


@triton.jit
def _gather_kernel(table_ptr, out_ptr, N, MASK, K: tl.constexpr, BLOCK: tl.constexpr):
    """K random gathers per thread: index = hash(i, k) & MASK (no index traffic), summed, one store."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    h = i.to(tl.uint32)
    acc = tl.zeros([BLOCK], tl.float32)
    for k in tl.static_range(K):
        h = h * 2654435761 + 805459861
        acc += tl.load(table_ptr + ((h ^ (h >> 15)) & MASK).to(tl.int64)).to(tl.float32)
    tl.store(out_ptr + i, acc, mask=i < N)


def ceilings() -> dict:
    res = {}
    src = torch.empty(2**28, dtype=torch.float32, device="cuda").uniform_()  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), 3, 20)
    res["copy_GBps"] = 2 * src.numel() * 4 / ms / 1e6
    src = dst = None  # free 2 GiB
    n, k = 2**24, 16
    out = torch.empty(n, device="cuda")
    for log2 in (19, 20, 21, 22, 24):
        for dtype, name in ((torch.float32, "4B"), (torch.int64, "8B")):
            table = torch.randint(0, 2**20, (2**log2,), device="cuda").to(dtype)
            mask = 2**log2 - 1
            ms = cuda_time(lambda t=table, m=mask: _gather_kernel[(n // 256,)](t, out, n, m, K=k, BLOCK=256))
            res[f"gather_{name}_2^{log2}_Gps"] = n * k / ms / 1e6
    return res


# ---------------------------------------------------------------------------------------------------------
# Encodings


def make_case(kind: str, D: int, config: dict, n: int, table_dtype, out_dtype):
    if kind == "grid":
        spec = grid_spec(D, {"otype": "HashGrid", **config})
        encode = kgrid.grid_encode_triton
    else:
        spec = simplex_spec(D, config)
        encode = ksimplex.simplex_encode_triton
    params = ((torch.rand(spec.n_params, device="cuda") * 2 - 1) * 1e-1).requires_grad_(True)
    x = torch.rand(n, D, device="cuda")
    dy = torch.randn(n, spec.n_levels * spec.n_features, device="cuda", dtype=out_dtype or torch.float32)
    return spec, encode, params, x, dy


def time_encoding(kind, D, config, n, table_dtype=None, out_dtype=None, gradient_dtype=None) -> dict:
    spec, encode, params, x, dy = make_case(kind, D, config, n, table_dtype, out_dtype)
    xg = x.clone().requires_grad_(True)
    kw = {"table_dtype": table_dtype, "out_dtype": out_dtype, "gradient_dtype": gradient_dtype}

    def fwd():
        with torch.no_grad():
            encode(x, params, spec, **kw)

    def fwd_bwd_tables():
        out = encode(x, params, spec, **kw)
        torch.autograd.grad(out, params, dy)

    def fwd_bwd_inputs():
        out = encode(xg, params, spec, **kw)
        torch.autograd.grad(out, (xg, params), dy)

    res = {"fwd_ms": cuda_time(fwd), "fwd_bwd_ms": cuda_time(fwd_bwd_tables),
           "fwd_bwd_x_ms": cuda_time(fwd_bwd_inputs)}
    L, F = spec.n_levels, spec.n_features
    vertices = (1 << D) if kind == "grid" else D + 1
    out_bytes = n * L * F * (2 if out_dtype == torch.float16 else 4)
    res["fwd_GBps"] = (n * D * 4 + out_bytes) / res["fwd_ms"] / 1e6  # compulsory bytes only
    res["fwd_Greads_per_s"] = n * L * vertices / res["fwd_ms"] / 1e6
    return res


SWEEP = {  # levels per program ("group") per table dtype; block 128, 4 warps, group-major program order
    "grid": ([1, 2, 4, 8, 16], [torch.float16, torch.float32]),
    "simplex": ([1, 4, 8], [torch.float16]),
}


def _time_ops(ops, x, table, dy, out_dtype) -> dict:
    """The raw kernels (no autograd): forward, backward to the tables, backward to tables and x."""
    return {"fwd": cuda_time(lambda: ops.forward(x, table, out_dtype)),
            "bwd": cuda_time(lambda: ops.backward(x, table, dy, True, False)),
            "bwd_x": cuda_time(lambda: ops.backward(x, table, dy, True, True))}


def sweep(D=3, n=2**22) -> list[dict]:
    """Levels per program for each kernel kind on config A (table and output in the same dtype)."""
    rows = []
    for kind, mod in (("grid", kgrid), ("simplex", ksimplex)):
        groups, dtypes = SWEEP[kind]
        saved = {k: dict(v) for k, v in mod.TUNING.items()}
        for dtype in dtypes:
            spec, _, params, x, dy = make_case(kind, D, CONFIG_A, n, dtype, dtype)
            ops = (kgrid.grid_ops if kind == "grid" else ksimplex.simplex_ops)(spec)
            table = params.detach().to(dtype)
            for group in [*groups, "auto"]:
                for k in mod.TUNING:
                    mod.TUNING[k] = dict(saved[k], group=group)
                row = {"enc": kind, "dtype": str(dtype).replace("torch.", ""), "group": group,
                       **_time_ops(ops, x, table, dy, dtype)}
                rows.append(row)
                fields = (f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(" ".join(fields), flush=True)
        for k, v in saved.items():
            mod.TUNING[k] = v
    return rows


def main_bench() -> list[dict]:
    rows = []
    f16 = torch.float16
    cases = []  # (encoding, D, config, N, table dtype, out dtype, gradient dtype)
    for n in (2**20, 2**22):
        cases += [("grid", 3, CONFIG_A, n, None, None, None), ("grid", 3, CONFIG_A, n, f16, f16, None),
                  ("grid", 3, CONFIG_A, n, f16, f16, f16)]
    cases += [("grid", 4, CONFIG_A, 2**22, None, None, None), ("grid", 4, CONFIG_A, 2**22, f16, f16, None),
              ("grid", 4, CONFIG_A, 2**22, f16, f16, f16)]
    big = dict(CONFIG_A, log2_hashmap_size=22, n_features_per_level=4)
    cases += [("grid", 3, big, 2**22, None, None, None), ("grid", 3, big, 2**22, f16, f16, None),
              ("grid", 3, big, 2**22, f16, f16, f16)]
    for D in (3, 4):
        cases += [("simplex", D, CONFIG_A, 2**22, None, None, None),
                  ("simplex", D, CONFIG_A, 2**22, f16, f16, None),
                  ("simplex", D, CONFIG_A, 2**22, f16, f16, f16)]
    for kind, D, config, n, tdt, odt, gdt in cases:
        r = time_encoding(kind, D, config, n, tdt, odt, gdt)
        row = {"enc": kind, "D": D, "F": config["n_features_per_level"], "log2T": config["log2_hashmap_size"],
               "N": f"2^{n.bit_length() - 1}", "table": "fp16" if tdt else "fp32",
               "out": "fp16" if odt else "fp32", "grad": "fp16" if gdt else "fp32", **r}
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Compile times

_COMPILE_CHILD = r"""
import json, torch
from ngraphics.kernels.bench_grid import make_case, CONFIG_A, _gather_kernel
from ngraphics.profiling.timing import wall_time
a = torch.zeros(256, device="cuda", requires_grad=True)  # warm CUDA, autograd (create_graph), Triton
torch.autograd.grad(torch.autograd.grad((a * a).sum(), a, create_graph=True)[0].sum(), a)
_gather_kernel[(1,)](a.detach(), torch.empty_like(a), 256, 255, K=1, BLOCK=256); torch.cuda.synchronize()
res = {}
for kind in ("grid", "simplex"):
    spec, encode, params, x, dy = make_case(kind, 3, CONFIG_A, 4096, None, None)
    xg = x.clone().requires_grad_(True)
    res[kind + "_fwd_s"] = wall_time(lambda: encode(x, params, spec), "cuda")
    out = encode(xg, params, spec)
    res[kind + "_bwd_s"] = wall_time(lambda: torch.autograd.grad(out, (xg, params), dy, create_graph=True),
                                     "cuda")
    dx, dp = torch.autograd.grad(encode(xg, params, spec), (xg, params), dy, create_graph=True)
    res[kind + "_bwd_bwd_s"] = wall_time(lambda: torch.autograd.grad(dx.square().sum(), (xg, params)), "cuda")
print("JSON" + json.dumps(res))
"""


def compile_times() -> dict:
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        for label in ("cold", "cached"):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], env=env, capture_output=True,
                                 text=True, check=False)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("JSON")]
            if not line:
                raise RuntimeError(out.stderr[-2000:])
            for k, v in json.loads(line[0][4:]).items():
                res[f"{label}_{k}"] = v
            res[f"{label}_process_s"] = time.perf_counter() - t
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("ceilings", "sweep", "main", "compile", "once"):
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--grad16", action="store_true", help="--once: sum table gradients in fp16")
    ap.add_argument("--tune", action="append", default=[], help="enc.kind.key=value, e.g. grid.fwd.block=256")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.once:
        for kind in ("grid", "simplex"):
            spec, _, params, x, dy = make_case(kind, 3, CONFIG_A, 2**22, torch.float16, torch.float16)
            ops = (kgrid.grid_ops if kind == "grid" else ksimplex.simplex_ops)(spec)
            table = params.detach().half()
            grad_dtype = torch.float16 if args.grad16 else None
            for _ in range(2):  # the first round compiles
                ops.forward(x, table, torch.float16)
                ops.backward(x, table, dy, True, False, grad_dtype)
                ops.backward(x, table, dy, True, True, grad_dtype)
        torch.cuda.synchronize()
        return 0
    if not (args.ceilings or args.sweep or args.main or args.compile):
        args.ceilings = args.main = args.compile = True
    props = torch.cuda.get_device_properties(0)
    results = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
               "triton": triton.__version__}
    print(results, flush=True)
    if args.ceilings:
        results["ceilings"] = ceilings()
        print(results["ceilings"], flush=True)
    if args.sweep:
        results["sweep"] = sweep()
        _save(results, args.json)
    for t in args.tune:
        key, value = t.split("=")
        enc, kind, name = key.split(".")
        mod = kgrid if enc == "grid" else ksimplex
        mod.TUNING[kind][name] = value == "True" if value in ("True", "False") else (
            value if value == "auto" else int(value))
    results["tuning"] = {"grid": kgrid.TUNING, "simplex": ksimplex.TUNING}
    if args.main:
        results["main"] = main_bench()
        _save(results, args.json)
    if args.compile:
        results["compile"] = compile_times()
        print(results["compile"], flush=True)
    _save(results, args.json)
    return 0


def _save(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    raise SystemExit(main())

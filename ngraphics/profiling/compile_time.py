"""First-call time of the Triton kernels: cold (a fresh, empty TRITON_CACHE_DIR) and cached (the same
directory again, as on every later run of a user's program), each in its own Python process.

The probe process builds each case with backend `triton`, warms CUDA up with a plain torch op, then times
the first forward + backward call (compilation, loading and one launch) and the second (steady state).

    rows = compile_times([{"bench": "encodings", "n_input_dims": 3, "config": {...}}], batch_size=2**16)
    python -m ngraphics.profiling.compile_time '<json spec>'      # the probe; prints one JSON line per case
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ngraphics import ops


def compile_times(cases: list[dict], *, batch_size: int = 2**16, dtype: str = "float16",
                  timeout_s: float = 300) -> list[dict]:
    """Cold and cached first-call seconds of every case (dicts with bench, name, n_input_dims, config).

    Returns one row per case: name, bench, n_input_dims, cold_first_call_s, cached_first_call_s,
    steady_call_s (the second call in the cached process), status and reason; plus a first row named
    `(runtime init)` with the once-per-process cost (CUDA context, imports, Triton's launcher) that the
    case rows exclude."""
    spec = {"cases": cases, "batch_size": batch_size, "dtype": dtype}
    with tempfile.TemporaryDirectory(prefix="ngraphics-triton-cache-") as cache:
        env = {**os.environ, "TRITON_CACHE_DIR": cache, "PYTHONPATH": _pythonpath()}
        env.pop("TRITON_INTERPRET", None)
        cold = _probe(spec, env, timeout_s, cache)
        cached = _probe(spec, env, timeout_s, cache)
    init_cold, init_cached = cold.get(-1, {}).get("init_s"), cached.get(-1, {}).get("init_s")
    rows = [{"bench": cases[0]["bench"] if cases else None, "name": "(runtime init)", "n_input_dims": None,
             "cold_first_call_s": init_cold, "cached_first_call_s": init_cached, "steady_call_s": None,
             "status": "ok" if init_cold is not None else "n/a", "reason": None}]
    for i, case in enumerate(cases):
        a, b = cold.get(i, {}), cached.get(i, {})
        row = {"bench": case["bench"], "name": case.get("name"), "n_input_dims": case["n_input_dims"],
               "cold_first_call_s": a.get("first_s"), "cached_first_call_s": b.get("first_s"),
               "steady_call_s": b.get("second_s"), "status": "ok", "reason": None}
        reason = a.get("error") or b.get("error")
        if reason or row["cold_first_call_s"] is None:
            row.update(status="n/a", reason=reason or "probe process failed")
        rows.append(row)
    return rows


def _pythonpath() -> str:
    """Make the probe import this same ngraphics (also when it runs from a source checkout)."""
    import ngraphics

    root = str(Path(ngraphics.__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _probe(spec: dict, env: dict, timeout_s: float, cwd: str) -> dict[int, dict]:
    # cwd: `python -m` puts the working directory first on sys.path; a neutral one makes the probe import
    # the same ngraphics as this process (not a source tree that happens to be the working directory).
    cmd = [sys.executable, "-m", "ngraphics.profiling.compile_time", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                              check=False)
    except subprocess.TimeoutExpired:
        return {i: {"error": f"probe timed out after {timeout_s:.0f} s"} for i in range(len(spec["cases"]))}
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[record.pop("index")] = record
    if proc.returncode and not out:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        out = {i: {"error": f"probe failed: {tail[:200]}"} for i in range(len(spec["cases"]))}
    return out


def _runtime_init() -> None:
    """What every first Triton call pays once per process, kept out of the per-kernel numbers: the CUDA
    context, importing the kernel modules, and Triton's driver and launcher set-up (a one-line kernel)."""
    import triton
    import triton.language as tl

    for name in ("grid_encode", "simplex_encode", "mlp_forward"):
        try:
            ops.kernel(name)
        except ImportError:
            pass

    @triton.jit
    def _add_one(ptr):
        tl.store(ptr, tl.load(ptr) + 1)

    x = torch.zeros(1, device="cuda")
    _add_one[(1,)](x)
    x.item()


def _run_probe(spec: dict) -> None:
    from ngraphics.profiling import benchmarks as bm
    from ngraphics.profiling.timing import wall_time

    device = torch.device("cuda")
    dtype = getattr(torch, spec["dtype"])
    print(json.dumps({"index": -1, "init_s": wall_time(_runtime_init, device)}), flush=True)
    builders = {"encodings": bm._build_encoding, "encoding-mlp": bm._build_encoding_mlp}
    for index, case in enumerate(spec["cases"]):
        record = {"index": index}
        try:
            d = case["n_input_dims"]
            if case["bench"] == "mlp":
                module = bm._build_mlp("triton", d, case["n_output_dims"], case["config"], device, dtype)
            else:
                module = builders[case["bench"]]("triton", d, case["config"], device,
                                                 torch.float32 if case["bench"] == "encodings" else dtype)
            x = torch.rand(spec["batch_size"], d, device=device)

            def call(module=module, x=x):
                out = module(x)
                if out.requires_grad:
                    out.float().sum().backward()

            record["first_s"] = wall_time(call, device)
            record["second_s"] = wall_time(call, device)
        except Exception as err:  # noqa: BLE001 - reported per case, the probe goes on
            msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
            record["error"] = f"{type(err).__name__}: {msg}"[:200]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _run_probe(json.loads(sys.argv[1]))

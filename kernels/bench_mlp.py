"""Benchmark of the fused Triton MLP against torch (cuBLAS) and tiny-cuda-nn's published-to-us numbers.

    python -m ngraphics.kernels.bench_mlp                 # table for the reference network at N = 2^22
    python -m ngraphics.kernels.bench_mlp --sweep --encoding --compile --json out.json

Reference network: 32 -> 64 x 2 hidden -> 16, ReLU, no output activation, fp16 (tcnn FullyFusedMLP: forward
1.141 ms, forward + backward 3.280 ms on the H100 of docs/benchmarks.md). Each time is the median of
`--reps` CUDA-event-timed calls after `--warmup` untimed ones. "fwd+bwd" is y = f(x); y.backward(dy) with
gradients for every weight, and for x too in the "+dx" rows (what an encoding in front needs).
--encoding adds HashGrid A (3D, 16 levels x 2 features, 2^19 entries, base 16, scale 2) + the same MLP; its
"(fp16 grads)" rows sum the grid's table gradient in fp16 (gradient_dtype=torch.float16) as tiny-cuda-nn
does, the like-for-like comparison with tcnn's number. --sweep times launch configurations first, --compile
measures cold / cached first-call times.
"""

from __future__ import annotations

import argparse
import json

import torch

from ngraphics.networks.mlp import MLPSpec, mlp_forward_torch
from ngraphics.profiling.timing import time_fn

TCNN_MS = {"mlp fwd": 1.141, "mlp fwd+bwd": 3.280, "hashgrid+mlp fwd+bwd": 11.12,
           "hashgrid+mlp fwd+bwd (fp16 grads)": 11.12}  # tcnn sums grid gradients in fp16 (half2)
NETWORK = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 64,
           "n_hidden_layers": 2}
HASHGRID_A = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
              "base_resolution": 16, "per_level_scale": 2.0}
SPEC = MLPSpec(32, 16, 32, 16, 64, 2, "ReLU", "None")


DEVICE = "cuda"  # --device cpu (with TRITON_INTERPRET=1) dry-runs every code path on tiny sizes


def cuda_time(fn, reps: int, warmup: int) -> float:
    """Median milliseconds of `reps` CUDA-event-timed calls after `warmup` untimed ones."""
    return time_fn(fn, DEVICE, warmup=warmup, min_repeats=reps, max_repeats=reps, min_time_s=0.0).median_ms


def mlp_inputs(n: int, dtype=torch.float16):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.rand(n, SPEC.padded_input_dims, device=DEVICE, generator=g).to(dtype)
    ws = [((torch.rand(r, c, device=DEVICE, generator=g) * 2 - 1) * (6 / (r + c)) ** 0.5).to(dtype)
          for r, c in SPEC.layer_shapes()]
    dy = torch.randn(n, SPEC.n_output_dims, device=DEVICE, generator=g).to(dtype)
    return x, [w.requires_grad_(True) for w in ws], dy


def mlp_calls(forward, x, ws, dy):
    """(forward only, fwd+bwd weights, fwd+bwd weights and x) closures."""
    xg = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            forward(x, ws)

    def fwd_bwd():
        forward(x, ws).backward(dy)

    def fwd_bwd_dx():
        forward(xg, ws).backward(dy)

    return fwd, fwd_bwd, fwd_bwd_dx


def sweep(n: int, reps: int, warmup: int) -> list[dict]:
    """Kernel times of launch configurations of the reference network: forward, backward with dx, backward
    without dx (each alone, no autograd). Leaves `kmlp.TUNING` as it found it."""
    from ngraphics.kernels import mlp as kmlp

    x, ws, dy = mlp_inputs(n)
    wd = [w.detach() for w in ws]
    rows = []
    saved = dict(kmlp.TUNING)
    fwd = [{"block_m": bm, "num_warps": nw, "per_sm": ps, "prefetch": pf}
           for bm, nw, ps, pf in ((64, 4, 4, True), (64, 4, 8, True), (128, 4, 4, True), (64, 4, 4, False),
                                  (128, 8, 2, True))]
    bwd = [{"block_m": bm, "num_warps": nw, "per_sm": ps, "prefetch": pf, "resident": True, "acc_regs": True}
           for bm, nw, ps, pf in ((64, 4, 2, True), (64, 4, 3, True), (64, 4, 2, False), (128, 4, 2, True),
                                  (128, 8, 1, True), (128, 8, 1, False), (64, 8, 2, True))]
    for kernel, key, configs, call in (
            ("fwd", "fwd", fwd, lambda: kmlp.mlp_forward_kernel(x, wd, SPEC)),
            ("bwd+dx", "bwd", bwd, lambda: kmlp.mlp_backward_kernel(x, wd, SPEC, dy, True)),
            ("bwd", "bwd_nodx", bwd, lambda: kmlp.mlp_backward_kernel(x, wd, SPEC, dy, False))):
        for cfg in configs:
            kmlp.TUNING.clear()
            kmlp.TUNING[key] = cfg
            rows.append({"kernel": kernel, **cfg, "ms": _try(lambda c=call: cuda_time(c, reps, warmup))})
        best = min((r for r in rows if r["kernel"] == kernel and r["ms"] is not None), key=lambda r: r["ms"])
        print(f"sweep best {kernel}: {best}")
    kmlp.TUNING.clear()
    kmlp.TUNING.update(saved)
    return rows


def ncu_step(n: int, gradient_dtype=None) -> None:
    """Three steps of HashGrid A + MLP fwd+bwd (kernels launched: grid fwd, mlp fwd, mlp bwd, grid bwd each).
    For ncu: --kernel-name regex:"_grid_fwd_kernel|_grid_bwd_kernel|_mlp" --launch-skip 8 --launch-count 4.
    gradient_dtype: the grid's table-gradient sums (None: fp32; torch.float16: half2, as tcnn)."""
    from ngraphics.kernels.grid import grid_encode_triton
    from ngraphics.kernels.mlp import mlp_forward_triton

    from ngraphics.networks import NetworkWithInputEncoding

    model = NetworkWithInputEncoding(3, 16, HASHGRID_A, NETWORK, seed=1337, dtype=torch.float16).to(DEVICE)
    pos = torch.rand(n, 3, device=DEVICE)
    dy = torch.randn(n, 16, device=DEVICE).half()
    table = model.encoding.params.detach().clone().requires_grad_(True)
    weights = [w.detach().half().requires_grad_(True) for w in model.network.weights()]
    for _ in range(3):
        feat = grid_encode_triton(pos, table, model.encoding.spec, table_dtype=torch.float16,
                                  out_dtype=torch.float16, gradient_dtype=gradient_dtype)
        mlp_forward_triton(feat, weights, model.network.spec).backward(dy)
    torch.cuda.synchronize()


def _try(fn):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a configuration that does not compile or fit: reported as None
        print(f"  config failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
        return None


def mlp_table(n: int, reps: int, warmup: int) -> list[dict]:
    from ngraphics.kernels.mlp import mlp_forward_triton

    x, ws, dy = mlp_inputs(n)
    rows = []
    for backend, forward in (("triton", lambda a, w: mlp_forward_triton(a, w, SPEC)),
                             ("torch", lambda a, w: mlp_forward_torch(a, w, SPEC))):
        for what, fn in zip(("mlp fwd", "mlp fwd+bwd", "mlp fwd+bwd+dx"), mlp_calls(forward, x, ws, dy)):
            rows.append({"case": what, "backend": backend, "ms": cuda_time(fn, reps, warmup)})
    # store-and-reload (tcnn) would move 2 hidden layers x N x 64 fp16 out and back in: one device copy of
    # that many bytes reads and writes exactly that, the least it can cost (recompute is its alternative).
    buf = torch.empty(n * 64 * 2, dtype=torch.float16, device=DEVICE)
    out = torch.empty_like(buf)
    rows.append({"case": "copy 2 x N x 64 fp16 (store+reload floor)", "backend": "torch",
                 "ms": cuda_time(lambda: out.copy_(buf), reps, warmup),
                 "gb_moved": 2 * buf.numel() * 2 / 1e9})
    return rows


def encoding_table(n: int, reps: int, warmup: int) -> list[dict]:
    """HashGrid A + MLP: the library module (fp32 table and features, as `HashGrid` runs by default), the
    kernels composed directly the way tcnn runs them (fp16 table copy and fp16 features; with fp32 or, as
    tcnn, fp16 sums of the table gradient), and the grid alone."""
    from ngraphics.kernels.grid import grid_encode_triton
    from ngraphics.kernels.mlp import mlp_forward_triton

    from ngraphics.networks import NetworkWithInputEncoding

    g = torch.Generator(device=DEVICE).manual_seed(0)
    pos = torch.rand(n, 3, device=DEVICE, generator=g)
    dy = torch.randn(n, 16, device=DEVICE, generator=g).half()
    model = NetworkWithInputEncoding(3, 16, HASHGRID_A, NETWORK, seed=1337, dtype=torch.float16,
                                     backend="triton").to(DEVICE)
    gspec, mspec = model.encoding.spec, model.network.spec
    assert mspec.padded_input_dims == model.encoding.n_output_dims == 32
    table = model.encoding.params.detach().clone().requires_grad_(True)  # fp32 master, like tcnn's
    weights = [w.detach().half().requires_grad_(True) for w in model.network.weights()]
    d_feat = torch.randn(n, 32, device=DEVICE, generator=g).half()

    def module_fwd():
        with torch.no_grad():
            model(pos)

    def module_fwd_bwd():
        model(pos).backward(dy)

    def encode(gradient_dtype=None):
        return grid_encode_triton(pos, table, gspec, table_dtype=torch.float16, out_dtype=torch.float16,
                                  gradient_dtype=gradient_dtype)

    def direct_fwd():
        with torch.no_grad():
            mlp_forward_triton(encode(), weights, mspec)

    def direct_fwd_bwd():
        mlp_forward_triton(encode(), weights, mspec).backward(dy)

    def direct_fwd_bwd_grad16():
        mlp_forward_triton(encode(torch.float16), weights, mspec).backward(dy)

    def grid_fwd_bwd():
        encode().backward(d_feat)

    def grid_fwd_bwd_grad16():
        encode(torch.float16).backward(d_feat)

    def grid_fwd():
        with torch.no_grad():
            encode()

    cases = [("hashgrid+mlp fwd", direct_fwd), ("hashgrid+mlp fwd+bwd", direct_fwd_bwd),
             ("hashgrid+mlp fwd+bwd (fp16 grads)", direct_fwd_bwd_grad16),
             ("hashgrid alone fwd+bwd (fp16 table, fp16 out)", grid_fwd_bwd),
             ("hashgrid alone fwd+bwd (fp16 table, out, grads)", grid_fwd_bwd_grad16),
             ("hashgrid alone fwd (fp16 table, fp16 out)", grid_fwd),
             ("module NetworkWithInputEncoding fwd", module_fwd),
             ("module NetworkWithInputEncoding fwd+bwd", module_fwd_bwd)]
    return [{"case": name, "backend": "triton", "ms": cuda_time(fn, reps, warmup)} for name, fn in cases]


def compile_table(n: int) -> list[dict]:
    from ngraphics.profiling.compile_time import compile_times

    cases = [{"bench": "mlp", "name": "MLP 32->64x2->16", "n_input_dims": 32, "n_output_dims": 16,
              "config": NETWORK},
             {"bench": "encoding-mlp", "name": "HashGrid A + MLP", "n_input_dims": 3,
              "config": {"encoding": HASHGRID_A, "network": NETWORK}}]
    return compile_times(cases, batch_size=n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2n", type=int, default=22)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--encoding", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ncu-step", action="store_true", help="only run one encoding+MLP step for ncu")
    ap.add_argument("--grad16", action="store_true", help="--ncu-step: sum grid gradients in fp16")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    n = 2**args.log2n
    if args.ncu_step:
        ncu_step(n, torch.float16 if args.grad16 else None)
        return 0
    import triton

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    result = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
              "n": n, "reps": args.reps, "warmup": args.warmup}
    result["mlp"] = mlp_table(n, args.reps, args.warmup)  # the committed launch configurations
    if args.sweep:
        result["sweep"] = sweep(n, min(10, args.reps), min(3, args.warmup))
    if args.encoding:
        result["encoding"] = _try(lambda: encoding_table(n, args.reps, args.warmup))
    if args.compile:
        result["compile"] = compile_table(2**16)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  N = 2^{args.log2n}")
    print(f"{'case':44s} {'backend':8s} {'ms':>8s} {'tcnn ms':>8s} {'tcnn/ours':>9s}")
    for row in result["mlp"] + (result.get("encoding") or []):
        ref = TCNN_MS.get(row["case"]) if row["backend"] == "triton" else None
        ratio = f"{ref / row['ms']:9.2f}" if ref else ""
        print(f"{row['case']:44s} {row['backend']:8s} {row['ms']:8.3f} {ref or '':>8} {ratio}")
    for row in result.get("compile") or []:
        print(f"compile {row['name']}: cold {row['cold_first_call_s']} s, "
              f"cached {row['cached_first_call_s']} s, "
              f"steady {row['steady_call_s']} s ({row['status']} {row['reason'] or ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

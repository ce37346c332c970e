"""Time encodings and MLPs on every backend (torch, triton, tcnn) side by side.

    ngraphics profile encodings                          # defaults per device (CPU: ~1 minute)
    ngraphics profile encodings --device cuda --encodings HashGrid,Simplex --dims 2,3,4 \\
        --batch-sizes 2^16..2^22 --backends torch,triton,tcnn --json hash.json
    ngraphics profile mlp --widths 64,128
    ngraphics profile encoding-mlp --encodings HashGrid --dims 3

Prints a table (ms, points/s, speed-up over the torch backend) and writes every row as JSON. On CUDA it
also measures the first-call (compile) time of each Triton kernel, cold and with a warm cache. A backend
that cannot run here shows `n/a` with the reason.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from ngraphics.errors import ConfigError

CPU_DEFAULTS = {"batch_sizes": "2^12,2^14", "dims": "2,3"}
CUDA_DEFAULTS = {"batch_sizes": "2^16,2^18,2^20,2^22", "dims": "2,3,4"}
DEFAULT_ENCODINGS = "HashGrid,Simplex,DenseGrid,Frequency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    for what, text in (("encodings", "encodings alone"), ("mlp", "fused MLP vs torch"),
                       ("encoding-mlp", "encoding + MLP (NetworkWithInputEncoding)")):
        p = sub.add_parser(what, help=f"time {text}")
        p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                       help="default: auto (cuda when available, else cpu)")
        p.add_argument("--batch-sizes", metavar="LIST", help="e.g. 2^16..2^22 or 4096,65536 (default: CPU "
                       f"{CPU_DEFAULTS['batch_sizes']}, CUDA {CUDA_DEFAULTS['batch_sizes']})")
        p.add_argument("--backends", default="torch,triton,tcnn", metavar="LIST", help="default: %(default)s")
        p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                       help="MLP compute dtype (default: float16 on CUDA like tcnn, float32 on CPU); "
                            "encodings run float32 unless given")
        p.add_argument("--input-grad", action="store_true", help="backward also computes gradients to inputs")
        p.add_argument("--no-compile-time", action="store_true", help="skip the Triton first-call timing")
        p.add_argument("--json", metavar="FILE", help="where to write the rows (default: "
                       "runs/profile/<what>-<device>.json)")
        if what != "mlp":
            p.add_argument("--encodings", default=DEFAULT_ENCODINGS, metavar="LIST",
                           help="names or JSON/YAML files of one encoding each (default: %(default)s)")
            p.add_argument("--dims", metavar="LIST", help="input dimensions (default: CPU 2,3; CUDA 2,3,4)")
        else:
            p.add_argument("--widths", default="64,128", metavar="LIST", help="n_neurons (default: %(default)s)")
            p.add_argument("--hidden-layers", type=int, default=2)
            p.add_argument("--n-input", type=int, default=32, help="input width (default: %(default)s)")
            p.add_argument("--n-output", type=int, default=16, help="output width (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ngraphics.devices import pick_device
    from ngraphics.profiling import benchmarks as bm
    from ngraphics.profiling.report import environment, format_table, write_json

    device = pick_device(args.device, "--device")
    defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    batch_sizes = parse_sizes(args.batch_sizes or defaults["batch_sizes"], "--batch-sizes")
    backends = _names(args.backends, "--backends", bm.BACKENDS)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    shown_dtype = dtype
    if args.what == "mlp":
        widths = [int(w) for w in _names(args.widths, "--widths")]
        cases = bm.mlp_cases(widths, args.hidden_layers, args.n_input, args.n_output, batch_sizes, backends,
                             device, dtype)
    else:
        dims = [int(d) for d in _names(args.dims or defaults["dims"], "--dims")]
        names = _names(args.encodings, "--encodings")
        make = bm.encoding_cases if args.what == "encodings" else bm.encoding_mlp_cases
        shown_dtype = dtype if args.what == "encoding-mlp" or args.dtype else torch.float32
        cases = make(names, dims, batch_sizes, backends, device, shown_dtype)
    timing = ({"warmup": 3, "min_repeats": 5, "min_time_s": 0.2} if device.type == "cuda"
              else {"warmup": 1, "min_repeats": 3, "min_time_s": 0.05, "max_repeats": 10})

    from tqdm.auto import tqdm

    with tqdm(total=len(cases), unit="case", file=sys.stderr, leave=False) as bar:
        rows = bm.run_cases(cases, device, input_grad=args.input_grad, timing=timing,
                            progress=lambda row: bar.update(1))
    print(f"ngraphics profile {args.what} on {_device_name(device)}; dtype {str(shown_dtype)[6:]}; "
          f"ratios: torch ms / backend ms (> 1 is faster than torch)")
    table, notes = bm.table_rows(rows, device)
    print(format_table(table, bm.TABLE_COLUMNS))
    for note in notes:
        print(note)

    compile_rows = []
    if not args.no_compile_time and "triton" in backends and device.type == "cuda":
        from ngraphics.profiling.compile_time import compile_times

        seen, todo = set(), []
        for r in rows:
            key = (r["name"], r["n_input_dims"])
            if r["backend"] == "triton" and r["status"] == "ok" and key not in seen:
                seen.add(key)
                todo.append({"bench": r["bench"], "name": r["name"], "n_input_dims": r["n_input_dims"],
                             "config": r["config"], "n_output_dims": getattr(args, "n_output", 16)})
        if todo:
            compile_rows = compile_times(todo, dtype=str(dtype)[6:])
            print("\nTriton first call (compile + load + launch), fresh cache vs warm cache, forward + backward, "
                  "each in a new process; (runtime init) is paid once per process, before the first kernel:")
            print(format_table([{**r, "note": r.get("reason") or ""} for r in compile_rows], [
                ("name", "case"), ("n_input_dims", "D"), ("cold_first_call_s", "cold s"),
                ("cached_first_call_s", "cached s"), ("steady_call_s", "steady s"), ("note", "note")]))
    path = args.json or f"runs/profile/{args.what}-{device.type}.json"
    write_json(path, {"bench": args.what, "environment": environment(device), "dtype": str(shown_dtype)[6:],
                      "batch_sizes": batch_sizes, "rows": rows, "compile": compile_rows})
    print(f"\nrows written to {path}")
    return 0


def parse_sizes(text: str, where: str) -> list[int]:
    """`2^16..2^22` (every power of two in between), `4096,2^18`, `1e5` -> sorted ints."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if ".." in part:
            lo, hi = (_size(p, where) for p in part.split("..", 1))
            if lo > hi or lo & (lo - 1) or hi & (hi - 1):
                raise ConfigError(f"{where}: range {part} needs powers of two, low..high (e.g. 2^16..2^22)")
            out.update(1 << k for k in range(lo.bit_length() - 1, hi.bit_length()))
        else:
            out.add(_size(part, where))
    if not out:
        raise ConfigError(f"{where}: no sizes given")
    return sorted(out)


def _size(text: str, where: str) -> int:
    m = re.fullmatch(r"(\d+)\^(\d+)|(\d+)|(\d+(?:\.\d*)?[eE]\d+)", text)
    if not m:
        raise ConfigError(f"{where}: {text!r} is not a size (use 65536, 2^16 or 1e5)")
    value = int(m[1]) ** int(m[2]) if m[1] else int(m[3] or float(m[4]))
    if value < 1:
        raise ConfigError(f"{where}: sizes must be >= 1, got {text}")
    return value


def _names(text: str, where: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    from ngraphics.errors import choice_message

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"{where}: empty list")
    for name in names:
        if allowed is not None and name not in allowed:
            raise ConfigError(choice_message(where, name, allowed))
        if where in ("--dims", "--widths") and not name.isdigit():
            raise ConfigError(f"{where}: {name!r} is not a positive integer")
    return names


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

"""Parity of `ngraphics.kernels.compositing.composite_triton` with the torch reference `composite`
(backend="torch"), forward and backward, and with an independent float64 per-ray loop.

Each case draws fresh packed samples: ray lengths 0..max (empty rays included), densities spanning
transparent to opaque (0, small, ~U(0, 30), a few 1e4), colours in [0, 1], increasing segments; then
random cotangents on every output (rgb, alpha, depth, weights) and compares every input gradient (sigmas,
rgbs, background). Errors are max |a - b| / max |b| per tensor. Tolerances: outputs 1e-5, gradients 1e-4
(the kernel sums tau and the reverse scan in fp32, the reference's prefix sum is fp64; depth's gradient is
~1/alpha: rays with alpha < 1e-3 get no depth cotangent so the comparison measures the kernel, not that
conditioning).

- CPU: in a child process under the Triton interpreter (TRITON_INTERPRET=1 is read when `triton.jit`
  decorates) on tiny inputs, against the reference and against a float64 loop.
- CUDA (`gpu`): 2^14 rays of up to 256 samples, (R, 3) and (3,) backgrounds, and rgb-only losses (the
  weights output gets no gradient).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from harness import rel_err, run_in_interpreter

from ngraphics.rendering.compositing import composite, offsets_from_counts

TOL = {"out": 1e-5, "grad": 1e-4}


def packed_samples(R: int, max_count: int, device, gen: torch.Generator) -> dict:
    """Fresh random packed samples of R rays (some empty)."""
    counts = torch.randint(0, max_count + 1, (R,), generator=gen)
    counts[torch.rand(R, generator=gen) < 0.1] = 0
    N = int(counts.sum())
    ray_indices = torch.repeat_interleave(torch.arange(R), counts)
    offsets = offsets_from_counts(counts)
    dt = torch.rand(N, generator=gen) * 0.05 + 1e-3
    ends = torch.cumsum(dt, 0)
    first = offsets[:-1].clamp(max=max(N - 1, 0))
    base = (ends - dt)[first][ray_indices] if N else ends
    t_starts = 2.0 + torch.rand(R, generator=gen)[ray_indices] + (ends - dt) - base
    sigmas = torch.rand(N, generator=gen) * 30
    u = torch.rand(N, generator=gen)
    sigmas[u < 0.1] = 0.0
    sigmas[(u >= 0.1) & (u < 0.2)] *= 1e-3
    sigmas[u > 0.995] = 1e4
    return {"sigmas": sigmas.to(device), "rgbs": torch.rand(N, 3, generator=gen).to(device),
            "t_starts": t_starts.to(device), "t_ends": (t_starts + dt).to(device),
            "ray_indices": ray_indices.to(device), "offsets": offsets.to(device)}


def _run(fn, p: dict, background, cot: dict, weights_grad: bool):
    sig = p["sigmas"].clone().requires_grad_(True)
    rgb = p["rgbs"].clone().requires_grad_(True)
    bg = None if background is None else background.clone().requires_grad_(True)
    out = fn(sig, rgb, p["t_starts"], p["t_ends"], p["ray_indices"], p["offsets"], bg)
    keys = ("rgb", "alpha", "depth", "weights") if weights_grad else ("rgb",)
    loss = sum((out[k] * cot[k]).sum() for k in keys)
    inputs = (sig, rgb) if bg is None else (sig, rgb, bg)
    grads = torch.autograd.grad(loss, inputs)
    return {k: v.detach() for k, v in out.items()}, grads


def check_composite(p: dict, background, weights_grad: bool, gen: torch.Generator, oracle=None) -> dict:
    """Triton vs torch (and optionally vs an oracle with composite's signature); returns the errors."""
    from ngraphics.kernels.compositing import composite_triton

    R, N, dev = p["offsets"].shape[0] - 1, p["sigmas"].shape[0], p["sigmas"].device
    want_out = composite(p["sigmas"], p["rgbs"], p["t_starts"], p["t_ends"], p["ray_indices"], p["offsets"],
                         background, backend="torch")
    cot = {"rgb": torch.randn(R, 3, generator=gen), "alpha": torch.randn(R, generator=gen),
           "depth": torch.randn(R, generator=gen), "weights": torch.randn(N, generator=gen)}
    cot = {k: v.to(dev) for k, v in cot.items()}
    cot["depth"] = cot["depth"] * (want_out["alpha"] > 1e-3)

    def ref(*a):
        return composite(*a, backend="torch")

    errors = {}
    got, got_g = _run(composite_triton, p, background, cot, weights_grad)
    refs = [("torch", ref)] + ([("float64", oracle)] if oracle is not None else [])
    for name, fn in refs:
        want, want_g = _run(fn, p, background, cot, weights_grad)
        for k in ("rgb", "alpha", "depth", "weights"):
            errors[f"{name}.{k}"] = rel_err(got[k], want[k])
            assert errors[f"{name}.{k}"] <= TOL["out"], (name, k, errors)
        for k, a, b in zip(("d_sigmas", "d_rgbs", "d_background"), got_g, want_g):
            errors[f"{name}.{k}"] = rel_err(a, b)
            assert errors[f"{name}.{k}"] <= TOL["grad"], (name, k, errors)
    return errors


def composite_float64_loop(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, background=None):
    """Independent oracle: each ray front to back in float64, T *= 1 - alpha; same outputs as composite."""
    R = offsets.shape[0] - 1
    s, c = sigmas.double(), rgbs.double()
    ts, te = t_starts.double(), t_ends.double()
    rgb, acc, depth, weights = [], [], [], []
    for r in range(R):
        T = torch.ones((), dtype=torch.float64)
        cr, a, d = torch.zeros(3, dtype=torch.float64), torch.zeros((), dtype=torch.float64), 0.0
        for i in range(int(offsets[r]), int(offsets[r + 1])):
            alpha = 1 - torch.exp(-s[i] * (te[i] - ts[i]))
            w = T * alpha
            weights.append(w)
            cr, a, d = cr + w * c[i], a + w, d + w * 0.5 * (ts[i] + te[i])
            T = T * (1 - alpha)
        if background is not None:
            bg = background.double() if background.dim() == 1 else background[r].double()
            cr = cr + (1 - a) * bg
        rgb.append(cr)
        acc.append(a)
        depth.append(d / a.clamp_min(1e-10))
    w = torch.stack(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return {"rgb": torch.stack(rgb), "alpha": torch.stack(acc), "depth": torch.stack(depth), "weights": w}


def check_padding(gen: torch.Generator, device="cpu") -> None:
    """Fixed-size training buffers: entries past offsets[-1] belong to no ray. The kernel must give them
    weight 0 and gradient 0 (even with non-zero dt, which real padding never has) and leave the rays as
    without them."""
    from ngraphics.kernels.compositing import composite_triton

    p = packed_samples(6, 9, device, gen)
    n, pad = p["sigmas"].shape[0], 5
    padded = {k: torch.cat([v, v[:pad] if k != "ray_indices" else torch.full((pad,), 5, device=device)])
              for k, v in p.items() if k != "offsets"}
    padded["offsets"] = p["offsets"]
    outs = []
    for q in (p, padded):
        sig, rgb = q["sigmas"].clone().requires_grad_(True), q["rgbs"].clone().requires_grad_(True)
        out = composite_triton(sig, rgb, q["t_starts"], q["t_ends"], q["ray_indices"], q["offsets"])
        (out["rgb"].sum() + out["weights"].sum()).backward()
        outs.append((out, sig.grad, rgb.grad))
    (a, ga_s, ga_c), (b, gb_s, gb_c) = outs
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(b["weights"][:n], a["weights"])
    assert torch.equal(gb_s[:n], ga_s) and torch.equal(gb_c[:n], ga_c)
    assert (b["weights"][n:] == 0).all() and (gb_s[n:] == 0).all() and (gb_c[n:] == 0).all()


def interpreted_checks() -> None:
    """Tiny cases under the interpreter (run in a child process with TRITON_INTERPRET=1)."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from ngraphics.kernels import compositing as kc

    assert type(kc._composite_fwd_kernel).__name__ == "InterpretedFunction"
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for R, max_count, bg in ((13, 40, "rays"), (7, 5, "one"), (5, 3, None)):
        p = packed_samples(R, max_count, "cpu", gen)
        background = {"rays": torch.rand(R, 3, generator=gen), "one": torch.rand(3, generator=gen),
                      None: None}[bg]
        print(R, max_count, bg, check_composite(p, background, True, gen, oracle=composite_float64_loop))
    check_padding(gen)
    # no samples at all; backend="triton" through the reference's dispatch
    p = packed_samples(3, 0, "cpu", gen)
    out = composite(p["sigmas"], p["rgbs"], p["t_starts"], p["t_ends"], p["ray_indices"], p["offsets"],
                    torch.ones(3), backend="triton")
    assert out["rgb"].tolist() == [[1.0] * 3] * 3 and out["alpha"].tolist() == [0.0] * 3


def test_composite_triton_interpreter_matches_torch_and_float64():
    run_in_interpreter(__file__)


@pytest.mark.gpu
@pytest.mark.parametrize("bg,weights_grad", [("rays", True), ("one", True), (None, False)])
def test_composite_triton_matches_torch_gpu(bg, weights_grad):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    R = 1 << 14
    p = packed_samples(R, 256, "cuda", gen)
    background = {"rays": torch.rand(R, 3, generator=gen), "one": torch.rand(3, generator=gen),
                  None: None}[bg]
    background = None if background is None else background.cuda()
    print(check_composite(p, background, weights_grad, gen))
    check_padding(gen, "cuda")


if __name__ == "__main__":
    globals()[sys.argv[1]]()

"""Parity of the fused Triton MLP (`ngraphics.kernels.mlp`) with the torch reference `mlp_forward_torch`.

Each case draws fresh random inputs, weights and output cotangents, and compares the output, d x and every
d W_k against a float64 oracle (`mlp_forward_torch` on float64 copies of the same rounded values; that
reference is itself checked against hand-written numpy loops in tests/test_networks.py). Error = ‖a - ref‖ /
‖ref‖ per tensor.

- Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before the kernels are
  imported) on tiny inputs (37 rows, 16-row tiles so that each program walks several tiles). float32 and
  float16 run there; bfloat16 cannot: the interpreter's bf16 `tl.dot` returns garbage (~1e10, Triton 3.6 with
  numpy 2), so bf16 is covered only by the gpu cases. float32 tolerance: 2e-6. float16: at most 2x the
  error of the torch path evaluated in float16 on the same inputs (+1e-6 for zero-error corner cases).
- With CUDA the same checks run as `gpu` tests on 2^16 + 37 rows, fp16 and bf16, against torch's cuBLAS
  path in the same dtype (float32 on CUDA takes the torch path; see `unsupported_reason`).
"""

from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (triton.jit reads it there)
pytest.importorskip("triton")

import ngraphics.kernels.mlp as kmlp

from ngraphics.networks.mlp import MLP, MLPSpec, mlp_forward_torch, next_multiple

INTERPRETED = type(kmlp._mlp_fwd_kernel).__name__ == "InterpretedFunction"
if os.environ.get("TRITON_INTERPRET") == "1" and not INTERPRETED:  # imported earlier without the interpreter
    kmlp = importlib.reload(kmlp)
    INTERPRETED = True

needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="interpreter cases run on CPU-only machines; with CUDA the gpu cases cover them"
)
FP32_TOL = 2e-6


def make_spec(n_in, n_out, width, layers, act="ReLU", out_act="None") -> MLPSpec:
    padded_in, padded_out = next_multiple(n_in, 16), next_multiple(n_out, 16)
    return MLPSpec(n_in, n_out, padded_in, padded_out, width, layers, act, out_act)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite values (unwritten output?)"
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _run(fn, x, weights, dy, need_dx=True):
    x = x.clone().requires_grad_(need_dx)
    ws = [w.clone().requires_grad_(True) for w in weights]
    y = fn(x, ws)
    y.backward(dy)
    return [y.detach(), x.grad] + [w.grad for w in ws]


def check_parity(spec, n, device, dtype, need_dx=True, weight_scale=1.0):
    """Triton vs float64 oracle, with the torch path in the same dtype as the yardstick. Returns errors."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.randn(n, spec.padded_input_dims, generator=g).to(device, dtype)
    weights = [(torch.rand(r, c, generator=g) * 2 - 1) * (weight_scale * (6 / (r + c)) ** 0.5)
               for r, c in spec.layer_shapes()]
    weights = [w.to(device, dtype) for w in weights]
    dy = torch.randn(n, spec.n_output_dims, generator=g).to(device, dtype)
    if device == "cuda":  # poison the allocator's cache: unwritten outputs show up as NaN
        torch.full((64 * n * max(spec.padded_input_dims, 16),), float("nan"), device=device)
    tri = _run(lambda a, ws: kmlp.mlp_forward_triton(a, ws, spec), x, weights, dy, need_dx)
    ref = _run(lambda a, ws: mlp_forward_torch(a, ws, spec), x.double(), [w.double() for w in weights],
               dy.double(), need_dx)
    low = None
    if dtype != torch.float32:
        low = _run(lambda a, ws: mlp_forward_torch(a, ws, spec), x, weights, dy, need_dx)
    names = ["out", "dx"] + [f"dW{k}" for k in range(len(weights))]
    errs = {}
    for k, name in enumerate(names):
        if name == "dx" and not need_dx:
            assert tri[k] is None
            continue
        assert tri[k].dtype == dtype and tri[k].shape == ref[k].shape, (name, tri[k].dtype, tri[k].shape)
        err = _rel(tri[k], ref[k])
        bound = FP32_TOL if low is None else 2 * _rel(low[k], ref[k]) + 1e-6
        errs[name] = (err, bound)
        assert err <= bound, (name, errs)
    return errs


# --------------------------------------------------------------------------------------------------------
# CPU: Triton interpreter, tiny inputs

INTERPRETER_CASES = [  # (n_in, n_out, width, hidden layers, activation, output activation, dtype)
    (32, 16, 64, 2, "ReLU", "None", torch.float16),  # the benchmark network
    (3, 1, 16, 1, "ReLU", "Sigmoid", torch.float32),  # padded input and output
    (5, 17, 32, 3, "LeakyReLU", "Exponential", torch.float32),  # output padded to 32
    (20, 4, 48, 4, "Tanh", "Softplus", torch.float32),  # width 48: power-of-two blocks with masks
    (16, 3, 128, 2, "Sigmoid", "ReLU", torch.float32),
    (7, 2, 16, 2, "Sine", "Squareplus", torch.float16),
    (16, 8, 32, 1, "Squareplus", "Tanh", torch.float32),
    (33, 5, 16, 2, "Softplus", "LeakyReLU", torch.float32),
    (8, 3, 32, 2, "Exponential", "Sine", torch.float32),
    (16, 16, 64, 1, "None", "None", torch.float32),
    (35, 19, 32, 0, "ReLU", "Sigmoid", torch.float32),  # no hidden layer: one (32 x 48) matrix
]


@pytest.fixture
def small_tiles(monkeypatch):
    """16-row tiles: 37 rows give 3 tiles over 2 programs, so the persistent loop runs more than once."""
    monkeypatch.setitem(kmlp.TUNING, "fwd", {"block_m": 16})
    monkeypatch.setitem(kmlp.TUNING, "bwd", {"block_m": 16})


@needs_interpreter
@pytest.mark.parametrize("n_in,n_out,width,layers,act,out_act,dtype", INTERPRETER_CASES)
def test_interpreter_parity(small_tiles, n_in, n_out, width, layers, act, out_act, dtype):
    scale = 0.5 if "Exponential" in (act, out_act) else 1.0  # keep e^x of e^x finite
    check_parity(make_spec(n_in, n_out, width, layers, act, out_act), 37, "cpu", dtype, weight_scale=scale)


@needs_interpreter
@pytest.mark.parametrize("resident,acc_regs,prefetch", [(False, False, True), (True, False, False),
                                                         (False, True, True), (True, True, False)])
def test_interpreter_weight_and_gradient_modes(monkeypatch, resident, acc_regs, prefetch):
    """Weights reloaded per use, gradient sums kept in the fp32 buffer, next-tile loads issued early or
    late: the same results."""
    monkeypatch.setitem(kmlp.TUNING, "fwd", {"block_m": 16, "resident": resident, "prefetch": prefetch})
    monkeypatch.setitem(kmlp.TUNING, "bwd", {"block_m": 16, "resident": resident, "acc_regs": acc_regs,
                                             "prefetch": prefetch})
    check_parity(make_spec(12, 6, 32, 4, "Tanh", "Sigmoid"), 37, "cpu", torch.float32)


@needs_interpreter
@pytest.mark.parametrize("n", [1, 16, 0])
def test_interpreter_odd_sizes_and_no_input_grad(small_tiles, n):
    spec = make_spec(32, 16, 32, 2)
    if n == 0:
        x = torch.empty(0, 32, requires_grad=True)
        ws = [torch.randn(r, c, requires_grad=True) for r, c in spec.layer_shapes()]
        y = kmlp.mlp_forward_triton(x, ws, spec)
        assert y.shape == (0, 16)
        y.sum().backward()
        assert all(torch.equal(w.grad, torch.zeros_like(w)) for w in ws)
        return
    check_parity(spec, n, "cpu", torch.float32, need_dx=False)


@needs_interpreter
def test_interpreter_mlp_module_backend_triton(small_tiles):
    """The MLP module (ones-padding of the input, fp32 params) takes the kernel and matches its torch path."""
    config = {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2, "output_activation": "Sigmoid"}
    nets = [MLP(3, 4, config, seed=5, backend=b) for b in ("triton", "torch")]
    x = torch.rand(37, 3)
    outs = []
    for net in nets:
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        (y * torch.linspace(-1, 1, 4)).sum().backward()
        outs.append((y.detach(), xi.grad, net.params.grad))
    for a, b in zip(*outs):
        assert _rel(a, b) <= FP32_TOL


def test_unsupported_calls_fall_back_to_torch():
    """Shapes or dtypes the kernel does not run say why and take the torch path (no kernel launch here)."""
    spec = make_spec(8, 2, 16, 5)
    x = torch.randn(9, 16, dtype=torch.float64)
    ws = [torch.randn(r, c, dtype=torch.float64) for r, c in spec.layer_shapes()]
    assert "5 hidden layers" in kmlp.unsupported_reason(x.float(), [w.float() for w in ws], spec)
    assert "float64" in kmlp.unsupported_reason(x, ws, spec)
    wide = make_spec(8, 2, 256, 1)
    wide_ws = [torch.randn(r, c) for r, c in wide.layer_shapes()]
    assert "256 wide" in kmlp.unsupported_reason(x.float(), wide_ws, wide)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        y = kmlp.mlp_forward_triton(x, ws, spec)
    assert torch.equal(y, mlp_forward_torch(x, ws, spec))


# --------------------------------------------------------------------------------------------------------
# CUDA

GPU_CASES = [  # (n_in, n_out, width, hidden layers, activation, output activation)
    (32, 16, 64, 2, "ReLU", "None"),  # the benchmark network
    (3, 1, 64, 2, "ReLU", "Sigmoid"),
    (32, 3, 16, 1, "ReLU", "Exponential"),
    (32, 16, 32, 4, "LeakyReLU", "None"),
    (32, 16, 64, 4, "ReLU", "Softplus"),
    (32, 4, 128, 1, "Tanh", "ReLU"),
    (32, 16, 128, 2, "ReLU", "None"),
    (128, 128, 128, 4, "ReLU", "None"),  # widest everything: weights reloaded, sums in the fp32 buffer
    (20, 4, 48, 3, "Squareplus", "Sigmoid"),
    (16, 8, 64, 2, "Sine", "Tanh"),
    (16, 8, 32, 2, "Softplus", "Squareplus"),
    (16, 3, 64, 3, "Sigmoid", "LeakyReLU"),
    (35, 19, 32, 0, "ReLU", "None"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("n_in,n_out,width,layers,act,out_act", GPU_CASES)
def test_gpu_parity(n_in, n_out, width, layers, act, out_act, dtype):
    check_parity(make_spec(n_in, n_out, width, layers, act, out_act), 2**16 + 37, "cuda", dtype)


@pytest.mark.gpu
def test_gpu_no_input_grad_and_small_batches():
    spec = make_spec(32, 16, 64, 2)
    for n in (1, 127, 129):
        check_parity(spec, n, "cuda", torch.float16, need_dx=False)


@pytest.mark.gpu
def test_gpu_mlp_module_backend_triton():
    """fp16 MLP module with tcnn's loss scaling: triton and torch backends agree on output and param grads."""
    config = {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}
    nets = [MLP(32, 16, config, seed=5, backend=b).cuda() for b in ("triton", "torch")]
    x = torch.rand(2**16, 32, device="cuda")
    dy = torch.randn(2**16, 16, device="cuda")
    outs = []
    for net in nets:
        y = net(x)
        y.float().backward(dy)
        outs.append((y.detach(), net.params.grad))
    assert _rel(outs[0][0], outs[1][0]) <= 2e-3
    assert _rel(outs[0][1], outs[1][1]) <= 2e-3

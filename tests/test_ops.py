"""`ngraphics.ops`: the dispatch table resolves, the one backend policy (torch / auto / forced triton), the
call sites that use it, the CLI's log line, and the layering rule (only ops and profiling import kernels).

Everything here runs on CPU: the policy takes a device, so `torch.device("cuda")` exercises auto's CUDA branch
without a GPU (no tensor is made there), and TRITON_INTERPRET=1 (monkeypatched) is the interpreter switch.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import re
from pathlib import Path

import pytest
import torch

from ngraphics import ops
from ngraphics.cameras import Cameras
from ngraphics.encodings.grid import HashGrid, grid_spec
from ngraphics.encodings.simplex import Simplex
from ngraphics.errors import ConfigError
from ngraphics.networks.mlp import MLP
from ngraphics.rendering.compositing import composite
from ngraphics.rendering.marching import march
from ngraphics.rendering.occupancy import OccupancyGrid
from ngraphics.splatting import rasterization

# the test venv has triton; the kernels' modules must import on CPU. Not imported here: triton decorates its
# own language functions for the interpreter only when TRITON_INTERPRET=1 is set before its first import,
# which the kernel tests' harness does (tests/kernels/harness.py)
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # the policy only reads device.type
TINY_MLP = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}
BIG_TABLE = {"n_levels": 1, "base_resolution": 8192, "log2_hashmap_size": 25}  # 8192^2 cells: hashed, 2^25


@pytest.fixture(autouse=True)
def fresh_decisions():
    """Each test starts with no recorded decisions; those of earlier tests come back afterwards."""
    saved = dict(ops._decisions)
    ops._decisions.clear()
    yield
    ops._decisions.clear()
    ops._decisions.update(saved)


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel tests set it for the whole session


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def mlp_details(dtype=torch.float32):
    """(h, weights, spec) as MLP.forward hands them to the `mlp_forward` row."""
    mlp = MLP(3, 2, TINY_MLP, seed=1)
    h = torch.ones(4, mlp.spec.padded_input_dims, dtype=dtype)
    return h, [w.to(dtype) for w in mlp.weights()], mlp.spec


def details(name: str) -> tuple:
    """Arguments of each op's `unsupported` check for a configuration its kernel runs."""
    return {"grid_encode": (grid_spec(3, {"otype": "HashGrid", "n_levels": 2}),),
            "mlp_forward": mlp_details()}.get(name, ())


def test_every_row_resolves_and_the_kernel_keeps_the_reference_signature():
    for name, row in ops.OPS.items():
        ref, kern = ops.reference(name), ops.kernel(name)
        assert ref.__name__.endswith("_torch") and kern.__name__.endswith("_triton"), (name, ref, kern)
        ref_params = list(inspect.signature(ref).parameters)
        assert list(inspect.signature(kern).parameters)[: len(ref_params)] == ref_params, name
        if row.unsupported is not None:
            assert ops._load(row.unsupported)(*details(name)) is None, name


def test_unknown_op_and_backend_names():
    with pytest.raises(KeyError, match="grid_encode"):
        ops.use_kernel("grid_encod", "auto", CPU)
    with pytest.raises(ConfigError, match="tritn"):
        ops.use_kernel("composite", "tritn", CPU)


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_torch_backend_never_takes_the_kernel(device):
    for name in ops.OPS:
        assert ops.use_kernel(name, "torch", device, *details(name)) is False
    assert {d["backend"] for d in ops.decisions().values()} == {"torch"}


def test_auto_on_cpu_falls_back_once_and_logs_once(no_interpreter, caplog):
    caplog.set_level(logging.INFO, logger="ngraphics.ops")
    assert not any(ops.use_kernel("composite", "auto", CPU) for _ in range(3))
    reason = "tensors are on cpu (kernels need CUDA, or TRITON_INTERPRET=1)"
    assert ops.decisions() == {"composite": {"backend": "torch", "reason": reason}}
    lines = [r.getMessage() for r in caplog.records if r.name == "ngraphics.ops"]
    assert lines == [f"composite runs on torch: {reason}"]


def test_auto_on_cuda_tensors_takes_the_kernel(no_interpreter):
    for name in ("composite", "march", "grid_encode"):
        assert ops.use_kernel(name, "auto", CUDA, *details(name)) is True
    assert ops.decisions()["march"] == {"backend": "triton", "reason": "CUDA tensors on cuda"}


def test_auto_never_takes_the_interpreter(interpreter):
    assert ops.use_kernel("simplex_encode", "auto", CPU) is False
    assert ops.decisions()["simplex_encode"]["backend"] == "torch"


@pytest.mark.parametrize("name", list(ops.OPS))
def test_forced_triton_on_cpu_is_one_config_error_naming_op_and_reason(no_interpreter, name):
    with pytest.raises(ConfigError) as err:
        ops.use_kernel(name, "triton", CPU, *details(name))
    message = str(err.value)
    assert message.startswith(f"{name}: backend 'triton' cannot run here: tensors are on cpu")
    assert "\n" not in message
    assert name not in ops.decisions()  # a refusal is not a decision


@pytest.mark.parametrize("name", list(ops.OPS))
def test_forced_triton_under_the_interpreter_takes_the_kernel(interpreter, name):
    assert ops.use_kernel(name, "triton", CPU, *details(name)) is True
    assert ops.decisions()[name] == {"backend": "triton", "reason": "backend='triton' was asked for"}


def test_a_grid_the_kernel_lacks_refuses_triton_and_sends_auto_to_torch(no_interpreter):
    spec = grid_spec(2, {"otype": "HashGrid", **BIG_TABLE})
    assert max(spec.hashmap_sizes) == 2**25
    reason = "log2_hashmap_size > 24"
    refusal = re.escape(f"grid_encode: backend 'triton' cannot run here: {reason}")
    with pytest.raises(ConfigError, match=refusal):
        ops.use_kernel("grid_encode", "triton", CUDA, spec)
    with pytest.raises(ConfigError, match=refusal):
        HashGrid(2, BIG_TABLE, backend="triton")  # at construction, before the 2^25-entry table is allocated
    assert ops.use_kernel("grid_encode", "auto", CUDA, spec) is False
    assert ops.decisions()["grid_encode"] == {"backend": "torch", "reason": reason}
    ops.check_supported("grid_encode", "auto", spec)  # auto and torch decide per call: no error
    ops.check_supported("grid_encode", "triton", details("grid_encode")[0])


def test_mlp_call_site_hands_its_call_to_the_kernel_check(interpreter):
    """MLP.forward passes (padded input, weights, spec) to `ngraphics.kernels.mlp.unsupported_reason`:
    float64 (gradcheck) is a call the kernel lacks, so auto runs torch and triton refuses, naming why."""
    x = torch.rand(5, 3, dtype=torch.float64)
    auto = MLP(3, 2, TINY_MLP, seed=1, backend="auto")
    assert auto(x).dtype == torch.float64
    assert ops.decisions()["mlp_forward"]["backend"] == "torch"
    assert "float64" in ops.decisions()["mlp_forward"]["reason"]
    refusal = r"^mlp_forward: backend 'triton' cannot run here: dtype torch\.float64"
    with pytest.raises(ConfigError, match=refusal):
        MLP(3, 2, TINY_MLP, seed=1, backend="triton")(x)
    assert ops.use_kernel("mlp_forward", "triton", CPU, *mlp_details(torch.float32)) is True


def test_every_call_site_asks_the_policy_once_per_op(no_interpreter, caplog):
    """HashGrid, Simplex, MLP, march, composite and the splat rasterizer on CPU with backend auto: each op is decided (torch) and
    logged exactly once however often it runs."""
    caplog.set_level(logging.INFO, logger="ngraphics.ops")
    grid = OccupancyGrid(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), resolution=4)
    camera = Cameras(torch.eye(4)[None], torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]]),
                     torch.tensor([8]), torch.tensor([8]))
    origins = torch.tensor([[0.5, 0.5, -1.0], [-1.0, 0.5, 0.5]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for _ in range(2):
        HashGrid(3, {"n_levels": 2, "log2_hashmap_size": 8})(torch.rand(4, 3))
        Simplex(3, {"n_levels": 2, "log2_hashmap_size": 8})(torch.rand(4, 3))
        MLP(3, 2, TINY_MLP, seed=1)(torch.rand(4, 3))
        s = march(origins, directions, grid, step_size=0.25)
        n = len(s)
        out = composite(torch.ones(n), torch.ones(n, 3), s.t_starts, s.t_ends, s.ray_indices, s.offsets)
        assert n > 0 and out["alpha"].shape == (2,)
        image = rasterization(torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                              torch.full((1, 3), -1.0), torch.tensor([0.9]), torch.ones(1, 3), camera)
        assert image["rgb"].shape == (1, 8, 8, 3)
    assert set(ops.decisions()) == set(ops.OPS)
    assert {d["backend"] for d in ops.decisions().values()} == {"torch"}
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "ngraphics.ops")
    assert [line.split(" ")[0] for line in lines] == sorted(ops.OPS)
    assert all(line.endswith("runs on torch: tensors are on cpu (kernels need CUDA, or TRITON_INTERPRET=1)")
               for line in lines)


def test_cli_prints_the_decisions_on_stderr_and_installs_no_handler(no_interpreter, tmp_path, capsys):
    from ngraphics.cli import main

    logger = logging.getLogger("ngraphics")
    handlers, level = list(logger.handlers), logger.level
    argv = ["profile", "encoding-mlp", "--device", "cpu", "--encodings", "HashGrid", "--dims", "2",
            "--batch-sizes", "16", "--backends", "torch", "--json", str(tmp_path / "rows.json")]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err.count("grid_encode runs on torch: backend='torch' was asked for") == 1
    assert err.count("mlp_forward runs on torch: backend='torch' was asked for") == 1
    assert (logger.handlers, logger.level) == (handlers, level)


# --------------------------------------------------------------------------------------------------------
# Layering: references never import kernels


def kernel_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, name) of every `ngraphics.kernels` import in a module's source, top level or inside functions:
    import statements, absolute or relative (`module`: its dotted name, `pkg.__init__` for a package), and
    importlib.import_module / __import__ calls on a literal or f-string name."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = (package[: len(package) - node.level + 1] if node.level else []) + [node.module or ""]
            base = ".".join(p for p in parts if p)
            names = [base] if _is_kernels(base) else [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and _callee(node) in ("import_module", "__import__"):
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = arg.values[0]  # f"ngraphics.kernels.{name}"
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = [arg.value]
        found += [(node.lineno, name) for name in names if _is_kernels(name)]
    return found


def _is_kernels(name: str) -> bool:
    return name == "ngraphics.kernels" or name.startswith("ngraphics.kernels.")


def _callee(call: ast.Call) -> str | None:
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def test_the_import_finder_sees_every_form():
    source = ("import ngraphics.kernels.grid\n"
              "def f():\n"
              "    from ngraphics.kernels.mlp import mlp_forward_triton\n"
              "    from ngraphics import kernels\n"
              "    from ..kernels import marching\n"
              "    importlib.import_module(f'ngraphics.kernels.{name}')\n"
              "    from ngraphics.encodings import grid\n"
              "    from . import compositing\n")
    lines = sorted({line for line, _ in kernel_imports(source, "ngraphics.rendering.probe")})
    assert lines == [1, 3, 4, 5, 6]


def test_only_ops_and_profiling_import_kernels():
    allowed = {REPO / "ngraphics" / "ops.py", *(REPO / "ngraphics" / "profiling").rglob("*.py")}
    offenders = []
    for path in sorted((REPO / "ngraphics").rglob("*.py")):
        if path not in allowed:
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            offenders += [f"{path.relative_to(REPO)}:{line}: {name}" for line, name in
                          kernel_imports(path.read_text(), module)]
    assert offenders == [], "reach kernels through ngraphics.ops, not by import:\n" + "\n".join(offenders)

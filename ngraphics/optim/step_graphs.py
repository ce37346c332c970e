"""Training steps that never wait for the GPU: replay as a CUDA graph, read counts back late.

A small training step launches hundreds of kernels; queued one by one from Python they cost more host time
than the GPU needs to run them (Instant-NGP-sized NeRF steps: ~15 ms of Python for ~6 ms of GPU work at
2^19 samples). `GraphedStep` records the whole step (forward, backward, optimizer) once per input shape
as a CUDA graph and replays it with one launch. `LaggedReadout` brings small device counts (batch sizes
for the next step) back to the host without a sync.

Requirements on the step function (checked by the capture itself, which fails on a host sync):
    - no host syncs (`.item()`, `nonzero`, printing tensors, data-dependent Python branches);
    - fixed shapes for a given key: the key names everything that sets a shape;
    - state that outlives a step (parameters, optimizer state, loss scale, learning rate) lives in tensors
      allocated before the capture and updated in place (Adam with `capturable=True` and a tensor lr).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Hashable

import torch

StepFn = Callable[[Hashable, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class GraphedStep:
    """Run `step_fn(key, inputs) -> outputs` eagerly or as a replayed CUDA graph, one graph per key.

    The first call with a new key runs eagerly (it compiles kernels and settles allocations), the next
    call with that key captures and replays; later calls replay only. One graph is kept: a new key replaces
    it, so callers should change keys rarely (e.g. batch sizes with hysteresis). The returned tensors are
    the graph's static outputs, overwritten by the next replay: read or copy them before the next call.

    Args:
        step_fn: the step; inputs and outputs are dicts of tensors.
        enabled: False = always eager (CPU, or a user's choice).
    """

    def __init__(self, step_fn: StepFn, enabled: bool):
        self.step_fn, self.enabled = step_fn, enabled
        self.key: Hashable | None = None
        self.warmed: Hashable | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: dict[str, torch.Tensor] = {}
        self.static_outputs: dict[str, torch.Tensor] = {}
        self.captures = 0

    def reset(self) -> None:
        """Drop the graph (e.g. after loading a state dict, which replaces the tensors it recorded)."""
        self.graph, self.key, self.warmed = None, None, None
        self.static_inputs, self.static_outputs = {}, {}

    def __call__(self, key: Hashable, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return self.step_fn(key, inputs)
        if key != self.key:
            if key != self.warmed:
                self.warmed = key
                return self.step_fn(key, inputs)
            if not self._capture(key, inputs):
                return self.step_fn(key, inputs)
        for name, tensor in inputs.items():
            self.static_inputs[name].copy_(tensor)
        self.graph.replay()
        return self.static_outputs

    def _capture(self, key: Hashable, inputs: dict[str, torch.Tensor]) -> bool:
        self.reset()
        torch.cuda.synchronize()
        static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_outputs = self.step_fn(key, static_inputs)
        except RuntimeError as err:  # a step that cannot be captured still trains, only slower
            print(f"CUDA graph capture failed, training continues without graphs: {err}", file=sys.stderr)
            self.enabled = False
            return False
        self.graph, self.key, self.captures = graph, key, self.captures + 1
        self.static_inputs, self.static_outputs = static_inputs, static_outputs
        return True


class LaggedReadout:
    """Small device tensors read back on the host a little late, without ever waiting for the GPU.

    `push` starts an asynchronous copy into pinned memory (a plain copy off CUDA); `poll` returns the newest
    copy that has landed (or None before the first). Batch sizing uses it in place of a host sync per step.
    """

    def __init__(self):
        self.pending: deque = deque()
        self.latest: list[float] | None = None

    def push(self, values: torch.Tensor) -> None:
        """values: (K,) float tensor on any device."""
        if values.device.type != "cuda":
            self.latest = values.tolist()
            return
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((done, host))

    def poll(self) -> list[float] | None:
        while self.pending and self.pending[0][0].query():
            self.latest = self.pending.popleft()[1].tolist()
        return self.latest

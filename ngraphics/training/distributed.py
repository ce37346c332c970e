"""Several processes training one run on torch.distributed (data parallel): the process group, this process's
`Dist` value, and the launcher behind `ngraphics train --gpus N`.

    ngraphics train CONFIG --gpus 2                                  # starts torchrun with 2 processes
    torchrun --standalone --nproc_per_node 2 -m ngraphics.cli train CONFIG      # the same, by hand

torchrun describes each process in its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
`start` joins the default process group from it: gloo for CPU tensors, and NCCL for CUDA tensors when the run
is on CUDA (then rank r uses GPU LOCAL_RANK). The protocol's `Dist` carries rank and world size to the trainer
and the methods, which reduce gradients through `Dist.average_gradients` (nanoGPT's few-line DDP set-up, with
the all-reduce in the method, which owns its optimizer step). Everything runs on torch.distributed's own
transports; nothing here sends bytes itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed

from ngraphics.errors import ConfigError
from ngraphics.methods.base import SINGLE_PROCESS, Dist


def launched_world_size() -> int:
    """Processes torchrun started for this run (WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: torch.device) -> Dist:
    """Join the process group torchrun set up in the environment; `SINGLE_PROCESS` outside torchrun.

    device: the run's device (`trainer.device`, picked): on CUDA this rank takes GPU LOCAL_RANK and the group
        gets NCCL for CUDA tensors beside gloo for CPU ones; elsewhere gloo only.
    ConfigError when CUDA has fewer GPUs than processes on this host."""
    world = launched_world_size()
    if world == 1:
        return SINGLE_PROCESS
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not torch.distributed.is_initialized():
        backend = "gloo"
        if device.type == "cuda":
            check_gpus(local + 1, device)
            torch.cuda.set_device(local)
            backend = "cpu:gloo,cuda:nccl"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    return Dist(rank, world)


def check_gpus(n: int, device: torch.device) -> None:
    """ConfigError unless n processes on this host each have a GPU of their own (when the run is on CUDA)."""
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(f"--gpus {n}: this host has {torch.cuda.device_count()} CUDA devices; use at most "
                          "that many (or trainer.device=cpu for gloo processes)")


def stop(dist: Dist) -> None:
    """Leave the process group (after the last collective of the run)."""
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_device(device: torch.device, dist: Dist) -> torch.device:
    """This rank's device: on CUDA in a multi-process run the GPU `start` chose (cuda:LOCAL_RANK), else
    `device` as given."""
    if dist.world_size > 1 and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _alone(dist: Dist) -> bool:
    """One process, or a `Dist` without a process group (a test of what one rank does by itself)."""
    return dist.world_size == 1 or not torch.distributed.is_initialized()


def from_main(value: Any, dist: Dist) -> Any:
    """The main rank's `value` (any picklable object) on every rank: decisions that must not differ, such as
    a run name made from the clock or the host-measured time of a step."""
    if _alone(dist):
        return value
    if isinstance(value, float):  # a step's time, every step: one small collective, no pickling
        number = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(number, src=0)
        return float(number)
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def total(value: float, dist: Dist) -> float:
    """`value` summed over the ranks (a host number: rays trained since the last log, for the run's rate)."""
    if _alone(dist):
        return value
    number = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(number)
    return float(number)


def barrier(dist: Dist) -> None:
    """Wait until every rank gets here (a host-side all-reduce over gloo: no GPU work is waited for)."""
    if not _alone(dist):
        torch.distributed.all_reduce(torch.zeros(1))


def resumed_seed(base: int, dist: Dist, step: int) -> int:
    """The seed of a rank whose random state the checkpoint does not hold (checkpoints keep the main rank's):
    new to this rank and step: resumed ranks draw neither the main rank's batches nor their own first ones."""
    return dist.seed(base) + 1_000_003 * (step + 1)


def launch(n: int, argv: list[str]) -> int:
    """Run `ngraphics <argv>` as n processes under torchrun on this host (a standalone rendezvous on a free
    port); returns its exit status (130 after a Ctrl-C, which torchrun passes on to the processes: the main
    rank saves a checkpoint). The processes find WORLD_SIZE = n in their environment; `start` joins them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "ngraphics.cli", *argv]
    process, interrupted = subprocess.Popen(command), False
    while True:
        try:
            status = process.wait()
            return 130 if interrupted else status  # torchrun itself exits 1 on a Ctrl-C
        except KeyboardInterrupt:  # torchrun passes the Ctrl-C on: wait while the main rank saves
            interrupted = True


__all__ = ["barrier", "check_gpus", "from_main", "launch", "launched_world_size", "rank_device",
           "resumed_seed", "start", "stop", "total"]

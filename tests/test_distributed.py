"""Several processes on torch.distributed (gloo on the CPU, spawned here as torchrun would start them):

- a NeRF step on 2 ranks, each on its share of the rays, equals one process's step on the whole batch
  (gradients and updated parameters, Adam and tcnn's sparse Adam);
- a checkpoint written by 2 ranks resumes on 1 and on 3 processes with the same weights, and the ranks of a
  run hold the same weights;
- only rank 0 writes files;
- `ngraphics train --gpus 2` starts torchrun and trains.
Each spawned process uses one torch thread and a 16x16-pixel procedural scene.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from ngraphics.cli import main
from ngraphics.data.batches import RaySampler
from ngraphics.fields.sdf_field import SDFFieldConfig
from ngraphics.methods.base import SINGLE_PROCESS, Dist
from ngraphics.methods.nerf import NeRF, round_rays
from ngraphics.methods.neus import Neus, NeusConfig, SurfaceOccupancyConfig
from ngraphics.training import distributed
from ngraphics.training.run_config import find_config, load_run_config, load_split
from ngraphics.training.run_folder import RunFolder
from ngraphics.training.trainer import Trainer
from test_trainer import TINY as TRAINER_TINY

# tests/test_trainer.py's tiny NeRF, on the CPU, with a larger batch (each rank gets a share of it)
TINY = [*TRAINER_TINY, "trainer.save_every_s=0", "trainer.device=cpu", "model.target_samples=65536",
        "model.initial_rays=256"]
# a small NeuS with an occupancy grid from step 2 (tests/test_neus.py's TINY plus the grid)
_FIELD = SDFFieldConfig(encoding={"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4},
                        max_resolution=32, init_radius=0.8, geometry_features=3, color_neurons=16)
NEUS = NeusConfig(field=_FIELD,
                  rays_per_batch=96, n_samples=16, n_importance=8, importance_rounds=2, warmup_steps=2,
                  occupancy=SurfaceOccupancyConfig(resolution=16, warmup_steps=2, march_steps=64))


def _config(extra: list[str] = ()):
    return load_run_config(find_config(None), TINY + list(extra))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, n: int, *args) -> None:
    """Run fn(dist, *args) in n processes that join one gloo process group, as torchrun's would."""
    torch.multiprocessing.spawn(_rank_entry, args=(n, _free_port(), fn, args), nprocs=n, join=True)


def _rank_entry(rank: int, n: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = distributed.start(torch.device("cpu"))
    assert (dist.rank, dist.world_size) == (rank, n)
    try:
        fn(dist, *args)
    finally:
        distributed.stop(dist)


# --- one step on 2 ranks == one step on the whole batch -------------------------------------------------


def _one_step(method: NeRF, batch: dict) -> dict:
    """One train_step (step 1: no occupancy refresh); returns the gradients and the updated parameters."""
    method.train_step({**batch, "step": 1, "progress": 0.1})
    n_rays, n_valid = batch["origins"].shape[0], method.readout.latest[0]
    assert n_valid == n_rays, f"{n_rays - n_valid} rays cut from the sample buffer: the comparison needs all"
    params = [p for group in method.optimizer.param_groups for p in group["params"]]
    return {"grads": [p.grad.clone() for p in params], "params": [p.detach().clone() for p in params]}


def _nerf(optimizer: str, dist: Dist) -> NeRF:
    config = _config([f"model.optimizer={optimizer}", "model.jitter=false"])
    scene = load_split(config.data, "train")
    torch.manual_seed(0)
    return NeRF(config.model, scene, "cpu", dist)


def _step_on_share(dist: Dist, rays_path: Path, split: int, out: Path) -> None:
    batch = torch.load(rays_path)
    part = slice(0, split) if dist.rank == 0 else slice(split, None)  # unequal shares: weights matter
    share = {k: v[part] for k, v in batch.items()}
    steps = {opt: _one_step(_nerf(opt, dist), share) for opt in ("adam", "tcnn")}
    torch.save(steps, out / f"step{dist.rank}.pt")


def test_one_step_on_two_ranks_equals_one_step_on_the_whole_batch(tmp_path):
    config = _config()
    scene = load_split(config.data, "train")
    torch.manual_seed(1)
    batch = RaySampler(scene, torch.device("cpu"), 256).sample()
    batch = {k: batch[k] for k in ("origins", "directions", "rgb", "background")}
    torch.save(batch, tmp_path / "rays.pt")
    _spawn(_step_on_share, 2, tmp_path / "rays.pt", 100, tmp_path)
    ranks = [torch.load(tmp_path / f"step{r}.pt") for r in range(2)]
    wholes = {}
    for optimizer in ("adam", "tcnn"):
        whole = wholes[optimizer] = _one_step(_nerf(optimizer, SINGLE_PROCESS), batch)
        for rank in ranks:
            for key in ("grads", "params"):
                for got, want in zip(rank[optimizer][key], whole[key], strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"{optimizer} {key}")
        # the hash table's gradient is sparse: untouched entries stay exactly 0 on every rank, as on one
        table = whole["grads"][0]
        assert 0 < int((table != 0).sum()) < table.numel()
        assert torch.equal(ranks[1][optimizer]["grads"][0] != 0, table != 0)
    # the two halves alone give other gradients: the test can tell an all-reduce from none
    half = _one_step(_nerf("adam", SINGLE_PROCESS), {k: v[:100] for k, v in batch.items()})
    assert not torch.allclose(half["grads"][1], wholes["adam"]["grads"][1], rtol=1e-3, atol=1e-6)


# --- a run on 2 ranks: files, weights, resume on 1 and 3 -------------------------------------------------


def _weights(method: NeRF) -> dict:
    """What every rank must hold alike: the field's weights and the occupancy grid."""
    state = method.state_dict()
    return {**state["field"], **{f"grid.{k}": v for k, v in state["grid"].items()}}


def _train(dist: Dist, folder: Path, out: Path) -> None:
    assert distributed.total(dist.rank + 1.5, dist) == 1.5 + 2.5  # the host-side sum the logged rate uses
    assert distributed.from_main(f"name {dist.rank}", dist) == "name 0"
    run = RunFolder(folder if dist.is_main else folder.with_name(f"{folder.name}-rank{dist.rank}"))
    trainer = Trainer(_config(), run, dist=dist)
    result = trainer.train()
    assert (result != {}) == dist.is_main
    torch.save({"weights": _weights(trainer.method), "rays": trainer.method.rays_per_batch},
               out / f"trained{dist.rank}.pt")


def _resume(dist: Dist, folder: Path, out: Path) -> None:
    trainer = Trainer(_config(["trainer.steps=8"]), RunFolder(folder), resume=True, dist=dist)
    loaded = {k: v.clone() for k, v in _weights(trainer.method).items()}
    rays = trainer.method.rays_per_batch
    trainer.train()
    torch.save({"loaded": loaded, "trained": _weights(trainer.method), "rays": rays},
               out / f"resumed{dist.rank}.pt")


def test_a_two_rank_run_saves_once_and_resumes_on_one_and_three_processes(tmp_path):
    folder = tmp_path / "run"
    _spawn(_train, 2, folder, tmp_path)
    # only rank 0 wrote: rank 1 was given a folder of its own, which must not exist
    assert not (tmp_path / "run-rank1").exists()
    assert (folder / "config.yaml").is_file() and (folder / "metrics.jsonl").is_file()
    rates = [r["rays_per_s"] for r in RunFolder(folder).read_metrics() if r["split"] == "train"]
    assert len(rates) == 3 and min(rates) > 0
    ranks = [torch.load(tmp_path / f"trained{r}.pt") for r in range(2)]
    trained = ranks[0]["weights"]
    for key, value in trained.items():  # the ranks stayed equal: weights and occupancy grid
        torch.testing.assert_close(ranks[1]["weights"][key], value, rtol=0, atol=0, msg=key)
    state = RunFolder(folder).checkpoints.latest(map_location="cpu")[1]
    assert state["step"] == 6
    saved = {**state["method"]["field"], **{f"grid.{k}": v for k, v in state["method"]["grid"].items()}}
    for key, value in trained.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)
    assert state["method"]["rays_per_batch"] == 2 * ranks[0]["rays"]  # the global batch, not a rank's share

    # on one process: the same weights, the whole batch, and it trains on
    one = tmp_path / "one"
    shutil.copytree(folder, one)
    trainer = Trainer(_config(["trainer.steps=8"]), RunFolder(one), resume=True)
    for key, value in _weights(trainer.method).items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    assert trainer.method.rays_per_batch == state["method"]["rays_per_batch"]
    trainer.train()
    assert trainer.step == 8

    # on three processes: every rank loads the same weights and they stay equal
    three = tmp_path / "three"
    shutil.copytree(folder, three)
    _spawn(_resume, 3, three, tmp_path)
    resumed = [torch.load(tmp_path / f"resumed{r}.pt") for r in range(3)]
    for rank in resumed:
        assert rank["rays"] == round_rays(state["method"]["rays_per_batch"] / 3)
        for key, value in trained.items():
            torch.testing.assert_close(rank["loaded"][key], value, rtol=0, atol=0, msg=key)
            torch.testing.assert_close(rank["trained"][key], resumed[0]["trained"][key], rtol=0, atol=0,
                                       msg=key)
    assert RunFolder(three).checkpoints.latest(map_location="cpu")[1]["step"] == 8


def test_train_gpus_two_starts_torchrun(tmp_path, capsys):
    args = ["train", "--gpus", "2", "--runs-dir", str(tmp_path), "--name", "two", "--quiet"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    run = RunFolder(tmp_path / "two")
    assert run.checkpoints.latest(map_location="cpu")[1]["step"] == 6
    assert [r["step"] for r in run.read_metrics() if r["split"] == "train"] == [2, 4, 6]
    assert main(["train", "--resume", str(run.path), "--set", "trainer.steps=8", "--quiet"]) == 0  # on one
    assert run.checkpoints.latest(map_location="cpu")[1]["step"] == 8


def test_ctrl_c_on_train_gpus_two_saves_a_checkpoint(tmp_path):
    """Ctrl-C in a terminal reaches every process of the foreground group: the launcher waits, the main rank
    saves a checkpoint, and `ngraphics train` exits with 130 as on one process."""
    args = [sys.executable, "-m", "ngraphics.cli", "train", "--gpus", "2", "--runs-dir", str(tmp_path),
            "--name", "c", "--quiet"]
    for item in [*TINY, "trainer.steps=100000", "trainer.save_every=0"]:
        args += ["--set", item]
    process = subprocess.Popen(args, start_new_session=True, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "c" / "metrics.jsonl"

    def records() -> int:
        return metrics.read_text().count("\n") if metrics.exists() else 0

    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline and records() < 2:  # training: steps logged
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted at step" in err
    assert RunFolder(tmp_path / "c").checkpoints.latest(map_location="cpu")[1]["step"] >= 2


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_train_gpus_two_on_two_gpus_with_nccl(tmp_path):
    """The CUDA path: NCCL for the gradients beside gloo for the host's numbers, a GPU per process, then the
    checkpoint resumes on one GPU."""
    args = ["train", "--gpus", "2", "--runs-dir", str(tmp_path), "--name", "two", "--quiet"]
    for item in [*TINY, "trainer.device=cuda"]:
        args += ["--set", item]
    assert main(args) == 0
    run = RunFolder(tmp_path / "two")
    assert run.checkpoints.latest(map_location="cpu")[1]["step"] == 6
    assert main(["train", "--resume", str(run.path), "--set", "trainer.steps=8", "--quiet"]) == 0
    assert run.checkpoints.latest(map_location="cpu")[1]["step"] == 8


def test_gpus_must_be_positive_and_match_torchrun(monkeypatch, capsys):
    assert main(["train", "--gpus", "0"]) == 2
    assert "--gpus: expected a positive number of processes, got 0" in capsys.readouterr().err
    assert main(["train", "--method", "splat", "--gpus", "2"]) == 2
    message = "--gpus 2: method 'splat' trains on one process so far (several: nerf, neus)"
    assert message in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["train", "--gpus", "2"]) == 2
    assert "--gpus 2 under torchrun with 3 processes" in capsys.readouterr().err


# --- NeuS: one step on 2 ranks == one step on the whole batch -------------------------------------------


class _SteadyNeus(Neus):
    """Neus with its training samples at fixed places (no jitter), so that a batch split across ranks draws
    the same samples as the whole batch on one process."""

    def sample_rays(self, field, origins, directions, jitter, capacity=None):
        return super().sample_rays(field, origins, directions, False, capacity)


def _neus_step(dist: Dist, batch: dict, step: int) -> dict:
    torch.manual_seed(0)
    method = _SteadyNeus(NEUS, load_split(_config().data, "train"), "cpu", dist)
    method.train_step({**batch, "step": step, "progress": 0.1})
    assert method.grid_ready == (step >= 2)
    if method.grid_ready:  # every ray fits the sample buffer, on each rank as on one process
        assert method.readout.latest[1] == batch["origins"].shape[0]
    params = [p for group in method.optimizer.param_groups for p in group["params"]]
    return {"grads": [p.grad.clone() for p in params], "params": [p.detach().clone() for p in params]}


def _neus_on_share(dist: Dist, rays_path: Path, split: int, out: Path) -> None:
    batch = torch.load(rays_path)
    part = slice(0, split) if dist.rank == 0 else slice(split, None)
    share = {k: v[part] for k, v in batch.items()}
    torch.save({step: _neus_step(dist, share, step) for step in (1, 2)}, out / f"neus{dist.rank}.pt")


def test_one_neus_step_on_two_ranks_equals_one_step_on_the_whole_batch(tmp_path):
    scene = load_split(_config().data, "train")
    torch.manual_seed(1)
    batch = RaySampler(scene, torch.device("cpu"), 96).sample()
    torch.save(batch, tmp_path / "rays.pt")
    _spawn(_neus_on_share, 2, tmp_path / "rays.pt", 40, tmp_path)
    ranks = [torch.load(tmp_path / f"neus{r}.pt") for r in range(2)]
    for step in (1, 2):  # stratified samples (step 1), then through the occupancy grid (made at step 2)
        whole = _neus_step(SINGLE_PROCESS, batch, step)
        for rank in ranks:
            for key in ("grads", "params"):
                for got, want in zip(rank[step][key], whole[key], strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"step {step} {key}")

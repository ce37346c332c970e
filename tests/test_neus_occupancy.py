"""NeuS's occupancy grid derived from the SDF: the cells it marks on an analytic sphere, renders through it
against renders without it, and training with it."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
from test_neus import TINY

from ngraphics.data import load_dataset
from ngraphics.methods.neus import Neus, SurfaceOccupancyConfig
from ngraphics.rendering.occupancy import OccupancyGrid

AABB = torch.tensor([[-1.0] * 3, [1.0] * 3])


class SphereSDF:
    """An exact sphere SDF with the SDFField calls NeuS's sampling and shading make; colour = the normal."""

    def __init__(self, centre=(0.03, -0.02, 0.01), radius=0.5):
        self.centre, self.radius = torch.tensor(centre), radius

    def sdf(self, x):
        return (x - self.centre).norm(dim=-1) - self.radius

    def sdf_with_gradient(self, x, create_graph):
        v = x - self.centre
        n = v.norm(dim=-1, keepdim=True)
        return n[:, 0] - self.radius, v / n, torch.zeros(x.shape[0], 3)

    def color(self, x, normals, directions, feature):
        return 0.5 + 0.5 * normals


def test_grid_marks_exactly_the_shell_of_a_sphere():
    """Occupied = |SDF(centre)| <= half diagonal + band (a float64 oracle over every cell), which covers every
    cell the sphere passes through (an exact cube-sphere test) and hardly more."""
    res, band = 32, 0.02
    sphere = SphereSDF()
    grid = OccupancyGrid(AABB, res, 1)
    grid.update_from_sdf(sphere.sdf, band, chunk=1000)  # several chunks
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res, dtype=torch.float64)] * 3, indexing="ij"), -1)
    h = 1.0 / res  # half a cell edge of the [-1, 1] box
    centres = -1.0 + (2.0 * ijk + 1.0) * h
    o = sphere.centre.double()
    expected = ((centres - o).norm(dim=-1) - sphere.radius).abs() <= math.sqrt(3.0) * h + band
    assert torch.equal(grid.binary[0], expected.reshape(-1))
    nearest = (centres - o).abs().sub(h).clamp_min(0.0).norm(dim=-1)  # closest point of the cell
    farthest = ((centres - o).abs() + h).norm(dim=-1)
    crossed = (nearest <= sphere.radius) & (farthest >= sphere.radius)
    assert bool(grid.binary[0][crossed.reshape(-1)].all())
    assert int(grid.binary.sum()) < 2.5 * int(crossed.sum())  # a shell a few cells thick, not a ball
    on = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert bool(grid.query(sphere.centre + sphere.radius * on).all())
    assert not bool(grid.query(sphere.centre[None]).any())  # the sphere's inside is empty space
    with pytest.raises(ValueError, match="band"):
        grid.update_from_sdf(sphere.sdf, -1.0)


@pytest.fixture(scope="module")
def scene():
    return load_dataset(None, "train", resolution=16, n_views=4)


def _grid_method(scene, **occupancy):
    config = dataclasses.replace(TINY, occupancy=SurfaceOccupancyConfig(**{"resolution": 32, **occupancy}))
    torch.manual_seed(0)
    return Neus(config, scene, "cpu")


def test_renders_through_the_grid_match_renders_without_it(scene):
    """The same fixed steps through the shell cells only, through every cell, and NeuS's stratified + importance
    sections: the same colours, opacities and depths, from a fraction of the samples."""
    method = _grid_method(scene, march_steps=512)
    method.anneal = 1.0
    sphere = SphereSDF()
    variance = torch.tensor(math.log(400.0) / 10)  # inv_s = 400
    origins, directions = scene.cameras.image_rays(0)
    method.update_grid(sphere, variance)
    outs, counts = [], []
    for occupied in ("shell", "all"):
        if occupied == "all":
            method.grid.binary.fill_(True)
        samples, live = method.sample_rays(sphere, origins, directions, jitter=False)
        counts.append(len(samples))
        outs.append(method.shade(sphere, variance, origins, directions, samples, live, torch.zeros(3), False))
    method.grid_ready = False  # the stratified + importance path
    samples, live = method.sample_rays(sphere, origins, directions, jitter=False)
    outs.append(method.shade(sphere, variance, origins, directions, samples, live, torch.zeros(3), False))
    shell, full, importance = outs
    hit = full["alpha"] > 0.5
    assert 0.1 < float(hit.float().mean()) < 0.9
    assert counts[0] < 0.2 * counts[1]
    # NeuS's opacity has a floor of ~1e-5 per section (its epsilon), so the up to 512 dropped empty-space sections of a
    # ray carried up to ~5e-3 of opacity in the full render
    for key in ("rgb", "alpha", "normal"):
        torch.testing.assert_close(shell[key], full[key], atol=512 * 1.2e-5, rtol=0)
        torch.testing.assert_close(shell[key], importance[key], atol=0.05, rtol=0)
    torch.testing.assert_close(shell["depth"][hit], full["depth"][hit], atol=0.01, rtol=0)  # the same floor
    torch.testing.assert_close(shell["depth"][hit], importance["depth"][hit], atol=0.01, rtol=0)


def test_training_with_the_grid(scene):
    method = _grid_method(scene, warmup_steps=2, update_every=3, samples_per_ray=64)
    sampler = method.sampler(scene, torch.device("cpu"))
    outs = []
    for step in range(8):
        batch = sampler.sample()
        batch.update(step=step, progress=step / 8)
        outs.append(method.train_step(batch))
    assert method.grid_ready and "samples_per_ray" not in outs[1] and "samples_per_ray" in outs[2]
    assert all(math.isfinite(float(o["loss"])) for o in outs)
    assert 0.0 < method.grid.occupied_fraction() < 0.8  # empty space is skipped
    assert float(outs[-1]["samples_per_ray"]) > 0 and 0 < float(outs[-1]["rays_fit"]) <= 1
    # the ray count follows the samples per ray: about a full buffer of rays_per_batch x samples_per_ray
    per_ray = float(outs[-1]["samples_per_ray"])  # on a CPU the counts are read back at once
    ideal = min(max(64 * 64 / per_ray, 64 / 8, 16), 4 * 64)
    assert sampler.batch_size != 64 and abs(sampler.batch_size - ideal) <= max(0.1 * ideal, 16)
    other = _grid_method(scene)
    other.load_state_dict(method.state_dict())
    assert other.grid_ready and torch.equal(other.grid.binary, method.grid.binary)
    out = method.render(scene.cameras[:1], torch.zeros(3))
    torch.testing.assert_close(other.render(scene.cameras[:1], torch.zeros(3))["rgb"], out["rgb"])
    from ngraphics.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint grid: missing"):
        other.load_state_dict({k: v for k, v in method.state_dict().items() if k != "grid"})
    with pytest.raises(ConfigError, match="occupancy.resolution"):
        SurfaceOccupancyConfig(resolution=7).validate("model.occupancy")


@pytest.mark.gpu
def test_cuda_steps_with_the_grid_and_the_background_field():
    """configs/neus/dtu.yaml's path on the device (grid marching through the Triton kernels, NeRF++ background):
    steps learn, rays fit the buffers once the shell is thin, renders come back on the device."""
    from ngraphics.fields.background_field import BackgroundFieldConfig

    scene = load_dataset(None, "train", resolution=32, n_views=8)
    config = dataclasses.replace(TINY, rays_per_batch=1024, background="nerf++",
                                 background_field=BackgroundFieldConfig(neurons=16, features=3, n_samples=8),
                                 occupancy=SurfaceOccupancyConfig(resolution=64, warmup_steps=10, update_every=4,
                                                                  march_steps=512, samples_per_ray=96))
    torch.manual_seed(0)
    method = Neus(config, scene, "cuda")
    sampler = method.sampler(scene, torch.device("cuda"))
    outs = []
    for step in range(60):
        batch = sampler.sample()
        batch.update(step=step, progress=step / 60)
        outs.append({k: float(v) for k, v in method.train_step(batch).items()})
    assert all(math.isfinite(o["loss"]) for o in outs) and outs[-1]["loss"] < outs[0]["loss"]
    assert method.grid_ready and outs[-1]["rays_fit"] > 0.5 and 0 < method.grid.occupied_fraction() < 0.5
    out = method.render(scene.cameras[:1])
    assert out["rgb"].device.type == "cuda" and bool(torch.isfinite(out["rgb"]).all())


def interpreted_checks() -> None:
    """Run in a child process with TRITON_INTERPRET=1 (`run_in_interpreter`): NeuS's grid marching through the
    Triton marcher (the CUDA path) gives the torch reference's sections, with and without fixed buffers, and a
    few training steps on it learn. (backend="triton" is forced: without the interpreter it is a ConfigError.)"""
    torch.manual_seed(0)
    scene = load_dataset(None, "train", resolution=12, n_views=2)
    config = dataclasses.replace(TINY, field=dataclasses.replace(TINY.field, backend="torch"),
                                 occupancy=SurfaceOccupancyConfig(resolution=16, march_steps=128, samples_per_ray=32))
    method = Neus(config, scene, "cpu")
    method.update_grid(SphereSDF(), torch.tensor(math.log(100.0) / 10))
    from ngraphics.rendering.marching import march, march_torch

    origins, directions = scene.cameras.image_rays(0)
    for capacity in (None, 144 * 32, 500):
        args = {"step_size": method.step_size, "near": method.near, "capacity": capacity, "max_steps": 130}
        fast = march(origins, directions, method.grid, backend="triton", **args)
        ref = march_torch(origins, directions, method.grid, **args)
        for key in ("ray_indices", "t_starts", "t_ends", "offsets"):
            torch.testing.assert_close(getattr(fast, key), getattr(ref, key))
    sampler = method.sampler(scene, torch.device("cpu"))
    losses = []
    for step in range(4):
        batch = sampler.sample()
        batch.update(step=step, progress=step / 4)
        losses.append(float(method.train_step(batch)["loss"]))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_grid_marching_under_the_triton_interpreter():
    sys.path.insert(0, str(Path(__file__).parent / "kernels"))
    from harness import run_in_interpreter

    run_in_interpreter(__file__)


if __name__ == "__main__":
    globals()[sys.argv[1]]()

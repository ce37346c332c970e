"""The `splat` method: SSIM loss against the metric, initialisation, schedules, a train step with densification,
rendering, checkpoints that size Gaussians from the checkpoint, exports and --init, and the CPU training
target on the procedural scene (threshold: see PROCEDURAL_* below)."""

import dataclasses
import math

import pytest
import torch

from ngraphics.data.load import load_dataset
from ngraphics.errors import ConfigError
from ngraphics.io.splat_files import read_splats
from ngraphics.methods import METHODS
from ngraphics.methods.splat import Splat, SplatConfig, knn_scale, ssim_loss
from ngraphics.metrics.image import ssim
from ngraphics.splatting.strategy import DefaultStrategy, MCMCStrategy

# `ngraphics train --method splat` (configs/splat/default.yaml, 400 steps, seed 0) on the procedural scene, 2-core
# CPU, 2026-12-02: 27.37 dB test PSNR, SSIM 0.955 (twice, identical: the CPU path is deterministic; 70 s
# wall in a script on a quiet machine, 500 s of training while it was shared by four jobs). The run of 10x the steps that
# should set the threshold (4000 steps, sh_degree_interval 2000, refine 500..3200 every 100) was stopped at
# step ~1150 (train-view PSNR 28-31 dB, 3747 Gaussians) when the shared machine slowed it to < 1 view/s, so
# the threshold is the 400-step result less 1.4 dB until that run is done.
PROCEDURAL_PSNR_400 = 27.37
PROCEDURAL_THRESHOLD = 26.0


@pytest.fixture(scope="module")
def scene():
    train = load_dataset(None, "train")
    train.background = "random"
    return train


def small(**kw):
    base = dict(sh_degree=1, sh_degree_interval=2, init_points=300, n_features=2,
                densify=DefaultStrategy(refine_start=1, refine_every=2, refine_stop=100, reset_every=1000))
    base.update(kw)
    return SplatConfig(**base)


def test_registered():
    assert METHODS["splat"] is Splat and Splat.exports == ("ply", "splat", "spz")


def test_ssim_loss_is_the_metric_and_differentiable():
    a, b = torch.rand(23, 19, 3, dtype=torch.float64), torch.rand(23, 19, 3, dtype=torch.float64)
    assert abs(float(1 - ssim_loss(a, b)) - ssim(a, b)) < 1e-10
    assert float(ssim_loss(a, a)) == pytest.approx(0.0, abs=1e-12)
    x = torch.rand(12, 13, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ssim_loss(x, b[:12, :13, :1]), (x,))


def test_knn_scale_against_brute_force():
    p = torch.randn(50, 3)
    d = torch.cdist(p.double(), p.double()) + torch.eye(50, dtype=torch.float64) * 1e9
    expected = d.sort(1).values[:, :3].mean(1)
    assert torch.allclose(knn_scale(p, chunk=7).double(), expected, rtol=1e-5)


def test_init_from_scene_points_and_from_box(scene):
    m = Splat(small(), scene)
    assert len(m.params["means"]) == 300
    lo, hi = scene.aabb
    assert ((m.params["means"] >= lo) & (m.params["means"] <= hi)).all()
    pts = torch.randn(40, 3) * 0.3
    seeded = dataclasses.replace(scene, points=pts, point_colors=torch.full((40, 3), 0.75))
    m = Splat(small(), seeded)
    assert torch.equal(m.params["means"].detach(), pts)
    assert torch.allclose(0.5 + 0.28209479 * m.params["sh0"][:, 0], torch.full((40, 3), 0.75))
    assert m.params["shN"].shape == (40, 3, 3) and m.params["features"].shape == (40, 2)
    assert torch.allclose(torch.sigmoid(m.params["opacities"]), torch.full((40,), 0.1))


def test_schedules(scene):
    m = Splat(small(sh_degree=3, sh_degree_interval=1000), scene)
    assert [m.sh_degree_at(s) for s in (0, 999, 1000, 2500, 3000, 99999)] == [0, 0, 1, 2, 3, 3]
    c = m.config
    assert m.means_lr_at(0.0) == pytest.approx(c.means_lr * m.scene_scale)
    assert m.means_lr_at(1.0) == pytest.approx(c.means_lr_final * m.scene_scale)
    assert m.means_lr_at(0.5) == pytest.approx(math.sqrt(c.means_lr * c.means_lr_final) * m.scene_scale)
    lrs = {g["name"]: g["lr"] for g in m.optimizer.param_groups}
    assert lrs["opacities"] == 0.05 and lrs["shN"] == pytest.approx(lrs["sh0"] / 20)


def test_train_steps_densify_and_render(scene):
    m = Splat(small(init_points=200), scene)
    sampler = m.sampler(scene, "cpu")
    losses = []
    for step in range(6):
        batch = {**sampler.sample(), "step": step, "progress": step / 6}
        out = m.train_step(batch)
        losses.append(float(out["loss"]))
        assert all(p.grad is None for p in m.params.values())
        assert all(m.optimizer.param_groups[i]["params"][0] is m.params[g["name"]]
                   for i, g in enumerate(m.optimizer.param_groups))
    assert all(math.isfinite(v) for v in losses)
    assert len(m.params["means"]) != 200  # steps 2 and 4 refined (cloned/split/pruned)
    cams = scene.cameras[:2]
    r = m.render(cams, torch.zeros(3))
    H, W = int(cams.height[0]), int(cams.width[0])
    assert r["rgb"].shape == (2, H, W, 3) and r["alpha"].shape == (2, H, W, 1) and r["features"].shape == (2, H, W, 2)
    assert torch.isfinite(r["rgb"]).all() and float(r["alpha"].max()) > 0.1


def test_mcmc_steps_keep_the_budget(scene):
    cfg = small(strategy="mcmc", init_points=100, opacity_reg=0.01, scale_reg=0.01,
                mcmc=MCMCStrategy(cap_max=110, refine_start=0, refine_every=1))
    m = Splat(cfg, scene)
    sampler = m.sampler(scene, "cpu")
    for step in range(1, 5):
        out = m.train_step({**sampler.sample(), "step": step, "progress": 0.1})
    assert len(m.params["means"]) == 110 and out["gaussians"] == 110


def test_checkpoint_sizes_gaussians_from_the_state(scene):
    m = Splat(small(init_points=120), scene)
    sampler = m.sampler(scene, "cpu")
    for step in range(3):
        m.train_step({**sampler.sample(), "step": step, "progress": 0.0})
    state = m.state_dict()
    n = len(m.params["means"])
    fresh = Splat(small(init_points=50), scene)
    fresh.load_state_dict(state)
    assert len(fresh.params["means"]) == n
    for k, p in m.params.items():
        assert torch.equal(fresh.params[k], p)
        assert torch.equal(fresh.optimizer.state[fresh.params[k]]["exp_avg"], m.optimizer.state[p]["exp_avg"])
    fresh.train_step({**sampler.sample(), "step": 3, "progress": 0.0})  # trains on
    with pytest.raises(ConfigError, match="'shN'.*sh_degree"):
        Splat(small(sh_degree=2), scene).load_state_dict(state)


def test_export_and_init_from_file(scene, tmp_path):
    m = Splat(small(init_points=80), scene)
    for kind in ("ply", "splat", "spz"):
        path = m.export(kind, tmp_path / f"s.{kind}")
        assert len(read_splats(path)) == 80
    with pytest.raises(ConfigError, match="exports ply, splat, spz"):
        m.export("mesh", tmp_path / "m.obj")
    m.params["means"].data[3] = float("nan")
    m.export("ply", tmp_path / "n.ply")
    assert m.last_export_dropped == 1
    fine = Splat(small(init=str(tmp_path / "s.ply"), sh_degree=2), scene)
    assert len(fine.params["means"]) == 80 and fine.params["shN"].shape == (80, 8, 3)
    assert torch.equal(fine.params["sh0"], m.params["sh0"].detach())
    assert torch.count_nonzero(fine.params["shN"][:, 3:]) == 0  # degree 1 file, degree 2 config: padded


@pytest.mark.slow
def test_cli_trains_procedural_scene_to_threshold(tmp_path):
    """`ngraphics train --method splat` in under 3 minutes on 2 cores, then `export splat`."""
    import time

    from ngraphics.cli import main

    start = time.time()
    assert main(["train", "--method", "splat", "--runs-dir", str(tmp_path), "--name", "r", "--quiet",
                 "--set", "trainer.render_final=false"]) == 0
    import json
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("split") == "test" and "psnr" in r][-1]
    assert final["time"] < 180, f"training took {final['time']:.0f} s (wall {time.time() - start:.0f} s)"
    assert final["psnr"] >= PROCEDURAL_THRESHOLD, final
    from ngraphics.cli import main
    assert main(["export", "splat", str(tmp_path / "r"), "--format", "spz"]) == 0
    assert len(read_splats(tmp_path / "r" / "export" / "splats.spz")) > 100


@pytest.mark.gpu
def test_cuda_train_steps_triton_matches_torch(scene):
    """On CUDA, `auto` takes the Triton kernels: the first step's loss and gradients match the torch path."""
    results = {}
    for backend in ("auto", "torch"):
        torch.manual_seed(0)
        m = Splat(small(init_points=500, backend=backend, n_features=0), scene, device="cuda")
        sampler = m.sampler(scene, "cuda")
        sampler.order = [0, 1, 2]
        out = m.train_step({**sampler.sample(), "step": 0, "progress": 0.0})
        results[backend] = (float(out["loss"]), m.optimizer.state[m.params["means"]]["exp_avg"].clone())
        for step in range(1, 5):
            out = m.train_step({**sampler.sample(), "step": step, "progress": step / 5})
            assert math.isfinite(float(out["loss"]))
    assert results["auto"][0] == pytest.approx(results["torch"][0], rel=1e-4)
    a, b = results["auto"][1], results["torch"][1]
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))

"""NeRF: `ngraphics train` on the procedural scene reaches a measured PSNR on CPU; method and field details."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.cli import main
from ngraphics.config import from_dict
from ngraphics.data.scene import SceneData
from ngraphics.fields.nerf_field import NerfFieldConfig, merged
from ngraphics.methods.nerf import NeRF, NeRFConfig

# Held-out PSNR that `ngraphics train` (configs/nerf/default.yaml, 600 steps) must reach on the 8 test views.
# Measured once (2026-11-24, 2-core CPU, torch 2.13, one thread) after the fixed sample buffers and the
# weight average landed: the same config with 10x the steps,
#   OMP_NUM_THREADS=1 ngraphics train --set trainer.steps=6000
# reached 30.23 dB; 30.23 - 1.5 = 28.73. The 600-step default reached 29.76 dB (2 threads) in about 65 s of
# training on an idle machine (longer under load).
PSNR_THRESHOLD = 28.73


def test_default_train_reaches_the_measured_psnr_on_cpu(tmp_path, capsys):
    # CI runs `pytest -n 2` on 2 cores: a second intra-op thread per worker would oversubscribe the cores,
    # which slows torch's CPU kernels several-fold. One thread here; restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        assert main(["train", "--runs-dir", str(tmp_path), "--name", "default", "--quiet"]) == 0
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert f"renders: {tmp_path / 'default' / 'renders'}/" in err
    records = [json.loads(line) for line in (tmp_path / "default" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["split"] == "test"][-1]
    assert final["step"] == 600 and final["n_views"] == 8
    assert final["psnr"] >= PSNR_THRESHOLD, (final, f"{seconds:.0f} s")


def _scene(aabb_scale: float = 1.0, size: int = 12) -> SceneData:
    c2w = torch.eye(4)[None].repeat(2, 1, 1)
    c2w[:, 2, 3] = -4.0  # looking down +z at the origin
    c2w[1, 0, 3] = 0.3
    K = torch.tensor([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]]).expand(2, 3, 3).clone()
    cams = Cameras(c2w, K, torch.full((2,), size), torch.full((2,), size))
    half = 0.5 * aabb_scale
    return SceneData(cams, [torch.rand(size, size, 4) for _ in range(2)], ["a", "b"],
                     torch.tensor([[0.5 - half] * 3, [0.5 + half] * 3]), near=0.1, meta={"aabb_scale": aabb_scale})


SMALL = {"field": {"encoding": {"n_levels": 2, "log2_hashmap_size": 8}, "max_resolution": 16},
         "occupancy": {"resolution": 8}, "render_steps": 32, "render_chunk": 50}


def test_aabb_scale_gives_cascades_cone_steps_and_a_bigger_field_box():
    config = from_dict(NeRFConfig, SMALL)
    bounded = NeRF(config, _scene(1.0))
    assert bounded.grid.levels == 1 and bounded.cone_angle == 0.0 and bounded.alpha_thre == 0.0
    fox = NeRF(config, _scene(4.0))
    assert fox.grid.levels == 3 and fox.cone_angle == 1 / 256 and fox.alpha_thre == 0.01
    torch.testing.assert_close(fox.grid.aabb, torch.tensor([[0.0] * 3, [1.0] * 3]))  # level 0: the unit box
    torch.testing.assert_close(fox.field.aabb, torch.tensor([[-1.5] * 3, [2.5] * 3]))  # the aabb_scale cube
    assert abs(fox.step_size - 3**0.5 / 32) < 1e-9


def test_render_shapes_and_state_round_trip():
    config = from_dict(NeRFConfig, SMALL)
    scene = _scene()
    a = NeRF(config, scene)
    batch = {"origins": torch.zeros(16, 3) + torch.tensor([0.5, 0.5, -4.0]), "step": 0, "progress": 0.0,
             "directions": torch.nn.functional.normalize(torch.randn(16, 3) * 0.05 + torch.tensor([0, 0, 1.0]), dim=-1),
             "rgb": torch.rand(16, 3), "background": torch.rand(16, 3)}
    losses = a.train_step(batch)
    assert set(losses) >= {"loss", "psnr"} and torch.isfinite(losses["loss"])
    out = a.render(scene.cameras[0:2], background=torch.tensor([1.0, 1.0, 1.0]))
    assert out["rgb"].shape == (2, 12, 12, 3) and out["depth"].shape == (2, 12, 12, 1) and out["alpha"].shape == (2, 12, 12, 1)
    assert (out["rgb"] >= 0).all() and (out["rgb"] <= 1).all()
    b = NeRF(config, scene)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.render(scene.cameras[0])["rgb"], a.render(scene.cameras[0])["rgb"])


def test_field_dicts_merge_over_defaults_unless_the_otype_changes():
    assert merged({"otype": "HashGrid", "n_levels": 16}, {"n_levels": 4}) == {"otype": "HashGrid", "n_levels": 4}
    assert merged({"otype": "HashGrid", "n_levels": 16}, {"otype": "DenseGrid"}) == {"otype": "DenseGrid"}
    config = from_dict(NerfFieldConfig, {"encoding": {"otype": "DenseGrid", "n_levels": 2}})
    assert config.encoding["otype"] == "DenseGrid"


def _batch(R: int, device="cpu", step: int = 1) -> dict:
    gen = torch.Generator().manual_seed(step)
    d = torch.nn.functional.normalize(torch.randn(R, 3, generator=gen) * 0.05 + torch.tensor([0, 0, 1.0]), dim=-1)
    batch = {"origins": torch.zeros(R, 3) + torch.tensor([0.5, 0.5, -4.0]), "directions": d,
             "rgb": torch.rand(R, 3, generator=gen), "background": torch.rand(R, 3, generator=gen)}
    return {**{k: v.to(device) for k, v in batch.items()}, "step": step, "progress": 0.0}


def test_train_step_fills_a_fixed_buffer_and_sizes_the_next_batch():
    # 64 rays of ~30 samples each into a 500-sample buffer: only the first rays fit; the rest are cut whole
    config = from_dict(NeRFConfig, {**SMALL, "target_samples": 500, "early_stop_eps": 0.0})
    nerf = NeRF(config, _scene())
    batch = _batch(64)
    samples = nerf.march(nerf.field, batch["origins"], batch["directions"], jitter=False, capacity=500,
                         candidate_capacity=nerf.candidate_buffer(64))
    valid = int(samples.n_valid_rays)
    per_ray = int(samples.n_samples) / valid
    assert 10 < per_ray < 40 and 0 < valid < 64 and int(samples.n_samples) <= 500 < int(samples.n_samples) + per_ray * 2
    # the next batch is sized from the measured samples per ray: target / per-ray in multiples of 128
    config = from_dict(NeRFConfig, {**SMALL, "target_samples": 20_000, "early_stop_eps": 0.0})
    nerf = NeRF(config, _scene())
    losses = nerf.train_step(batch)
    per_ray = float(losses["samples_per_ray"])
    assert 10 < per_ray < 40 and nerf.rays_per_batch == int(20_000 / per_ray) // 128 * 128
    # candidates per ray measured too (no early stop: all candidates are samples); buffer 1.1-1.6x of them
    assert abs(nerf.candidates_per_ray - per_ray) < 1e-6
    need = nerf.rays_per_batch * per_ray
    assert 1.1 * need <= nerf.candidates <= 1.6 * need + (1 << 16)
    # hysteresis: a batch of the same kind leaves both sizes alone
    before = (nerf.rays_per_batch, nerf.candidates)
    nerf.train_step(_batch(nerf.rays_per_batch, step=2))
    assert (nerf.rays_per_batch, nerf.candidates) == before


def test_rays_cut_from_the_buffer_do_not_reach_the_loss():
    # the same step with cut rays' targets changed: identical loss and parameters after the step
    config = from_dict(NeRFConfig, {**SMALL, "target_samples": 300, "early_stop_eps": 0.0})
    grads = []
    for garbage in (False, True):
        nerf = NeRF(config, _scene())
        batch = _batch(48)
        if garbage:
            batch["rgb"][24:] = 1e3  # far past what fits in 300 samples (~30 per ray)
        torch.manual_seed(0)  # the same jitter
        losses = nerf.train_step(batch)
        grads.append((float(losses["loss"]), nerf.field.encoding.params.detach().clone()))
    assert grads[0][0] > 0 and grads[0][0] == grads[1][0] and torch.equal(grads[0][1], grads[1][1])
    assert not torch.equal(grads[0][1], NeRF(config, _scene()).field.encoding.params.detach())  # it trained


def test_tcnn_optimizer_leaves_untouched_table_entries_alone():
    # instant-ngp's Adam (optimizer: tcnn) moves a hash-table entry only in steps that give it a gradient;
    # torch's Adam keeps moving entries on momentum after their rays are gone
    moved_without_gradient = {}
    for name in ("tcnn", "adam"):
        torch.manual_seed(0)
        nerf = NeRF(from_dict(NeRFConfig, {**SMALL, "optimizer": name, "target_samples": 2000}), _scene())
        table = nerf.field.encoding.params
        nerf.train_step(_batch(64, step=1))
        narrow = _batch(8, step=2)  # a few rays: most entries the first step touched get no gradient now
        before = table.detach().clone()
        losses = nerf.train_step(narrow)
        assert torch.isfinite(losses["loss"])
        gradient = table.grad != 0
        changed = table.detach() != before
        assert gradient.any() and (changed[gradient]).float().mean() > 0.99  # entries with a gradient move
        moved_without_gradient[name] = int((changed & ~gradient).sum()) / int(gradient.sum())
    assert moved_without_gradient["tcnn"] == 0 and moved_without_gradient["adam"] > 0.05, moved_without_gradient
    # the per-element moments and step counts survive a checkpoint
    a = NeRF(from_dict(NeRFConfig, {**SMALL, "optimizer": "tcnn"}), _scene())
    a.train_step(_batch(32, step=1))
    b = NeRF(from_dict(NeRFConfig, {**SMALL, "optimizer": "tcnn"}), _scene())
    b.load_state_dict(a.state_dict())
    for key in ("m", "v", "t"):
        torch.testing.assert_close(b.optimizer.state[b.field.encoding.params][key],
                                   a.optimizer.state[a.field.encoding.params][key])


@pytest.mark.gpu
def test_train_step_never_waits_for_the_gpu():
    config = from_dict(NeRFConfig, {**SMALL, "target_samples": 4096, "cuda_graphs": False})
    nerf = NeRF(config, _scene(), device="cuda")
    nerf.train_step(_batch(256, "cuda", step=0))  # step 0 updates the occupancy grid (which may sync)
    batches = [_batch(256, "cuda", step=step) for step in (1, 2, 3)]  # host-to-device copies sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            nerf.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert nerf.readout.poll() is not None


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["adam", "tcnn"])
def test_cuda_graph_steps_train_like_eager_steps(optimizer):
    # without jitter the step is deterministic up to the order of float atomics: a replayed graph must give
    # the parameters that eager steps give, and replay (not re-capture) once the batch shape is stable
    config = {**SMALL, "target_samples": 4096, "jitter": False, "occupancy": {"resolution": 8, "update_every": 1000},
              "optimizer": optimizer}
    runs = []
    for graphs in (False, True):
        torch.manual_seed(0)
        nerf = NeRF(from_dict(NeRFConfig, {**config, "cuda_graphs": graphs}), _scene(), device="cuda")
        for step in range(1, 9):
            losses = nerf.train_step({**_batch(256, "cuda", step=step), "step": step})
        runs.append((nerf, float(losses["loss"])))
    (eager, loss_e), (graphed, loss_g) = runs
    assert graphed.step_graph.captures == 1 and graphed.step_graph.graph is not None
    assert abs(loss_e - loss_g) <= 1e-4 * abs(loss_e)
    for a, b in zip(eager.field.parameters(), graphed.field.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_fp16_grid_options_apply_on_cuda_only_and_are_checked():
    from ngraphics.encodings import create_encoding
    from ngraphics.errors import ConfigError

    config = from_dict(NeRFConfig, {**SMALL, "field": {**SMALL["field"], "grid_precision": "fp16",
                                                       "grid_gradient_precision": "fp16"}})
    cpu = NeRF(config, _scene())
    assert cpu.field.encoding.dtype is None and cpu.field.encoding.gradient_dtype is None  # CPU: fp32
    with pytest.raises(ConfigError, match="grid_precision"):
        from_dict(NeRFConfig, {"field": {"grid_precision": "fp8"}})
    with pytest.raises(ConfigError, match="gradient_dtype"):
        create_encoding(3, {"otype": "Frequency"}, gradient_dtype=torch.float16)
    grid = create_encoding(3, {"otype": "HashGrid", "n_levels": 2}, gradient_dtype=torch.float16)
    assert grid.gradient_dtype == torch.float16


@pytest.mark.gpu
def test_fast_and_reference_paths_render_the_same_images(tmp_path):
    # one CUDA-trained default-scene run, rendered through the Triton kernels (backend auto) and through the
    # pure-PyTorch path (marching, compositing, grid, MLPs): the same images within 2e-3 mean abs difference
    # and >= 45 dB PSNR between them (fp16 MLPs and fp32 compositing sums in different orders; the marcher
    # is bit-exact)
    from ngraphics.metrics.image import psnr
    from ngraphics.training.run_folder import RunFolder
    from ngraphics.training.trainer import restore_run

    assert main(["train", "--runs-dir", str(tmp_path), "--name", "g", "--quiet", "--set", "trainer.steps=300",
                 "--set", "trainer.render_final=false"]) == 0
    run = RunFolder(tmp_path / "g")
    images = []
    for overrides in ([], ["model.backend=torch", "model.field.backend=torch"]):
        _, method, scene, _ = restore_run(run, device="cuda", overrides=overrides)
        images.append(method.render(scene.cameras[0:2])["rgb"].float().cpu())
    fast, reference = images
    assert (fast - reference).abs().mean() <= 2e-3
    assert psnr(fast.clamp(0, 1), reference.clamp(0, 1)) >= 45.0

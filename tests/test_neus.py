"""`method: neus` on the method protocol: steps, renders with normals, state round trip, meshes, metrics,
the CLI (train -> export), and the CPU training run whose Chamfer-L1 the issue asks to assert."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ngraphics.cli import main
from ngraphics.data import load_dataset
from ngraphics.fields.sdf_field import SDFFieldConfig
from ngraphics.io.images import read_image
from ngraphics.methods import METHODS
from ngraphics.methods.neus import Neus, NeusConfig

pytest.importorskip("trimesh")

TINY = NeusConfig(field=SDFFieldConfig(encoding={"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4},
                                       max_resolution=32, init_radius=0.8, geometry_features=3, color_neurons=16),
                  rays_per_batch=64, n_samples=16, n_importance=8, importance_rounds=2, warmup_steps=2,
                  render_chunk=512, eval_mesh_resolution=32, export_resolution=32)

# `ngraphics train neus/default` (50 steps) against the procedural scene's true surface, Chamfer-L1 in scene
# units (the objects' bounding-box diagonal is ~2.5). Measured 2026-12-02 on the shared 2-core CPU, one torch
# thread: the 50-step run reached CHAMFER_1X in 106 s of training; a run of 10x the steps (500, same config,
# `--set trainer.steps=500`) reached CHAMFER_10X (PSNR 25.9 dB, mask IoU 0.966, normal consistency 0.978) in
# 632 s. After 6 steps it scored 0.22. The threshold leaves the 50-step run 40 % room (seeds, thread
# counts): it checks that the default run reconstructs the scene, not that it has converged.
CHAMFER_1X = 0.0563
CHAMFER_10X = 0.0116
CHAMFER_THRESHOLD = 0.08


@pytest.fixture(scope="module")
def scene():
    return load_dataset(None, "train", resolution=16, n_views=6)


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is faster than two contended ones
    yield
    torch.set_num_threads(threads)


def _trained(scene, steps=4, config=TINY):
    torch.manual_seed(0)
    method = Neus(config, scene, "cpu")
    sampler = method.sampler(scene, torch.device("cpu"))
    outs = []
    for step in range(steps):
        batch = sampler.sample()
        batch.update(step=step, progress=step / steps)
        outs.append(method.train_step(batch))
    return method, outs


def test_registered_and_steps_learn(scene, one_thread):
    assert METHODS["neus"] is Neus and Neus.exports == ("mesh",)
    method, outs = _trained(scene, steps=12)
    assert all(torch.isfinite(torch.as_tensor(o["loss"])) for o in outs)
    assert float(outs[-1]["loss"]) < float(outs[0]["loss"])
    assert {"eikonal", "inv_s", "mask_loss", "levels", "psnr"} <= set(outs[-1])
    assert float(outs[0]["levels"]) == TINY.start_levels


def test_progressive_levels_and_annealing_follow_progress(scene):
    method = Neus(TINY, scene, "cpu")
    method.schedule(0, 0.0)
    assert int(method.field.active_levels) == TINY.start_levels and method.anneal == 0.0
    method.schedule(10, 0.2)  # half way to levels_full_at = 0.4, anneal_end 0.1 passed
    assert int(method.field.active_levels) == 4 and method.anneal == 1.0
    method.field.set_active_levels(2)
    method.refresh_render_field()  # the render copy sees the same levels (host count and buffer)
    assert method.render_field.active == 2 and int(method.render_field.active_levels) == 2
    config = dataclasses.replace(TINY, start_levels=1, field=dataclasses.replace(
        TINY.field, encoding={"n_levels": 8, "log2_hashmap_size": 12, "base_resolution": 4}))
    method = Neus(config, scene, "cpu")
    method.schedule(10, 0.2)
    assert int(method.field.active_levels) == 1 + int(7 * 0.5)


def test_render_has_normals_and_state_round_trips(scene, one_thread):
    method, _ = _trained(scene)
    out = method.render(scene.cameras[:2], torch.tensor([0.0, 0.0, 0.0]))
    assert out["rgb"].shape == (2, 16, 16, 3) and out["normal"].shape == (2, 16, 16, 3)
    assert out["alpha"].shape == (2, 16, 16, 1) and out["depth"].shape == (2, 16, 16, 1)
    hit = out["alpha"][..., 0] > 0.99
    assert hit.any()
    n = out["normal"][hit].norm(dim=-1)
    assert float((n - 1).abs().max()) < 0.05  # composited unit normals where the ray is opaque
    # normals face the camera where the surface is hit
    origins, dirs = scene.cameras.image_rays(0)
    facing = (out["normal"][0].reshape(-1, 3) * dirs).sum(-1)[hit[0].reshape(-1)]
    assert float((facing < 0).double().mean()) > 0.9
    other = Neus(TINY, scene, "cpu")
    other.load_state_dict(method.state_dict())
    again = other.render(scene.cameras[:1], torch.tensor([0.0, 0.0, 0.0]))
    torch.testing.assert_close(again["rgb"], out["rgb"][:1], atol=1e-5, rtol=0)
    bad = dataclasses.replace(TINY, field=dataclasses.replace(TINY.field, geometry_features=5))
    from ngraphics.errors import ConfigError
    with pytest.raises(ConfigError, match="checkpoint field"):
        Neus(bad, scene, "cpu").load_state_dict(method.state_dict())


def test_metrics_and_export(tmp_path, scene, one_thread):
    import trimesh

    method, _ = _trained(scene)
    test = load_dataset(None, "test", resolution=16, n_views=1)
    renders = [{k: v[0] for k, v in method.render(test.cameras[:1]).items()}]
    m = method.metrics(test, renders)
    assert {"chamfer_l1", "normal_consistency", "fscore", "mask_iou"} <= set(m)
    assert 0 < m["chamfer_l1"] < 1.0 and 0 <= m["mask_iou"] <= 1
    path = method.export("mesh", tmp_path / "surface.ply")
    mesh = trimesh.load(str(path), force="mesh", process=False)
    assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)


def test_world_transform_maps_meshes_back(tmp_path, scene, one_thread):
    import numpy as np
    import trimesh

    scale = np.diag([3.0, 3.0, 3.0, 1.0])
    scale[:3, 3] = [100.0, 0.0, 0.0]
    shifted = dataclasses.replace(scene, meta={**scene.meta, "scale_mat": scale})
    torch.manual_seed(0)
    method = Neus(TINY, shifted, "cpu")
    plain = method.mesh(24, colors=False, world=False)
    world = trimesh.load(str(method.export("mesh", tmp_path / "w.obj", resolution=24)), force="mesh", process=False)
    np.testing.assert_allclose(np.asarray(world.vertices), plain.vertices.numpy() * 3 + [100, 0, 0], atol=1e-3)


def test_cli_train_then_export(tmp_path, one_thread, capsys):
    runs = tmp_path / "runs"
    sets = ["trainer.steps=3", "trainer.log_every=1", "data.options.resolution=12", "model.rays_per_batch=64",
            "model.n_samples=16", "model.n_importance=8", "model.eval_mesh_resolution=24"]
    args = ["train", "neus/default", "--runs-dir", str(runs), "--name", "r", "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    records = [json.loads(line) for line in (runs / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("chamfer_l1" in r for r in records)
    assert main(["export", "mesh", "r", "--runs-dir", str(runs), "--resolution", "24", "--format", "glb"]) == 0
    assert (runs / "r" / "export" / "mesh.glb").stat().st_size > 0
    capsys.readouterr()
    assert main(["export", "mesh", "r", "--runs-dir", str(runs), "--resolution", "24",
                 "--bounds", "5", "5", "5", "6", "6", "6", "--out", str(tmp_path / "x.ply")]) == 2
    assert "never crosses zero" in capsys.readouterr().err and not (tmp_path / "x.ply").exists()
    assert main(["export", "mesh", "r", "--runs-dir", str(runs), "--resolution", "100000",
                 "--out", str(tmp_path / "y.ply")]) == 2  # a grid far too large for memory
    err = capsys.readouterr().err
    assert "--resolution" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "y.ply").exists()
    # render gains normals: frames are (n + 1) / 2 of the method's normals along the same path; eval writes them
    assert main(["render", "r", "--runs-dir", str(runs), "--output", "normal", "--format", "png", "--frames", "2",
                 "--out", str(tmp_path / "normals")]) == 0
    from ngraphics.rendering.camera_paths import make_path
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run

    _, method, scene, _ = restore_run(resolve_run(runs / "r"), None, "cpu")
    want = ((method.render(make_path("orbit", scene.cameras, 2)[1:2])["normal"][0] + 1) * 0.5).clamp(0, 1)
    got = torch.from_numpy(read_image(tmp_path / "normals" / "frame_0001.png")).float()
    assert got.shape == want.shape and (got - want).abs().max() < 1.5 / 255 and want.std() > 0.05
    assert main(["eval", "r", "--runs-dir", str(runs)]) == 0
    assert list((runs / "r" / "eval").rglob("*_normal.png"))


@pytest.mark.slow
def test_default_config_trains_to_the_recorded_chamfer(tmp_path, one_thread):
    """`ngraphics train neus/default` on the CPU: under 3 minutes of training on 2 cores, Chamfer-L1 below
    CHAMFER_THRESHOLD against the procedural scene's true surface."""
    runs = tmp_path / "runs"
    assert main(["train", "neus/default", "--runs-dir", str(runs), "--name", "d", "--quiet"]) == 0
    records = [json.loads(line) for line in (runs / "d" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "chamfer_l1" in r][-1]
    assert final["chamfer_l1"] < CHAMFER_THRESHOLD, final


@pytest.mark.gpu
def test_triton_field_gradients_match_torch():
    """The SDF field's normals and the eikonal loss's double backward through the Triton grid kernels agree
    with the PyTorch path."""
    config = dataclasses.replace(TINY.field, backend="triton")
    from ngraphics.fields.sdf_field import SDFField

    torch.manual_seed(0)
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    fast = SDFField(config, aabb).cuda()
    with torch.no_grad():
        fast.sdf_net[0].weight.normal_(0, 0.5)
    ref = SDFField(dataclasses.replace(config, backend="torch"), aabb).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(4096, 3, device="cuda") * 1.6 - 0.8
    grads = []
    for field in (fast, ref):
        sdf, gradient, _ = field.sdf_with_gradient(x, create_graph=True)
        ((gradient.norm(dim=-1) - 1) ** 2).mean().add(sdf.abs().mean()).backward()
        grads.append((sdf.detach(), gradient.detach(), field.encoding.params.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_cuda_steps_learn():
    scene = load_dataset(None, "train", resolution=32, n_views=8)
    torch.manual_seed(0)
    method = Neus(dataclasses.replace(TINY, rays_per_batch=1024), scene, "cuda")
    sampler = method.sampler(scene, torch.device("cuda"))
    losses = []
    for step in range(30):
        batch = sampler.sample()
        batch.update(step=step, progress=step / 30)
        losses.append(float(method.train_step(batch)["loss"]))
    assert losses[-1] < losses[0]
    out = method.render(scene.cameras[:1])
    assert out["normal"].shape == (1, 32, 32, 3) and out["normal"].device.type == "cuda"


def test_neus_loader_records_scale_mat_for_world_meshes():
    import numpy as np

    from conftest import need_data
    from ngraphics.data.neus import load_neus

    root = need_data("dtu", "dtu_scan65")
    scene = load_neus(root, "test", max_frames=1, downscale=8, cache=False)
    expected = np.load(root / "cameras_sphere.npz")["scale_mat_0"]
    np.testing.assert_allclose(scene.meta["scale_mat"], expected)


def test_metrics_without_a_surface_score_worst(scene):
    """An SDF that is negative in the whole box (a sphere larger than the box) has no surface to mesh: the
    evaluation reports the worst Chamfer instead of failing, and export is a one-line error writing nothing."""
    from ngraphics.errors import DataError

    config = dataclasses.replace(TINY, field=dataclasses.replace(TINY.field, init_radius=5.0))
    method = Neus(config, scene, "cpu")
    test = load_dataset(None, "test", resolution=8, n_views=1)
    m = method.metrics(test, [])
    assert m["chamfer_l1"] == float("inf") and m["fscore"] == 0.0
    with pytest.raises(DataError, match="never crosses zero"):
        method.export("mesh", "/nonexistent-dir/x.ply")

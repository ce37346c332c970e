"""The `splat` method: SSIM loss against the metric, initialisation, schedules, a train step with densification,
rendering, checkpoints that size Gaussians from the checkpoint, exports and --init, and the CPU training
target on the procedural scene (threshold: see PROCEDURAL_* below)."""

import dataclasses
import json
import math

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.data.load import load_dataset
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError, DataError
from ngraphics.io.splat_files import read_splats, write_splats
from ngraphics.methods import METHODS
from ngraphics.methods.splat import Splat, SplatConfig, knn_scale, ssim_loss
from ngraphics.metrics.image import ssim
from ngraphics.splatting.strategy import DefaultStrategy, MCMCStrategy

# `ngraphics train --method splat` (configs/splat/default.yaml, 400 steps, seed 0) on the procedural scene,
# measured 2026-12-02 on the shared 2-core CPU (torch 2.13.0+cpu, one intra-op thread, load average ~12 from
# other jobs):
#   OMP_NUM_THREADS=1 ngraphics train --method splat --set trainer.render_final=false
# 27.37 dB test PSNR on the 8 test views, SSIM 0.955, 2218 Gaussians, 136.6 s of training, 162 s wall for the
# whole command (61 s of CPU time). The run of 10x the steps, every step-valued key scaled by 10:
#   OMP_NUM_THREADS=1 nice ngraphics train --method splat --set trainer.steps=4000 \
#     --set model.sh_degree_interval=2000 --set model.densify.refine_start=500 \
#     --set model.densify.refine_stop=3200 --set model.densify.refine_every=500 --set trainer.eval_every=500
# reached 30.73 dB, SSIM 0.982, 2356 Gaussians (2086 s of training on the loaded machine, 476 s of CPU time;
# 4-view PSNR at steps 500..3500: 19.6, 20.8, 23.4, 26.0, 28.0, 29.7, 30.6: converged). The 400-step run stays
# 3.4 dB below that; the threshold sits 4.7 dB below the 10x result, 1.4 dB below the 400-step result (seeds,
# thread counts, torch versions): it checks that the default run reconstructs the scene, not that it converged.
PROCEDURAL_PSNR_10X = 30.73
PROCEDURAL_PSNR_400 = 27.37
PROCEDURAL_THRESHOLD = PROCEDURAL_PSNR_10X - 4.73  # 26.0


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


def tiny_scene(points=None) -> SceneData:
    """Two 16x16 cameras at the origin (OpenCV: looking along +z), a scene box in front of them."""
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.5
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).expand(2, 3, 3).clone()
    cameras = Cameras(c2w, K, torch.tensor([16, 16]), torch.tensor([16, 16]))
    colors = None if points is None else torch.full_like(points, 0.5)
    return SceneData(cameras, [torch.zeros(16, 16, 3)] * 2, ["a", "b"], torch.tensor([[-1.0, -1, 1], [1, 1, 3]]),
                     points=points, point_colors=colors)


def test_cameras_that_see_none_are_one_error(tmp_path):
    m = Splat(small(init_points=30), tiny_scene())  # random points in the box: seen
    behind = torch.tensor([0.0, 0.0, -5.0]) + torch.randn(10, 3) * 0.1
    with pytest.raises(DataError, match=r"^the scene's seed points: the 2 training cameras see none of the 10 "
                                        r"Gaussians \(Gaussians around \(.*\), cameras around \(0.25, 0, 0\)\): are"):
        Splat(small(), tiny_scene(behind))
    far = m.splats()
    far.means = far.means - torch.tensor([0.0, 0.0, 10.0])
    write_splats(tmp_path / "far.spz", far)
    with pytest.raises(DataError, match=f"^model.init {tmp_path / 'far.spz'}: the 2 training cameras see none of "
                                        "the 30 Gaussians"):
        Splat(small(init=str(tmp_path / "far.spz")), tiny_scene())
    cams = tiny_scene().cameras
    assert m.check_in_view(cams, "x").tolist() == [30, 30] or int(m.check_in_view(cams, "x").sum()) > 0
    turned = Cameras(cams.c2w @ torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0])), cams.K, cams.width, cams.height)
    with pytest.raises(DataError, match="^orbit: see none of the 30 Gaussians"):
        m.check_in_view(turned, "orbit:")


def test_pruning_every_gaussian_is_one_error():
    scene = tiny_scene()
    m = Splat(small(init_points=30, densify=DefaultStrategy(prune_opa=0.999, refine_start=0, refine_every=1)), scene)
    sampler = m.sampler(scene, "cpu")
    with pytest.raises(DataError, match="^step 1: no Gaussians left .*prune_opa"):
        for step in range(2):
            m.train_step({**sampler.sample(), "step": step, "progress": 0.0})


def test_from_splats_renders_a_file_like_the_trained_method(tmp_path):
    m = Splat(small(init_points=40), tiny_scene())
    path = m.export("ply", tmp_path / "s.ply")
    f = Splat.from_splats(read_splats(path))
    assert f.config.sh_degree == 1 and len(f.params["means"]) == 40 and f.params["features"].shape == (40, 0)
    cams = tiny_scene().cameras
    assert torch.allclose(f.render(cams, torch.zeros(3))["rgb"], m.render(cams, torch.zeros(3))["rgb"], atol=1e-6)


def test_evaluation_records_count_gaussians_and_peak_memory(scene):
    m = Splat(small(init_points=60), scene)
    out = m.metrics(scene, [])
    assert out["gaussians"] == 60 and 0.01 < out["peak_rss_gb"] < 1024 and "peak_gpu_gb" not in out


def write_blender(folder, eyes, size=16):
    """A tiny NeRF-synthetic-style dataset (train = test): cameras at `eyes` looking at the origin, y up
    (OpenGL axes), random RGBA images of size x size."""
    from ngraphics.io.images import write_image

    frames = []
    for i, eye in enumerate(torch.tensor(eyes, dtype=torch.float32)):
        back = eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), back)
        right = right / right.norm()
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(back, right), back, eye
        frames.append({"file_path": f"./r_{i}", "transform_matrix": c2w.tolist()})
        write_image(folder / f"r_{i}.png", torch.rand(size, size, 4, generator=torch.Generator().manual_seed(i)))
    for split in ("train", "test"):
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    return folder


def test_cli_train_eval_records_init_from_file_and_render_file(tmp_path, capsys):
    """`train --method splat` with eval_every: each test record has PSNR, SSIM, gaussians, peak memory and
    time; `export splat`; `train --init FILE` fine-tunes it; `render FILE` without and with --data."""
    from ngraphics.cli import main
    from ngraphics.io.images import read_image

    (tmp_path / "data").mkdir()
    data = write_blender(tmp_path / "data", [[0, 0, 4], [3, 0, 3], [-3, 1, 3]])
    tiny = ["--data", str(data), "--quiet", "--set", "model.init_points=150", "--set", "trainer.render_final=false",
            "--set", "trainer.eval_every=2", "--set", "model.sh_degree=1"]
    assert main(["train", "--method", "splat", "--runs-dir", str(tmp_path), "--name", "a", "--set",
                 "trainer.steps=4"] + tiny) == 0
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["n_views"] == 3
    for r in evals:
        assert {"psnr", "ssim", "gaussians", "peak_rss_gb", "time"} <= set(r) and r["gaussians"] == 150
    assert main(["export", "splat", str(tmp_path / "a"), "--format", "splat"]) == 0
    exported = tmp_path / "a" / "export" / "splats.splat"
    assert main(["train", "--method", "splat", "--runs-dir", str(tmp_path), "--name", "b", "--init", str(exported),
                 "--set", "trainer.steps=2"] + tiny + ["--set", "model.init_points=99"]) == 0
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["gaussians"] for r in records if r["split"] == "test"] == [150]  # the file's, not 99 new points
    assert main(["eval", str(tmp_path / "b")]) == 0  # rebuilt from the run folder
    assert main(["render", str(exported), "--frames", "2", "--scale", "0.1", "--format", "png", "--out",
                 str(tmp_path / "ring")]) == 0
    frames = sorted((tmp_path / "ring").iterdir())
    assert [p.name for p in frames] == ["frame_0000.png", "frame_0001.png"]
    image = read_image(frames[0])
    assert image.shape == (48, 64, 3) and float(image.max()) > 0.2  # the Gaussians are on screen
    assert main(["render", str(exported), "--data", str(data), "--path", "train", "--out",
                 str(tmp_path / "train.mp4")]) == 0
    assert (tmp_path / "train.mp4").stat().st_size > 0
    assert "3 of 3 frames see some" in capsys.readouterr().err


def test_cli_render_and_init_when_no_camera_sees_the_file(tmp_path, capsys):
    """A splat file behind every camera of a dataset: one error line, no video, no run folder."""
    from ngraphics.cli import main

    (tmp_path / "data").mkdir()
    data = write_blender(tmp_path / "data", [[0, 0, 4], [0.5, 0, 4]])  # looking along -z
    m = Splat(small(init_points=20), tiny_scene())
    behind = m.splats()
    behind.means = behind.means + torch.tensor([0.0, 0.0, 10.0])  # z in [11, 13]: behind both cameras
    write_splats(tmp_path / "behind.ply", behind)
    capsys.readouterr()
    assert main(["render", str(tmp_path / "behind.ply"), "--data", str(data), "--path", "train", "--out",
                 str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ngraphics render: error: {tmp_path / 'behind.ply'}: the 2 cameras of path train (from the "
                   f"training cameras of {data}) see none of the 20 Gaussians" + err[0].split("Gaussians", 1)[1]]
    assert not (tmp_path / "v.mp4").exists()
    assert main(["train", "--method", "splat", "--data", str(data), "--init", str(tmp_path / "behind.ply"),
                 "--runs-dir", str(tmp_path / "runs"), "--name", "x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train: error: model.init " in err and "the 2 training cameras see none of the 20 Gaussians" in err
    assert not (tmp_path / "runs" / "x").exists()


@pytest.mark.slow
def test_cli_trains_procedural_scene_to_threshold(tmp_path):
    """`ngraphics train --method splat` in under 3 minutes of training on a 2-core CPU, then `export splat`."""
    import time

    from ngraphics.cli import main

    # one intra-op thread, as the NeRF test: CI runs two workers on two cores, and a second thread per worker
    # (or any other load on the cores) slows torch's CPU kernels many-fold (0.1 views/s instead of 8 measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.time()
        assert main(["train", "--method", "splat", "--runs-dir", str(tmp_path), "--name", "r", "--quiet",
                     "--set", "trainer.render_final=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("split") == "test" and "psnr" in r][-1]
    assert final["step"] == 400 and final["n_views"] == 8
    assert final["time"] < 180, f"training took {final['time']:.0f} s (wall {time.time() - start:.0f} s)"
    assert final["psnr"] >= PROCEDURAL_THRESHOLD, final
    assert main(["export", "splat", str(tmp_path / "r"), "--format", "spz"]) == 0
    assert len(read_splats(tmp_path / "r" / "export" / "splats.spz")) == final["gaussians"]


@pytest.mark.gpu
def test_cuda_evaluation_records_peak_gpu_memory(scene):
    m = Splat(small(init_points=500), scene, device="cuda")
    sampler = m.sampler(scene, "cuda")
    m.train_step({**sampler.sample(), "step": 0, "progress": 0.0})
    out = m.metrics(scene, [])
    assert out["gaussians"] == 500 and 0 < out["peak_gpu_gb"] < 140


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


@pytest.mark.gpu
def test_cuda_ssim_loss_is_not_tf32_noise():
    """On CUDA the D-SSIM loss matches float64 on the CPU where the image is flat (cuDNN's TF32 convolutions
    once made var = E[x^2] - E[x]^2 cancel to noise there, and lego training diverged)."""
    a = torch.ones(200, 200, 3)
    b = a.clone()
    b[60:140, 60:140] = 0.3
    b[100:, :, 1] = 0.7
    want = float(ssim_loss(a.double(), b.double()))
    got = ssim_loss(a.cuda().requires_grad_(), b.cuda())
    got.backward()
    assert float(got) == pytest.approx(want, abs=1e-6)

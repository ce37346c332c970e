"""The shared trainer: configs, checkpoints (atomic, weights-only), resume, Ctrl-C, and the CLI verbs on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ngraphics.cli import main
from ngraphics.errors import ConfigError, DataError
from ngraphics.training import checkpoint as ckpt
from ngraphics.metrics.image import psnr, ssim
from ngraphics.training.run_folder import RunFolder
from ngraphics.training.run_config import find_config, load_run_config, parse_run_config
from ngraphics.training.trainer import Trainer

# A NeRF small enough that a step takes milliseconds on a CPU: 16x16 procedural views.
TINY = [
    "data.options={resolution: 16, n_views: 6, mesh_resolution: 0}",
    "data.eval_views=2",
    "trainer.steps=6",
    "trainer.log_every=2",
    "trainer.save_every=3",
    "trainer.progress=false",
    "model.field.encoding={n_levels: 2, log2_hashmap_size: 10}",
    "model.field.max_resolution=32",
    "model.occupancy={resolution: 8, warmup_steps: 2, update_every: 2}",
    "model.render_steps=48",
    "model.target_samples=2048",
    "model.initial_rays=128",
    "model.render_chunk=1024",
]


def _tiny_config(tmp_path: Path, extra: list[str] = ()):
    return load_run_config(find_config(None), TINY + list(extra))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


# --- configs ---------------------------------------------------------------------------------------------------


def test_unknown_keys_name_the_file_and_the_nearest_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path, "trainer:\n  stpes: 10\n"))
    message = str(err.value)
    assert "c.yaml" in message and "stpes" in message and "did you mean steps?" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"model.field: encodng is not a NerfFieldConfig key \(did you mean encoding\?\)"):
        load_run_config(_write(tmp_path, "model:\n  field:\n    encodng: {}\n"))
    with pytest.raises(ConfigError, match="did you mean nerf"):
        load_run_config(_write(tmp_path, "method: nerff\n"))
    with pytest.raises(ConfigError, match=r"with --set: trainer: log_evry .*did you mean log_every"):
        load_run_config(_write(tmp_path, "method: nerf\n"), ["trainer.log_evry=5"])
    with pytest.raises(ConfigError, match=r"model.field.encoding: n_level is .*did you mean n_levels"):
        load_run_config(find_config(None), ["model.field.encoding={n_level: 4}"])  # tcnn dicts are checked too
    with pytest.raises(ConfigError, match=r"model.field.color_network.otype: 'FullyFused' is not one of"):
        load_run_config(find_config(None), ["model.field.color_network={otype: FullyFused}"])


def test_bad_values_are_one_line(tmp_path):
    cases = [
        ("trainer:\n  steps: ten\n", "trainer.steps: expected an integer"),
        ("trainer:\n  steps: 0\n", "trainer.steps: expected a positive integer"),
        ("trainer:\n  eval_spp: 0\n", "trainer.eval_spp: expected a positive integer"),
        ("model:\n  pixel_jitter: sometimes\n", "model.pixel_jitter"),
        ("data:\n  background: pink\n", "data.background: 'pink' is not one of"),
        ("model:\n  occupancy: {resolution: 7}\n", "occupancy.resolution: expected an even integer"),
        ("model:\n  loss: l3\n", "model.loss: 'l3' is not one of huber, mse"),
        ("trainer: [1, 2]\n", "trainer: expected a mapping"),
    ]
    for text, expected in cases:
        with pytest.raises(ConfigError) as err:
            load_run_config(_write(tmp_path, text))
        assert expected in str(err.value) and "\n" not in str(err.value), (text, str(err.value))
    with pytest.raises(DataError, match="not valid YAML"):
        load_run_config(_write(tmp_path, "trainer: {steps: [\n"))


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    # PyYAML alone (YAML 1.1) reads 1e-4 as a string; configs take YAML 1.2's floats.
    config = load_run_config(_write(tmp_path, "model:\n  lr: 2e-3\n  eps: 1E-12\n"), ["model.weight_decay=1e-4"])
    assert (config.model.lr, config.model.eps, config.model.weight_decay) == (2e-3, 1e-12, 1e-4)
    config = load_run_config(find_config(None), ["model.betas=[.9e0, 9.99e-1]", "data.path=1e5x"])
    assert config.model.betas == (0.9, 0.999) and config.data.path == "1e5x"
    with pytest.raises(ConfigError, match="model.lr: expected a number, got 'e-3'"):
        load_run_config(find_config(None), ["model.lr=e-3"])


def test_bundled_configs_parse():
    for name in ("nerf/default", "nerf/lego", "nerf/fox", "nerf/colmap"):
        config = load_run_config(find_config(name))
        assert config.method == "nerf"
    with pytest.raises(ConfigError, match="config file not found"):
        find_config("nerf/legoo")


# --- checkpoints -----------------------------------------------------------------------------------------------


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = ckpt.CheckpointFolder(tmp_path / "checkpoints", keep=2)
    folder.save(10, {"w": torch.arange(5.0), "step": 10})

    def broken_write(path, header, payload):  # writes half a file, then dies
        Path(path).write_bytes(header + bytes(payload[:20]))
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write", broken_write)
    with pytest.raises(OSError):
        folder.save(20, {"w": torch.zeros(5), "step": 20})
    with pytest.raises(OSError):  # also when overwriting the same name
        folder.save(10, {"w": torch.zeros(5), "step": 10})
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000010.pt"]  # no temp files left
    _path, state = folder.latest()
    assert state["step"] == 10 and torch.equal(state["w"], torch.arange(5.0))


def test_damaged_newest_checkpoint_falls_back_and_old_ones_are_pruned(tmp_path):
    folder = ckpt.CheckpointFolder(tmp_path, keep=2)
    for step in (1, 2, 3):
        folder.save(step, {"step": step})
    assert [p.name for p in folder.paths()] == ["step_0000002.pt", "step_0000003.pt"]
    folder.paths()[-1].write_bytes(b"not a checkpoint")
    reports = []
    path, state = folder.latest(report=reports.append)
    assert state["step"] == 2
    assert len(reports) == 1 and "step_0000003.pt" in reports[0] and f"using {path}" in reports[0]
    folder.paths()[0].write_bytes(folder.paths()[0].read_bytes()[:-10])  # every one damaged: an error, not None
    with pytest.raises(DataError, match=r"step_0000003.pt.*\(and 1 older, also damaged\)"):
        folder.latest()


def test_checkpoint_checksum_and_finite_values_are_checked(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"method": {"w": torch.arange(1000.0)}})
    data = bytearray(path.read_bytes())
    data[-300] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="SHA-256"):
        ckpt.load_checkpoint(path)
    w = torch.arange(1000.0)
    w[7] = float("inf")
    ckpt.save_checkpoint(path, {"method": {"w": w}, "rng": torch.zeros(4, dtype=torch.uint8)})
    with pytest.raises(DataError, match=r"c.pt: damaged checkpoint \(1 of 1000 values of method.w are NaN or inf\)"):
        ckpt.load_checkpoint(path)


class _Payload:
    def __reduce__(self):  # unpickling this would run code
        return (print, ("code ran",))


def test_checkpoints_load_without_running_code(tmp_path):
    path = tmp_path / "evil.pt"
    ckpt.save_checkpoint(path, {"x": _Payload()})  # a valid checksum does not make it safe to unpickle
    with pytest.raises(DataError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)


# --- the loop --------------------------------------------------------------------------------------------------


def _params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.method.field.parameters()])


def test_crash_then_resume_continues_the_step_count(tmp_path):
    config = _tiny_config(tmp_path)
    reference = Trainer(config, RunFolder(tmp_path / "reference"))
    reference.train()

    run = RunFolder(tmp_path / "run")
    trainer = Trainer(config, run)

    def crash(trainer, step, losses):
        if step == 5:
            raise RuntimeError("simulated crash")

    trainer.hooks.append(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    assert [p.name for p in run.checkpoints.paths()] == ["step_0000003.pt"]  # the last good one

    resumed = Trainer(config, run, resume=True)
    assert resumed.step == 3
    result = resumed.train()
    assert resumed.step == 6 and [p.name for p in run.checkpoints.paths()] == ["step_0000003.pt", "step_0000006.pt"]
    assert result["n_views"] == 6
    # same random streams after the resume: the same weights as the uninterrupted run
    torch.testing.assert_close(_params(resumed), _params(reference))
    steps = [r["step"] for r in run.read_metrics() if r["split"] == "train"]
    # the crashed run logged 2 and 4; resuming from step 3 dropped 4, which the resumed run logged again, and 6
    assert steps == [2, 4, 6]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    run = RunFolder(tmp_path / "run")
    trainer = Trainer(_tiny_config(tmp_path), run)

    def interrupt(trainer, step, losses):
        if step == 4:
            raise KeyboardInterrupt

    trainer.hooks.append(interrupt)
    assert trainer.train() == {"interrupted": True}
    assert run.checkpoints.paths()[-1].name == "step_0000004.pt"
    assert Trainer(_tiny_config(tmp_path), run, resume=True).step == 4


def test_cli_train_eval_render_on_a_tiny_run(tmp_path, capsys):
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "--runs-dir", str(tmp_path), "--name", "tiny", *sets]) == 0
    err = capsys.readouterr().err
    run = tmp_path / "tiny"
    assert f"renders: {run / 'renders'}/" in err
    assert len(list((run / "renders").glob("test_*[0-9].png"))) == 6
    config = parse_run_config(__import__("yaml").safe_load((run / "config.yaml").read_text()), "config.yaml")
    assert config.trainer.steps == 6 and config.model.render_steps == 48  # resolved config, every key

    assert main(["train", "--runs-dir", str(tmp_path), "--name", "tiny", *sets]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err

    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_views"] == 6 and metrics["step"] == 6 and f"PSNR {metrics['psnr']:.2f} dB" in out
    # the eval images are what the metrics were computed from (8-bit PNGs: within quantisation)
    from ngraphics.data import load_dataset
    from ngraphics.io.images import read_image

    scene = load_dataset(None, "test", resolution=16, n_views=6, mesh_resolution=0)
    image = torch.from_numpy(read_image(run / "eval" / f"{scene.names[0]}.png"))[..., :3]
    assert abs(psnr(image, scene.rgb_on(0, (1.0, 1.0, 1.0))) - metrics["per_view"][0]["psnr"]) < 0.5

    assert main(["eval", str(run), "--spp", "4", "--no-images"]) == 0  # supersampled: a close, different score
    supersampled = json.loads((run / "eval" / "metrics.json").read_text())
    assert supersampled["spp"] == 4 and supersampled["psnr"] != metrics["psnr"]
    assert abs(supersampled["psnr"] - metrics["psnr"]) < 2.0
    assert main(["eval", str(run), "--spp", "0"]) == 2
    assert "--spp: expected a positive integer, got 0" in capsys.readouterr().err

    assert main(["render", str(run), "--path", "orbit", "--frames", "3", "--format", "png", "--spp", "2"]) == 0
    assert sorted(p.name for p in (run / "video" / "orbit").iterdir()) == [f"frame_{i:04d}.png" for i in range(3)]
    assert main(["render", str(run), "--frames", "2"]) == 0  # mp4, or PNGs with a message without imageio-ffmpeg
    err = capsys.readouterr().err
    from ngraphics.apps.render import ffmpeg_available

    if ffmpeg_available():
        assert (run / "video" / "orbit.mp4").stat().st_size > 0
    else:
        assert "imageio-ffmpeg is not installed" in err

    # other outputs: a depth video keeps the first frame's range; a NeRF has no normals (one line, nothing written)
    assert main(["render", str(run), "--output", "depth", "--format", "png", "--frames", "2",
                 "--out", str(run / "depth")]) == 0
    depth = [read_image(run / "depth" / f"frame_{i:04d}.png") for i in range(2)]
    assert depth[0].shape == (16, 16, 3) and depth[0].std() > 0.01
    assert main(["render", str(run), "--output", "normal", "--frames", "1", "--out", str(run / "n.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--output normal: this run's method (NeRF) renders rgb, depth, alpha" in err and not (run / "n.mp4").exists()

    assert main(["train", "--resume", str(run), "--set", "trainer.steps=8", "--quiet"]) == 0
    assert RunFolder(run).checkpoints.paths()[-1].name == "step_0000008.pt"
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert main(["train", "--data", str(tmp_path / "nope"), "--runs-dir", str(tmp_path), "--name", "bad"]) == 2
    assert "nope: dataset path not found" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing written for a run that could not start


def test_ssim_and_psnr_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = torch.rand(37, 53, 3, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    want = structural_similarity(b.numpy(), a.numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert abs(ssim(b, a) - want) < 1e-10
    assert abs(psnr(b, a) - peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0)) < 1e-10
    assert ssim(a, a) == pytest.approx(1.0)

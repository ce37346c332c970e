"""Bad input, as a new user would give it, through the command line: each case is built from real data (small
pieces of the shared lego, fox, COLMAP and DTU copies in tmp_path) and must exit with status 2, print exactly
one line on stderr that names the file or key, print no traceback or stray library output, and leave the run
folder as it was.

Runs go through `ngraphics.cli.main` in this process (one torch import); `capfd` sees the file descriptors, so
a C library writing to stderr (libpng) fails the one-line check too; Python warnings are recorded, not shown,
by pytest, so `_cli` counts them as lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need_data
from ngraphics.cli import main
from ngraphics.io.images import read_image, write_image
from ngraphics.training import checkpoint as ckpt

TINY = [
    "data.options={resolution: 16, n_views: 6, mesh_resolution: 0}",
    "data.eval_views=1",
    "trainer.steps=4",
    "trainer.log_every=1",
    "trainer.save_every=2",
    "trainer.render_final=false",
    "model.field.encoding={n_levels: 2, log2_hashmap_size: 8}",
    "model.field.max_resolution=16",
    "model.occupancy={resolution: 8, warmup_steps: 2, update_every: 2}",
    "model.render_steps=32",
    "model.target_samples=512",
    "model.initial_rays=128",
    "model.render_chunk=1024",
]


@pytest.fixture(autouse=True)
def _no_image_cache(monkeypatch):
    """Loaders read the damaged files themselves, not a cached copy (and write no cache)."""
    monkeypatch.setenv("NGRAPHICS_CACHE", "off")


def _cli(capfd, *argv: str, cwd: Path | None = None) -> tuple[int, list[str]]:
    """Run `ngraphics ARGV`; returns (exit status, stderr lines incl. warnings). stdout is ignored."""
    capfd.readouterr()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(list(argv))
    finally:
        os.chdir(old)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()] + [f"warning: {w.message}" for w in caught]
    return code, lines


def _one_line(capfd, *argv: str, names: str | tuple[str, ...], cwd: Path | None = None) -> str:
    code, lines = _cli(capfd, *argv, cwd=cwd)
    assert code == 2 and len(lines) == 1, (code, lines)
    for name in (names,) if isinstance(names, str) else names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its SHA-256: a run folder 'untouched' keeps this exactly."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run of the procedural scene (4 steps, checkpoints at steps 2 and 4), trained with every
    encoding and network checked for NaN/inf (`--check-finite`, which must not disturb training)."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["train", "--runs-dir", str(runs), "--name", "tiny", "--quiet", "--check-finite"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    return runs / "tiny"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run folder."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step_*.pt"))


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_refused_and_the_older_one_used(run, capfd):
    older, newest = _checkpoints(run)
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    newest.write_bytes(bytes(data))
    code, lines = _cli(capfd, "eval", str(run), "--no-images")
    assert code == 0
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and newest.name in warning[0] and str(older) in warning[0], lines
    assert json.loads((run / "eval" / "metrics.json").read_text())["step"] == 2
    older.unlink()  # now the only one left is damaged: one line, no "train it first"
    before = _snapshot(run)
    line = _one_line(capfd, "eval", str(run), names=(newest.name, "SHA-256"))
    assert "train it first" not in line and _snapshot(run) == before
    _one_line(capfd, "train", "--resume", str(run), names=newest.name)
    assert _snapshot(run) == before


def test_a_truncated_checkpoint_is_one_line(run, capfd):
    for path in _checkpoints(run):
        path.write_bytes(path.read_bytes()[:5000])
    before = _snapshot(run)
    line = _one_line(capfd, "train", "--resume", str(run), "--set", "trainer.steps=8", names="truncated")
    assert "step_0000004.pt" in line and _snapshot(run) == before


def test_non_finite_values_in_a_checkpoint_are_refused_naming_the_key(run, capfd):
    for path in _checkpoints(run):  # a checksum that fits NaNs: written by a run that went wrong
        state = ckpt.load_checkpoint(path)
        exp_avg = state["method"]["optimizer"]["state"][0]["exp_avg"]
        exp_avg[3] = float("nan")
        ckpt.save_checkpoint(path, state)
    before = _snapshot(run)
    _one_line(capfd, "train", "--resume", str(run), "--set", "trainer.steps=8",
              names=("step_0000004.pt", "method.optimizer.state.0.exp_avg", "NaN"))
    assert _snapshot(run) == before


def test_a_config_that_does_not_fit_the_checkpoint_names_the_key(run, capfd):
    before = _snapshot(run)
    _one_line(capfd, "train", "--resume", str(run), "--set", "trainer.steps=8",
              "--set", "model.field.encoding.n_levels=4", names="model.field.encoding.n_levels")
    assert _snapshot(run) == before
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("log2_hashmap_size: 8", "log2_hashmap_size: 9"))
    before = _snapshot(run)
    _one_line(capfd, "eval", str(run), names="model.field.encoding.log2_hashmap_size")
    _one_line(capfd, "render", str(run), "--frames", "1", names="model.field.encoding.log2_hashmap_size")
    assert _snapshot(run) == before


def test_resuming_a_finished_run_says_so(run, capfd):
    before = _snapshot(run)
    _one_line(capfd, "train", "--resume", str(run), names=("already finished", "trainer.steps"))
    assert _snapshot(run) == before


def test_a_resume_leaves_no_step_twice_in_the_metrics(run, capfd):
    _checkpoints(run)[-1].unlink()  # as after a SIGKILL: metrics logged up to step 4, the checkpoint at step 2
    assert max(r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())) == 4
    code, lines = _cli(capfd, "train", "--resume", str(run), "--quiet")
    assert code == 0, lines
    train_steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if r.get("split") == "train"]
    assert train_steps == [1, 2, 3, 4]


# --- paths -------------------------------------------------------------------------------------------------------


def _lego(dst: Path, n: int = 2, splits=("train", "test")) -> Path:
    """n frames per split of the shared lego, as a Blender scene folder."""
    src = need_data("nerf_synthetic", "lego")
    for split in splits:
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        meta["frames"] = meta["frames"][:n]
        for frame in meta["frames"]:
            (dst / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / f"{frame['file_path']}.png", dst / f"{frame['file_path']}.png")
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))
    return dst


def _lego_args(runs: Path, *extra: str) -> list[str]:
    args = ["--runs-dir", str(runs), "--quiet", "--set", "data.downscale=40", "--set", "trainer.steps=1"]
    for item in TINY[3:]:
        args += ["--set", item]
    return args + list(extra)


def test_the_run_keeps_the_data_path_absolute_and_follows_a_move(tmp_path, capfd):
    work = tmp_path / "project"
    _lego(work / "lego")
    code, lines = _cli(capfd, "train", "nerf/lego", "--data", "lego", "--name", "r", *_lego_args(Path("runs")),
                       cwd=work)
    assert code == 0, lines
    config = (work / "runs" / "r" / "config.yaml").read_text()
    assert f"path: {work / 'lego'}" in config
    code, lines = _cli(capfd, "eval", str(work / "runs" / "r"), "--no-images", cwd=tmp_path)  # another folder
    assert code == 0, lines
    moved = tmp_path / "elsewhere"
    shutil.move(work, moved)  # the run folder moves together with its data
    code, lines = _cli(capfd, "eval", str(moved / "runs" / "r"), "--no-images", cwd=tmp_path)
    assert code == 0, lines


# --- data ------------------------------------------------------------------------------------------------------


def _bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny valid-looking PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000)))
                     + chunk(b"IEND", b""))
    return path


def test_fit_image_refuses_a_huge_image_before_decoding(tmp_path, capfd):
    bomb = _bomb_png(tmp_path / "bomb.png")
    _one_line(capfd, "fit-image", str(bomb), "--out", str(tmp_path / "out"), names=("bomb.png", "100000x100000"))
    assert not (tmp_path / "out").exists()
    _bomb_png(tmp_path / "big.png", 30_000, 30_000)  # a 1 kB file that would decode into 10.8 GB of float32
    _one_line(capfd, "fit-image", str(tmp_path / "big.png"), names=("big.png", "limit"))


def _assert_load_fails(capfd, tmp_path: Path, data: Path, *names: str, config: str = "nerf/lego") -> str:
    runs = tmp_path / "runs"
    line = _one_line(capfd, "train", config, "--data", str(data), *_lego_args(runs), names=names)
    assert not runs.exists()  # nothing written: every split is checked before the run folder is made
    return line


def test_lego_mistakes_are_one_line_before_training(tmp_path, capfd):
    cases = {
        "test_json": lambda d: (d / "transforms_test.json").write_text(
            (d / "transforms_test.json").read_text()[:200]),
        "size": lambda d: write_image(d / "train" / "r_1.png", read_image(d / "train" / "r_1.png")[:300, :400]),
        "grey": lambda d: write_image(d / "train" / "r_1.png", read_image(d / "train" / "r_1.png")[:, :, :1]),
        "angle": lambda d: (d / "transforms_train.json").write_text(
            (d / "transforms_train.json").read_text().replace('"camera_angle_x": 0.', '"camera_angle_x": "0.')
            .replace(',\n "frames"', '",\n "frames"', 1)),
        "truncated": lambda d: (d / "train" / "r_1.png").write_bytes((d / "train" / "r_1.png").read_bytes()[:3000]),
        "bomb": lambda d: _bomb_png(d / "test" / "r_0.png"),
    }
    expect = {
        "test_json": ("transforms_test.json", "not valid JSON"),
        "size": ("r_1.png", "400x300", "r_0.png"),
        "grey": ("r_1.png", "r_0.png"),
        "angle": ("transforms_train.json", "camera_angle_x"),
        "truncated": ("r_1.png",),
        "bomb": ("r_0.png", "100000x100000"),
    }
    for name, damage in cases.items():
        data = _lego(tmp_path / name)
        damage(data)
        line = _assert_load_fails(capfd, tmp_path / f"{name}-runs", data, *expect[name])
        if name == "angle":
            assert "frame" not in line


def test_config_values_name_the_key(tmp_path, capfd):
    _one_line(capfd, "train", "--runs-dir", str(tmp_path / "runs"), "--set", "data.downscale=0",
              names="data.downscale")
    _one_line(capfd, "train", "--runs-dir", str(tmp_path / "runs"), "--set", "trainer.save_every_s=-1",
              names="trainer.save_every_s")
    assert not (tmp_path / "runs").exists()


def test_fox_missing_frames_warn_once_without_source_lines(tmp_path, capfd):
    src = need_data("ngp", "fox")
    meta = json.loads((src / "transforms.json").read_text())
    present = [f for f in meta["frames"] if (src / f["file_path"]).is_file()][:8]
    meta["frames"] = present + [{**present[0], "file_path": "images/missing.jpg"}]  # listed, but no file
    (tmp_path / "fox" / "images").mkdir(parents=True)
    for frame in present:
        shutil.copy(src / frame["file_path"], tmp_path / "fox" / frame["file_path"])
    (tmp_path / "fox" / "transforms.json").write_text(json.dumps(meta))
    from ngraphics.cli import plain_warnings

    capfd.readouterr()
    with plain_warnings():  # as the CLI shows them: once, one line, no source line
        from ngraphics.data import load_dataset

        for split in ("train", "test"):
            load_dataset(str(tmp_path / "fox"), split, downscale=20, cache=False)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(lines) == 1 and "skipped 1 of 9" in lines[0], lines
    data = tmp_path / "fox"
    meta["frames"][2]["transform_matrix"] = [[1, 0, 0]]
    (data / "transforms.json").write_text(json.dumps(meta))
    _assert_load_fails(capfd, tmp_path, data, "transforms.json", "frame 2", config="nerf/fox")


def test_colmap_mistakes_are_one_line(tmp_path, capfd):
    src = need_data("colmap", "test_colmap")
    data = Path(shutil.copytree(src, tmp_path / "colmap"))
    sparse = next(p for p in (data / "sparse").rglob("*") if p.name in ("cameras.txt", "cameras.bin"))
    sparse.write_bytes(sparse.read_bytes()[:20])
    _assert_load_fails(capfd, tmp_path, data, sparse.name, config="nerf/colmap")


def test_dtu_mistakes_are_one_line(tmp_path, capfd):
    src = need_data("dtu", "dtu_scan65")
    data = tmp_path / "dtu"
    (data / "image").mkdir(parents=True)
    (data / "mask").mkdir()
    for i in range(2):
        shutil.copy(src / "image" / f"{i:06d}.png", data / "image" / f"{i:06d}.png")
        shutil.copy(src / "mask" / f"{i:03d}.png", data / "mask" / f"{i:03d}.png")
    cams = {k: v for k, v in np.load(src / "cameras_sphere.npz").items() if k != "world_mat_1"}
    np.savez(data / "cameras_sphere.npz", **cams)
    _assert_load_fails(capfd, tmp_path, data, "cameras_sphere.npz", "world_mat_1")


# --- checks and defaults -----------------------------------------------------------------------------------------


def test_check_finite_names_the_module_and_is_off_by_default():
    from ngraphics.networks.finite_checks import check_finite_boundaries
    from ngraphics.errors import DataError
    from ngraphics.networks.network_with_input_encoding import NetworkWithInputEncoding

    model = NetworkWithInputEncoding(3, 1, {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8},
                                     {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1})
    x = torch.rand(8, 3)
    x[5, 1] = float("nan")
    model(x)  # off by default: NaNs pass silently, nothing is checked
    handles = check_finite_boundaries(model)
    with pytest.raises(DataError, match=r"encoding \(HashGrid\): input has 1 NaN/inf of 24 values"):
        model(x)
    for handle in handles:
        handle.remove()
    model(x)


def test_gpu_sized_configs_say_so_and_warn_on_cpu(tmp_path, capfd):
    from ngraphics.config import configs_root

    for name in ("lego", "fox", "colmap"):
        text = (configs_root() / "nerf" / f"{name}.yaml").read_text()
        assert text.startswith("# GPU-sized") and "cpu_recipe:" in text
    data = _lego(tmp_path / "lego")
    code, lines = _cli(capfd, "train", "nerf/lego", "--data", str(data), *_lego_args(tmp_path / "runs"),
                       "--set", "trainer.device=cpu")
    assert code == 0, lines
    warning = [line for line in lines if "sized for a CUDA GPU" in line]
    assert len(warning) == 1 and "--set data.options.max_frames=25" in warning[0]


def test_imageio_ffmpeg_is_a_dependency():
    import tomllib

    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("imageio-ffmpeg") for dep in project["dependencies"])


# --- nothing lost ------------------------------------------------------------------------------------------------


def test_a_sigkill_loses_at_most_save_every_s(tmp_path, capfd):
    """A real `kill -9` mid-run: checkpoints came by training time (save_every: 0), and the resume continues
    from the last one with each step in metrics.jsonl once."""
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "ngraphics.cli", "train", "--runs-dir", str(runs), "--name", "k", "--quiet"]
    for item in TINY + ["trainer.steps=100000", "trainer.save_every=0", "trainer.save_every_s=0.5"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = runs / "k" / "checkpoints"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(checkpoints.glob("step_*.pt"))) < 2:
            assert proc.poll() is None, "training ended before it was killed"
            time.sleep(0.2)
        assert len(list(checkpoints.glob("step_*.pt"))) >= 2, "no checkpoint by training time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    newest = sorted(checkpoints.glob("step_*.pt"))[-1]
    state = ckpt.load_checkpoint(newest)
    step = state["step"]
    from ngraphics.training.run_folder import RunFolder

    records = RunFolder(runs / "k").read_metrics()  # a torn last line (killed mid-write) is skipped
    lost = max(r.get("time", 0) for r in records) - state["elapsed"]
    assert lost < 0.5 + 10.0  # save_every_s plus the step in flight (generous: a shared, loaded machine)
    code, lines = _cli(capfd, "train", "--resume", str(runs / "k"), "--set", f"trainer.steps={step + 2}", "--quiet")
    assert code == 0, lines
    steps = [r["step"] for r in map(json.loads, (runs / "k" / "metrics.jsonl").read_text().splitlines())
             if r.get("split") == "train"]
    assert steps == list(range(1, step + 3))

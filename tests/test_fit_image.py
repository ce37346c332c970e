"""fit-image: target lookup, losses, tcnn-style Adam against float64 loops, configs, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import need_data

from ngraphics.errors import ConfigError
from ngraphics.io.images import read_image, write_exr, write_image
from ngraphics.metrics.image import psnr
from ngraphics.optim.adam import AdamConfig, TcnnAdam, tcnn_param_groups
from ngraphics.training import image_fitting
from ngraphics.training.image_fitting import (
    ImageFitter,
    Target,
    bilinear_lookup,
    constant_colour_psnr,
    fit,
    fit_image_config,
    image_loss,
    pixel_centres,
    resolve_config,
)

# --- pieces against independent references ---------------------------------------------------------------


def _bilinear_loop(img: np.ndarray, u: float, v: float) -> np.ndarray:
    """Texture-style bilinear filtering, written out per sample in float64."""
    h, w = img.shape[:2]
    x, y = u * w - 0.5, v * h - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    out = np.zeros(img.shape[2])
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), w - 1)
            out += wy * wx * img[yy, xx]
    return out


def test_bilinear_lookup_matches_loop_and_hits_pixel_centres():
    rng = np.random.default_rng(1)
    img = rng.random((5, 7, 3))
    uv = np.concatenate([rng.random((200, 2)), [[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0.5]]])
    got = bilinear_lookup(torch.from_numpy(img), torch.from_numpy(uv)).numpy()
    ref = np.stack([_bilinear_loop(img, u, v) for u, v in uv])
    np.testing.assert_allclose(got, ref, atol=1e-12)
    centres = pixel_centres(5, 7).double()
    np.testing.assert_allclose(bilinear_lookup(torch.from_numpy(img), centres).numpy(), img.reshape(-1, 3), atol=1e-6)
    assert torch.allclose(centres[8], torch.tensor([1.5 / 7, 1.5 / 5], dtype=torch.float64))  # row 1, column 1


def test_losses_values_and_relative_l2_gradient():
    p = torch.tensor([[0.5, -0.2], [1.5, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.25, 0.1], [1.0, 0.3]], dtype=torch.float64)
    loss = image_loss("RelativeL2", p, t)
    ref = sum((a - b) ** 2 / (a * a + 0.01) for a, b in zip(p.detach().flatten().tolist(), t.flatten().tolist())) / 4
    assert abs(loss.item() - ref) < 1e-12
    loss.backward()  # tcnn treats the denominator as a constant: d/dp = 2 (p - t) / (p^2 + 0.01) / n
    pd = p.detach()
    torch.testing.assert_close(p.grad, 2 * (pd - t) / (pd * pd + 0.01) / 4)
    assert abs(image_loss("L1", p, t).item() - (p - t).abs().mean().item()) < 1e-12
    assert abs(image_loss("MAPE", p, t).item() - ((p - t).abs() / (t.abs() + 0.01)).mean().item()) < 1e-12


def test_psnr_and_constant_colour_bound():
    a = torch.zeros(4, 4, 1)
    b = torch.full((4, 4, 1), 0.1)
    assert abs(psnr(a, b) - 20.0) < 1e-6
    assert psnr(b, b) == math.inf
    img = torch.rand(6, 5, 3, dtype=torch.float64)
    bound = constant_colour_psnr(img)
    for c in (img.mean((0, 1)), img.mean((0, 1)) + 0.01, torch.full((3,), 0.5, dtype=torch.float64)):
        assert psnr(c.expand_as(img), img) <= bound + 1e-12


def _psnr_float64(pred, target) -> float:
    """-10 log10 of the mean squared difference of the [0, 1]-clipped images, value by value in float64."""
    p = [min(max(float(v), 0.0), 1.0) for v in np.asarray(pred, dtype=np.float64).ravel()]
    t = [min(max(float(v), 0.0), 1.0) for v in np.asarray(target, dtype=np.float64).ravel()]
    return -10.0 * math.log10(sum((x - y) ** 2 for x, y in zip(p, t)) / len(p))


def test_merged_psnr_on_numpy_and_torch_against_float64():
    """metrics.image.psnr serves the trainer (torch) and fit-image (torch or numpy, HDR targets): both sides
    clipped to [0, 1], computed in float64, any mix of array and tensor inputs."""
    rng = np.random.default_rng(11)
    pred = rng.uniform(-0.3, 1.4, (7, 9, 3)).astype(np.float32)  # overshoots on both sides
    target = rng.uniform(-0.1, 2.5, (7, 9, 3)).astype(np.float32)  # an HDR-like target
    want = _psnr_float64(pred, target)
    tp, tt = torch.from_numpy(pred), torch.from_numpy(target)
    for a, b in ((pred, target), (tp, tt), (pred, tt), (tp, target), (tp.double(), tt.half().float()),
                 (tp.bfloat16().float(), target)):
        assert abs(psnr(a, b) - _psnr_float64(a, b)) < 1e-9
    assert abs(psnr(pred, target) - want) < 1e-9
    assert psnr(np.full((2, 2), 1.5), np.ones((2, 2))) == math.inf  # equal once clipped
    assert abs(psnr(np.zeros((3, 3)), np.full((3, 3), 0.1)) - 20.0) < 1e-9  # -10 log10(0.01)
    with pytest.raises(ValueError, match=r"one shape.*\(4, 4, 3\).*\(4, 4, 1\)"):
        psnr(torch.zeros(4, 4, 3), np.zeros((4, 4, 1)))


def _adam_reference(w, grads, n_matrix, c: AdamConfig):
    """tiny-cuda-nn's adam_step kernel, one element at a time in float64."""
    w = [float(v) for v in w]
    m, v, t = [0.0] * len(w), [0.0] * len(w), [0] * len(w)
    for g_step in grads:
        for i, g in enumerate(float(x) for x in g_step):
            matrix = i < n_matrix
            if not matrix and g == 0:
                continue
            if matrix:
                g += c.l2_reg * w[i]
            m[i] = c.beta1 * m[i] + (1 - c.beta1) * g
            v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g
            lr = c.learning_rate * (1 if matrix else c.non_matrix_learning_rate_factor)
            t[i] += 1
            lr *= math.sqrt(1 - c.beta2 ** t[i]) / (1 - c.beta1 ** t[i])
            step = lr / (math.sqrt(v[i]) + c.epsilon)
            decayed = (1 - c.relative_decay * lr) * w[i] - math.copysign(c.absolute_decay * lr, w[i])
            w[i] = decayed - step * m[i]
    return np.array(w)


def test_tcnn_adam_matches_kernel_loop():
    rng = np.random.default_rng(3)
    n, n_matrix = 40, 15
    grads = [rng.normal(size=n) * (rng.random(n) < 0.6) for _ in range(6)]  # sparse: many exact zeros
    cfg = AdamConfig(learning_rate=1e-2, beta1=0.9, beta2=0.99, epsilon=1e-15, l2_reg=1e-3, relative_decay=0.1,
                     absolute_decay=1e-4, non_matrix_learning_rate_factor=0.5)
    w0 = rng.normal(size=n)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = TcnnAdam([{"params": [p], "n_matrix": n_matrix}], cfg)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    ref = _adam_reference(w0, grads, n_matrix, cfg)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    untouched = [i for i in range(n_matrix, n) if all(g[i] == 0 for g in grads)]
    assert all(p[i].item() == np.float32(w0[i]) for i in untouched)


def test_tcnn_adam_takes_the_grad_scaler_protocol_and_a_tensor_lr():
    """GradScaler's contract with optimizers that unscale themselves (`grad_scale`, `found_inf` tensors): a
    scaled step equals the unscaled one (the kernel-loop reference), an overflowing step changes nothing."""
    rng = np.random.default_rng(5)
    n, n_matrix = 30, 10
    grads = [rng.normal(size=n) * (rng.random(n) < 0.5) for _ in range(4)]
    cfg = AdamConfig(learning_rate=1e-2, beta1=0.9, beta2=0.99, epsilon=1e-15, l2_reg=1e-3)
    w0 = rng.normal(size=n)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = TcnnAdam([{"params": [p], "n_matrix": n_matrix}], cfg)
    opt.param_groups[0]["lr"] = torch.tensor(1e-2)  # as NeRF keeps it on CUDA, for CUDA graphs
    assert TcnnAdam._step_supports_amp_scaling
    for g in grads:
        opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        p.grad = torch.tensor(g * 1024.0, dtype=torch.float32)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), _adam_reference(w0, grads, n_matrix, cfg), rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in opt.state[p].items()}, p.detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    p.grad = torch.full((n,), float("inf"))
    opt.step()
    assert torch.equal(p.detach(), before[1]) and all(torch.equal(opt.state[p][k], v) for k, v in before[0].items())


def test_tcnn_adam_under_a_real_grad_scaler():
    """The same protocol driven by torch.amp.GradScaler itself (CPU scaler): scaled loss, step, update."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    models = [torch.nn.Linear(3, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = AdamConfig(learning_rate=1e-2, l2_reg=0.5)  # L2 makes the step depend on the gradient's scale
    plain, scaled = (TcnnAdam([{"params": list(m.parameters())}], cfg) for m in models)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(5):
        for model, opt in ((models[0], plain), (models[1], scaled)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if opt is scaled:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_param_groups_split_network_and_encoding():
    from ngraphics.networks import NetworkWithInputEncoding

    model = NetworkWithInputEncoding(2, 3, {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 6},
                                     {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}, seed=1)
    (group,) = tcnn_param_groups(model)
    assert group["params"][0] is model.params and group["n_matrix"] == model.network.n_params
    assert model.params.numel() == model.network.n_params + model.encoding.n_params


# --- configs -----------------------------------------------------------------------------------------------


def test_resolve_config_names_files_and_overrides(tmp_path):
    r = resolve_config(encoding="simplex", overrides=["encoding.n_levels=4", "fit.steps=7"])
    assert r.strict and r.label == "simplex" and r.data["encoding"]["otype"] == "Simplex"
    cfg, ignored = fit_image_config(r.data)
    assert cfg.encoding["n_levels"] == 4 and cfg.fit.steps == 7 and not ignored
    assert cfg.optimizer.learning_rate == 1e-2 and cfg.loss.otype == "RelativeL2"  # tcnn's image demo
    tcnn_json = tmp_path / "config_hash.json"
    tcnn_json.write_text('{\n// a tcnn config\n"encoding": {"otype": "HashGrid", "fixed_point_pos": false},\n'
                         '"optimizer": {"otype": "Adam", "learning_rate": 1e-3, "zz": 1}, "extra": 3}')
    r = resolve_config(tcnn_json)
    assert not r.strict
    cfg, ignored = fit_image_config(r.data, r.where, strict=False)
    assert sorted(ignored) == ["extra", "optimizer.zz"] and cfg.optimizer.learning_rate == 1e-3
    own = tmp_path / "mine.yaml"
    own.write_text("optimizer:\n  learning_rat: 0.1\n")
    r = resolve_config(own)
    with pytest.raises(ConfigError, match="learning_rat.*did you mean learning_rate"):
        fit_image_config(r.data, r.where, strict=r.strict)
    with pytest.raises(ConfigError, match="--encoding.*'Hashgird'.*HashGrid"):
        resolve_config(encoding="Hashgird")


# --- the CLI end to end ----------------------------------------------------------------------------------


def _tiny_image(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32] / 24.0
    img = np.stack([0.5 + 0.5 * np.sin(6 * xx), 0.5 + 0.5 * np.cos(5 * yy), (xx * yy) % 1.0], -1)
    write_image(tmp_path / "tiny.png", img)
    return tmp_path / "tiny.png"


def _fit(tmp_path, *extra):
    from ngraphics.cli import main

    argv = ["fit-image", str(_tiny_image(tmp_path)), "--device", "cpu", "--quiet", "--steps", "60",
            "--batch", "2048", "--set", "encoding.n_levels=6", "--set", "encoding.log2_hashmap_size=10",
            "--set", "fit.eval_every=20", *extra]
    return main(argv)


def test_fit_image_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs" / "tiny"
    assert _fit(tmp_path, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"results in {out}/" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "metrics.jsonl", "reconstruction.png", "summary.json", "target.png"]
    recon, target = read_image(out / "reconstruction.png"), read_image(tmp_path / "tiny.png")
    assert recon.shape == target.shape == (24, 32, 3)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [20, 40, 60]
    assert all({"wall", "loss", "psnr", "samples_per_s", "elapsed_s"} <= m.keys() for m in metrics)
    psnrs = [m["psnr"] for m in metrics]
    assert psnrs[0] < psnrs[1] < psnrs[2]
    # the best constant colour is the per-channel mean; its PSNR bounds what a fit that learned nothing gets
    bound = -10 * np.log10(np.mean((target - target.reshape(-1, 3).mean(0)) ** 2))
    assert psnrs[-1] > bound + 5, (psnrs, bound)
    assert abs(psnr(recon, target) - psnrs[-1]) < 0.2  # the PNG is the 8-bit quantised reconstruction
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["encoding"]["n_levels"] == 6 and config["fit"]["steps"] == 60
    # the resolved config reproduces the run through --config
    assert _fit(tmp_path, "--out", str(out), "--config", str(out / "config.yaml")) == 0
    again = [json.loads(line) for line in (tmp_path / "runs" / "tiny-2" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"], m["psnr"]) for m in again] == [(m["step"], m["loss"], m["psnr"]) for m in metrics]
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_fit_image_bad_key_is_one_line(tmp_path, capsys):
    assert _fit(tmp_path, "--out", str(tmp_path / "r"), "--set", "encoding.n_levelz=3") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "n_levelz" in err and "n_levels" in err
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("fit:\n  stepz: 3\n")
    assert _fit(tmp_path, "--out", str(tmp_path / "r"), "--config", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stepz" in err and str(bad) in err


def test_fit_image_missing_image(tmp_path, capsys):
    from ngraphics.cli import main

    assert main(["fit-image", str(tmp_path / "nope.jpg"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nope.jpg" in err and "not found" in err


def test_fit_image_exr_writes_exr(tmp_path, capsys):
    """HDR input: fit in linear values, write the reconstruction as EXR (and an sRGB PNG)."""
    from ngraphics.cli import main

    path = need_data("images", "albert.exr")
    out = tmp_path / "albert"
    argv = ["fit-image", str(path), "--device", "cpu", "--quiet", "--steps", "20", "--batch", "1024",
            "--max-size", "32", "--set", "encoding.n_levels=4", "--set", "encoding.log2_hashmap_size=8",
            "--out", str(out)]
    assert main(argv) == 0
    recon = read_image(out / "reconstruction.exr")
    assert recon.shape == (32, 32, 4) and recon.dtype == np.float32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hdr"] and summary["original_size"] == [1024, 1024]


def test_write_exr_then_fit_round_trip_names(tmp_path):
    """A 1-channel EXR target keeps one channel through the fit (Y in, Y out)."""
    from ngraphics.cli import main

    write_exr(tmp_path / "grey.exr", np.linspace(0, 2, 16 * 16, dtype=np.float32).reshape(16, 16))
    out = tmp_path / "grey"
    argv = ["fit-image", str(tmp_path / "grey.exr"), "--device", "cpu", "--quiet", "--steps", "5", "--batch",
            "256", "--encoding", "Frequency", "--out", str(out)]
    assert main(argv) == 0
    assert read_image(out / "reconstruction.exr").shape == (16, 16, 1)
    assert read_image(out / "reconstruction.png").shape == (16, 16, 1)


# --- the run folder: complete or absent, never overwritten ------------------------------------------------


_FILES = ["config.yaml", "metrics.jsonl", "reconstruction.png", "summary.json", "target.png"]


def _tiny_fitter(steps: int = 30) -> tuple[ImageFitter, Target]:
    yy, xx = np.mgrid[0:12, 0:16] / 12.0
    image = np.stack([0.5 + 0.5 * np.sin(4 * xx), 0.5 + 0.5 * np.cos(3 * yy), xx * yy / 2], -1)
    image = image.astype(np.float32)
    config, _ = fit_image_config({
        "encoding": {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8},
        "network": {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1},
        "fit": {"steps": steps, "batch_size": 128, "eval_every": 10},
    })
    return ImageFitter(image, config, device="cpu"), Target(image, "tiny", "tiny.png", False, (12, 16))


def _stop_at(fitter: ImageFitter, step: int, error: BaseException) -> None:
    """Make `fitter.train_step` raise `error` when it is called for step `step + 1`."""
    real = fitter.train_step

    def train_step():
        if fitter.step == step:
            raise error
        return real()

    fitter.train_step = train_step


def _fit_quietly(fitter, target, out):
    config = {"fit": {"steps": fitter.config.fit.steps}}
    return fit(fitter, target, out, resolved_config=config, progress=False)


def test_fit_error_mid_training_leaves_no_folder(tmp_path):
    fitter, target = _tiny_fitter()
    _stop_at(fitter, 15, RuntimeError("device lost"))
    with pytest.raises(RuntimeError, match="device lost"):
        _fit_quietly(fitter, target, tmp_path / "runs" / "tiny")
    assert list((tmp_path / "runs").iterdir()) == []  # neither the folder nor its temporary build


def test_fit_ctrl_c_mid_training_writes_the_complete_folder(tmp_path):
    fitter, target = _tiny_fitter()
    _stop_at(fitter, 15, KeyboardInterrupt())
    summary = _fit_quietly(fitter, target, tmp_path / "runs" / "tiny")
    out = tmp_path / "runs" / "tiny"
    assert summary["interrupted"] and summary["steps"] == 15 and summary["folder"] == str(out)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    assert sorted(p.name for p in out.iterdir()) == _FILES
    written = json.loads((out / "summary.json").read_text())
    assert written["interrupted"] and written["steps"] == 15
    assert written["psnr"] == pytest.approx(summary["psnr"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10]  # the evaluations before the interrupt
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"fit": {"steps": 30}}


def test_fit_ctrl_c_while_writing_outputs_leaves_no_folder(tmp_path, monkeypatch):
    fitter, target = _tiny_fitter(steps=10)
    real = image_fitting._write_images

    def write_then_interrupt(folder, rendered, target):
        real(folder, rendered, target)  # the images are there, summary.json is not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(image_fitting, "_write_images", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _fit_quietly(fitter, target, tmp_path / "runs" / "tiny")
    assert list((tmp_path / "runs").iterdir()) == []


def test_fit_never_overwrites_a_folder_even_when_its_name_is_taken_at_the_last_moment(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "tiny").mkdir(parents=True)
    (runs / "tiny" / "mine.txt").write_text("keep me")
    real = image_fitting.unique_folder
    calls = []

    def racing_unique_folder(path):
        found = real(path)
        if not calls:  # another process creates (and starts filling) the free name before our rename
            found.mkdir()
            (found / "config.yaml").write_text("theirs\n")
        calls.append(found)
        return found

    monkeypatch.setattr(image_fitting, "unique_folder", racing_unique_folder)
    fitter, target = _tiny_fitter(steps=10)
    summary = _fit_quietly(fitter, target, runs / "tiny")
    assert [p.name for p in calls] == ["tiny-2", "tiny-3"] and summary["folder"] == str(runs / "tiny-3")
    assert (runs / "tiny" / "mine.txt").read_text() == "keep me" and len(list((runs / "tiny").iterdir())) == 1
    assert (runs / "tiny-2" / "config.yaml").read_text() == "theirs\n"
    assert sorted(p.name for p in (runs / "tiny-3").iterdir()) == _FILES
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny-2", "tiny-3"]


def test_fit_image_device_flag_errors_name_the_flag(tmp_path, capsys):
    for device, message in (("gpu0", "--device: 'gpu0' is not a device"),
                            ("mps", "--device: 'mps': ngraphics runs on cpu or cuda")):
        assert _fit(tmp_path, "--out", str(tmp_path / "r"), "--device", device) == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _fit(tmp_path, "--out", str(tmp_path / "r"), "--device", "cuda:1") == 2
        err = capsys.readouterr().err
        assert "--device: 'cuda:1' requested but torch.cuda.is_available() is False" in err
    assert not (tmp_path / "r").exists()

"""The method protocol, checked with the real Trainer and three tiny fake methods (no NeRF involved).

Each fake learns something small from one kind of batch — a colour from rays, an image from whole views, a
texture from image points — and goes through everything the trainer, the evaluators and the CLI do with a
method: train, log throughput in the sampler's unit, save, resume to the same weights, evaluate (with a
metric of the method's own), render, restore from the run folder. A new method can copy this file to check
itself against the protocol. docs/architecture.md walks through `FlatColour`.
"""

from __future__ import annotations

import ast
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.cli import main
from ngraphics.data.batches import PointSampler, RaySampler, ViewSampler
from ngraphics.data.scene import SceneData
from ngraphics.errors import ConfigError
from ngraphics.methods import METHODS
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method
from ngraphics.training.run_config import parse_run_config
from ngraphics.training.run_folder import RunFolder
from ngraphics.training.trainer import Trainer, restore_run

# --- three fake methods ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeConfig:
    """lr: Adam's learning rate; batch_size: rays or points per step (views: always one)."""

    lr: float = 0.05
    batch_size: int = 64


class FlatColour(Method):
    """The simplest method: one colour for the whole scene, learned from rays (the mean training colour)."""

    Config = FakeConfig
    exports = ("colour",)

    def __init__(self, config: FakeConfig, scene: SceneData, device: torch.device, dist: Dist = SINGLE_PROCESS):
        self.config, self.device = config, device
        self.colour = torch.zeros(3, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.colour], lr=config.lr)

    def sampler(self, scene: SceneData, device: torch.device) -> RaySampler:
        return RaySampler(scene, device, self.config.batch_size)

    def train_step(self, batch: dict) -> dict:
        loss = (self.colour - batch["rgb"]).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict:
        C, H, W = len(cameras), int(cameras.height[0]), int(cameras.width[0])
        rgb = self.colour.detach().clamp(0, 1).expand(C, H, W, 3).clone()
        return {"rgb": rgb, "alpha": torch.ones(C, H, W, 1), "depth": torch.ones(C, H, W, 1)}

    def metrics(self, scene: SceneData, renders: list[dict]) -> dict:
        """How far the colour is from the mean of the eval images (a number only this method knows)."""
        mean = torch.stack([scene.rgb_on(i, (1.0, 1.0, 1.0)).mean((0, 1)) for i in range(len(scene))]).mean(0)
        return {"colour_error": float((self.colour.detach() - mean).abs().max())}

    def export(self, kind: str, path: str | Path) -> Path:
        if kind != "colour":
            return super().export(kind, path)
        Path(path).write_text(" ".join(f"{v:.6f}" for v in self.colour.tolist()) + "\n")
        return Path(path)

    def state_dict(self) -> dict:
        return {"colour": self.colour.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["colour"].shape != self.colour.shape:
            raise ConfigError(f"colour: checkpoint holds {tuple(state['colour'].shape)}, config makes (3,)")
        with torch.no_grad():
            self.colour.copy_(state["colour"])
        self.optimizer.load_state_dict(state["optimizer"])


class MeanImage(FlatColour):
    """One image for every view, learned from whole views (all views of the scene have one size)."""

    def __init__(self, config: FakeConfig, scene: SceneData, device: torch.device, dist: Dist = SINGLE_PROCESS):
        super().__init__(config, scene, device, dist)
        H, W = scene.images[0].shape[:2]
        self.colour = torch.zeros(H, W, 3, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.colour], lr=config.lr)

    def sampler(self, scene: SceneData, device: torch.device) -> ViewSampler:
        return ViewSampler(scene, device)

    @torch.no_grad()
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict:
        C = len(cameras)
        return {"rgb": self.colour.detach().clamp(0, 1).expand(C, -1, -1, -1).clone()}

    def metrics(self, scene: SceneData, renders: list[dict]) -> dict:
        return {}


class Texture(FlatColour):
    """A 4x4 colour texture over image coordinates, learned from image points (bilinear, like fit-image)."""

    def __init__(self, config: FakeConfig, scene: SceneData, device: torch.device, dist: Dist = SINGLE_PROCESS):
        super().__init__(config, scene, device, dist)
        self.colour = torch.zeros(1, 3, 4, 4, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.colour], lr=config.lr)

    def sampler(self, scene: SceneData, device: torch.device) -> PointSampler:
        return PointSampler(scene, device, self.config.batch_size)

    def lookup(self, uv: torch.Tensor) -> torch.Tensor:
        """uv: (N, 2) in [0, 1] -> (N, 3)."""
        grid = (uv * 2 - 1).view(1, 1, -1, 2)
        return torch.nn.functional.grid_sample(self.colour, grid, align_corners=False)[0, :, 0].T

    def train_step(self, batch: dict) -> dict:
        rgba = batch["rgb"]  # image points carry every channel: composite RGBA over white here
        target = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]) if rgba.shape[1] == 4 else rgba
        loss = (self.lookup(batch["uv"]) - target).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "psnr": -10 * torch.log10(loss.detach())}

    @torch.no_grad()
    def render(self, cameras: Cameras, background: torch.Tensor | None = None) -> dict:
        H, W = int(cameras.height[0]), int(cameras.width[0])
        v, u = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
        rgb = self.lookup(torch.stack([u, v], -1).reshape(-1, 2)).reshape(H, W, 3).clamp(0, 1)
        return {"rgb": rgb.expand(len(cameras), -1, -1, -1).clone()}

    def metrics(self, scene: SceneData, renders: list[dict]) -> dict:
        return {}


FAKES = {"fake-rays": (FlatColour, "rays"), "fake-views": (MeanImage, "views"), "fake-points": (Texture, "points")}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The fakes are rows of METHODS for the duration of a test: that is all a new method needs."""
    for name, (cls, _unit) in FAKES.items():
        monkeypatch.setitem(METHODS, name, cls)


def _config(method: str, **trainer):
    mapping = {
        "method": method,
        "data": {"options": {"resolution": 12, "n_views": 5, "mesh_resolution": 0}, "eval_views": 2},
        "trainer": {"steps": 8, "log_every": 2, "save_every": 4, "eval_every": 4, "progress": False,
                    "device": "cpu", **trainer},
    }
    return parse_run_config(mapping, "test")


def _weights(trainer: Trainer) -> torch.Tensor:
    return trainer.method.colour.detach().clone()


# --- the protocol, for each kind of batch ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAKES))
def test_train_save_resume_evaluate_render(name, tmp_path):
    cls, unit = FAKES[name]
    config = _config(name)
    reference = Trainer(config, RunFolder(tmp_path / "reference"))
    first = reference.train()
    assert reference.step == 8 and first["n_views"] == 5
    # training learned something: the final render beats the untrained (black) one
    untrained = cls(config.model, reference.eval_scene, torch.device("cpu"))
    from ngraphics.training.evaluation import evaluate_method

    assert first["psnr"] > evaluate_method(untrained, reference.eval_scene, "white")["psnr"] + 1.0

    run = RunFolder(tmp_path / "run")
    trainer = Trainer(config, run)

    def crash(trainer, step, losses):
        if step == 6:
            raise RuntimeError("simulated crash")

    trainer.hooks.append(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    resumed = Trainer(config, run, resume=True)
    assert resumed.step == 4
    result = resumed.train()
    torch.testing.assert_close(_weights(resumed), _weights(reference))  # same random streams, same weights
    assert result["psnr"] == pytest.approx(first["psnr"])

    records = run.read_metrics()
    train = [r for r in records if r["split"] == "train"]
    assert all(r[f"{unit}_per_s"] > 0 for r in train)  # throughput in the sampler's unit
    evals = [r for r in records if r["split"] == "test"]
    assert [r["n_views"] for r in evals] == [2, 5]  # periodic (step 4) on eval_views, final (step 8) on all
    if cls is FlatColour:  # the method's own metric reaches the log
        assert all("colour_error" in r for r in evals)
        assert evals[-1]["colour_error"] < 0.5

    _config_back, method, scene, checkpoint = restore_run(run)
    assert checkpoint.name == "step_0000008.pt"
    torch.testing.assert_close(method.colour, _weights(reference))
    image = method.render(scene.cameras[0])["rgb"]
    assert image.shape == (1, 12, 12, 3)


@pytest.mark.parametrize("name", list(FAKES))
def test_cli_trains_evaluates_and_renders_any_method(name, tmp_path, capsys):
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"method: {name}\ndata:\n  options: {{resolution: 12, n_views: 5, mesh_resolution: 0}}\n"
                      "trainer: {steps: 4, log_every: 2, save_every: 0}\n")
    assert main(["train", str(config), "--runs-dir", str(tmp_path), "--name", "run", "--quiet"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--no-images"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["render", str(tmp_path / "run"), "--frames", "2", "--format", "png"]) == 0
    assert len(list((tmp_path / "run" / "video" / "orbit").glob("frame_*.png"))) == 2


def test_export_is_the_methods_own(tmp_path):
    trainer = Trainer(_config("fake-rays", steps=2), RunFolder(tmp_path / "run"))
    trainer.train()
    path = trainer.method.export("colour", tmp_path / "colour.txt")
    assert [float(v) for v in path.read_text().split()] == pytest.approx(trainer.method.colour.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match="export 'mesh': FlatColour exports colour"):
        trainer.method.export("mesh", tmp_path / "x.ply")
    with pytest.raises(ConfigError, match="_NoExports exports nothing"):
        _NoExports().export("mesh", tmp_path / "x.ply")


class _NoExports(Method):
    """Only what `Method.export`'s default needs (the class name and `exports`)."""

    Config = FakeConfig

    def __init__(self, *args): ...
    def sampler(self, scene, device): ...
    def train_step(self, batch): ...
    def render(self, cameras, background=None): ...
    def state_dict(self): ...
    def load_state_dict(self, state): ...


def test_a_checkpoint_that_does_not_fit_is_a_config_error(tmp_path):
    run = RunFolder(tmp_path / "run")
    Trainer(_config("fake-rays", steps=2), run).train()
    with pytest.raises(ConfigError, match="holds method 'fake-rays'"):
        Trainer(_config("fake-views"), run, resume=True)


# --- concurrency and ranks ------------------------------------------------------------------------------------


def test_rendering_from_another_thread_under_the_lock_changes_nothing(tmp_path):
    config = _config("fake-points", steps=40, eval_every=0, save_every=0)
    reference = Trainer(config, RunFolder(tmp_path / "reference"))
    reference.train()

    trainer = Trainer(config, RunFolder(tmp_path / "run"))
    camera = trainer.eval_scene.cameras[0]
    renders, stop = [], threading.Event()

    def viewer():
        while not stop.is_set():
            with trainer.lock:  # between two steps
                renders.append(trainer.method.render(camera)["rgb"])

    thread = threading.Thread(target=viewer)
    thread.start()
    try:
        trainer.train()
    finally:
        stop.set()
        thread.join()
    assert renders  # the viewer rendered while training ran
    torch.testing.assert_close(_weights(trainer), _weights(reference))


def test_only_the_main_rank_writes_and_ranks_draw_different_batches(tmp_path):
    config = _config("fake-rays", steps=4)
    run = RunFolder(tmp_path / "rank1")
    other = Trainer(config, run, dist=Dist(rank=1, world_size=2))
    assert other.train() == {} and not run.path.exists()  # no config, logs, checkpoints or renders
    main_rank = Trainer(config, RunFolder(tmp_path / "rank0"))
    torch.manual_seed(Dist(rank=0, world_size=2).seed(0))
    batch0 = main_rank.sampler.sample()["rgb"]
    torch.manual_seed(Dist(rank=1, world_size=2).seed(0))
    batch1 = other.sampler.sample()["rgb"]
    assert not torch.equal(batch0, batch1)
    with pytest.raises(ValueError, match="rank 2 is not in 0 .. world_size - 1 = 1"):
        Dist(rank=2, world_size=2)


def test_the_trainer_never_asks_which_method_it_runs():
    """No `getattr(method, ...)`, no `isinstance` on methods, no method names in the trainer's code."""
    root = Path(__file__).resolve().parents[1] / "ngraphics" / "training"
    for path in (root / "trainer.py", root / "evaluation.py", root / "step_profile.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("getattr", "hasattr"), f"{path.name}:{node.lineno}"
                if node.func.id in ("isinstance", "type"):
                    assert "method" not in ast.unparse(node.args[0]), f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not any(m in node.value for m in ("nerf", "neus", "splat")), f"{path.name}:{node.lineno}"

"""The shared trainer: the loop, evaluation, logs, checkpoints, Ctrl-C — for any method.

The trainer decides *when*: sample a batch, step, log, evaluate, save, stop. The method decides *what*
(`ngraphics.methods.base.Method`): it builds its sampler (`method.sampler(scene, device)`: rays, whole views or
image points), learns from a batch (`train_step`), renders cameras (`render`). The trainer never asks which
method it runs.

Every batch gets `step` (int, from 0) and `progress` in [0, 1] (the larger of step / steps and elapsed /
time_budget_s), so schedules work for step and time budgets alike. Losses come back as floats or 0-dim
tensors; the trainer reads them (a host sync) only when it logs; `loss` and `psnr` go on the progress bar,
throughput in the sampler's unit (`rays_per_s`, `views_per_s`, `points_per_s`).

Concurrency: `Trainer.lock` is held for each step (sample, train_step, step counter); another thread (a
viewer) that renders takes it, so it sees the weights between two steps. Methods render from a shadow copy of
their evaluation weights, so rendering never disturbs training state.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ngraphics import ops
from ngraphics.config import apply_overrides, to_dict
from ngraphics.data.scene import SceneData
from ngraphics.devices import peak_gpu_gb, pick_device
from ngraphics.networks.finite_checks import check_finite_boundaries
from ngraphics.errors import ConfigError
from ngraphics.methods import method_class
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method
from ngraphics.training import distributed
from ngraphics.training.checkpoint import load_method_state
from ngraphics.training.evaluation import evaluate_method
from ngraphics.training.progress import progress_bar, rate_text, round_record
from ngraphics.training.run_config import RunConfig, anchor_data_path, load_split, parse_run_config
from ngraphics.training.run_folder import RunFolder
from ngraphics.training.step_profile import StepProfile

Hook = Callable[["Trainer", int, dict], None]


class Trainer:
    """Runs one method on one dataset inside a run folder.

    Args:
        config: the resolved run config.
        run: the run folder (created if needed; config.yaml written unless resuming).
        hooks: callables `hook(trainer, step, losses)` run after every step (e.g. a live viewer).
        resume: load the newest checkpoint in the run folder and continue from its step.
        dist: this process's rank among the run's processes; only the main rank logs, evaluates and saves.
    """

    def __init__(self, config: RunConfig, run: RunFolder, *, hooks: list[Hook] = (), resume: bool = False,
                 dist: Dist = SINGLE_PROCESS):
        config = anchor_data_path(config, run.path)  # data.path absolute, and relative to the run folder
        self.config, self.run, self.hooks, self.dist = config, run, list(hooks), dist
        self.device = distributed.rank_device(pick_device(config.trainer.device, "trainer.device"), dist)
        self.lock = threading.Lock()
        torch.manual_seed(dist.seed(config.trainer.seed))
        self.train_scene = load_split(config.data, config.data.train_split)
        # every split the run needs is loaded before the first step: a bad test split fails now, not at the end
        self.eval_scene: SceneData | None = load_split(config.data, config.data.eval_split) if dist.is_main else None
        if dist.world_size > 1:
            torch.manual_seed(config.trainer.seed)  # every rank builds the same initial weights ...
        self.method: Method = method_class(config.method)(config.model, self.train_scene, self.device, dist)
        if dist.world_size > 1:
            torch.manual_seed(dist.seed(config.trainer.seed))  # ... and draws batches of its own
        self.sampler = self.method.sampler(self.train_scene, self.device)
        if config.trainer.check_finite:
            check_finite_boundaries(self.method)
        self.step = 0
        self.elapsed = 0.0  # training seconds, evaluation and saving excluded
        self._saved_at = 0.0  # training time of the last checkpoint
        self._evaluated_times: set[float] = set()
        self._ops_logged = False
        if resume:
            found = run.checkpoints.latest(map_location="cpu")
            if found is None:
                raise ConfigError(f"{run.path}: nothing to resume (no checkpoint in {run.checkpoints.folder})")
            self.load_state(found[1], found[0])
            if self._done():
                raise ConfigError(f"{run.path}: already finished ({self.step} steps, {self.elapsed:.0f} s of "
                                  f"training; `ngraphics eval {run.path}` evaluates it); to train longer add "
                                  f"--set trainer.steps={2 * self.step}")
            if dist.is_main:  # records after the checkpoint are redone: no step appears twice
                run.drop_records_after(self.step)
                print(f"resumed {found[0]} at step {self.step}", file=sys.stderr)
        if dist.is_main:
            run.create(config.to_dict())  # on resume too: --set overrides (e.g. more steps) are part of the run

    # --- state ---

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": "ngraphics-checkpoint", "version": 1, "method_name": self.config.method,
                "step": self.step, "elapsed": self.elapsed, "model_config": to_dict(self.config.model),
                "method": self.method.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": rng}

    def load_state(self, state: dict, path: Path | None = None) -> None:
        path = path or self.run.checkpoints.folder
        if state.get("format") != "ngraphics-checkpoint":
            raise ConfigError(f"{path}: not an ngraphics checkpoint")
        if state.get("method_name") != self.config.method:
            raise ConfigError(f"{path}: holds method {state.get('method_name')!r}, config says {self.config.method!r}")
        load_method_state(self.method, state, path, to_dict(self.config.model))
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self._saved_at = self.elapsed
        self._evaluated_times = {s for s in self.config.trainer.eval_times if s <= self.elapsed}
        if not self.dist.is_main:  # the checkpoint holds the main rank's random and sampler state only
            torch.manual_seed(distributed.resumed_seed(self.config.trainer.seed, self.dist, self.step))
            return
        self.sampler.load_state_dict(state.get("sampler", {}))
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def save(self) -> Path | None:
        """Write a checkpoint (main rank only); returns its path."""
        self._saved_at = self.elapsed
        if not self.dist.is_main:
            return None
        return self.run.checkpoints.save(self.step, self.state())

    # --- evaluation ---

    def evaluate(self, views: list[int] | None = None, out_dir: Path | None = None) -> dict:
        """PSNR, SSIM and the method's own metrics of renders of eval views (over `eval_background`).

        Args:
            views: eval view indices; None = all.
            out_dir: if given, write `<name>.png` renders there (and `<name>_depth.png`, normalised).
        Returns: see `evaluate_method`.
        """
        return evaluate_method(self.method, self.eval_scene, self.config.data.eval_background, views, out_dir,
                               spp=self.config.trainer.eval_spp, progress=self.config.trainer.progress)

    def _eval_subset(self) -> list[int]:
        n, k = len(self.eval_scene), self.config.data.eval_views
        if k <= 0 or k >= n:
            return list(range(n))
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    # --- the loop ---

    def progress(self) -> float:
        t = self.config.trainer
        p = self.step / t.steps
        if t.time_budget_s > 0:
            p = max(p, self.elapsed / t.time_budget_s)
        return min(p, 1.0)

    def _done(self) -> bool:
        t = self.config.trainer
        return self.step >= t.steps or (t.time_budget_s > 0 and self.elapsed >= t.time_budget_s)

    def _clock_decision_near(self, dt: float) -> bool:
        """Would this step's host time carry the training clock past an evaluation time or the budget?"""
        t = self.config.trainer
        marks = [s for s in t.eval_times if s not in self._evaluated_times]
        if t.time_budget_s > 0:
            marks.append(t.time_budget_s)
        return any(self.elapsed + dt >= m for m in marks)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self) -> dict:
        """Run until `steps` (or the time budget); returns the final evaluation ({} off the main rank).

        Ctrl-C saves a checkpoint and returns {"interrupted": True}; any other exception leaves the last
        checkpoint as it was and propagates."""
        t, main = self.config.trainer, self.dist.is_main
        bar = progress_bar(t.steps, self.step, enabled=t.progress and main)
        unit = self.sampler.unit
        log_count, log_time, last = 0, 0.0, {}
        if main:
            print(f"run folder: {self.run.path}  device: {self.device}  method: {self.config.method}",
                  file=sys.stderr)
        profiler = None
        try:
            while not self._done():
                if main and t.profile_at and self.step == t.profile_at:
                    profiler = StepProfile(self)
                elif profiler is not None and self.step == t.profile_at + t.profile_steps:
                    try:
                        profiler.finish(t.profile_steps)
                    except Exception as err:  # noqa: BLE001 - a profile is never worth losing the run
                        print(f"profile failed: {type(err).__name__}: {err}", file=sys.stderr)
                    profiler = None
                start = time.perf_counter()
                with self.lock:
                    batch = self.sampler.sample()
                    batch["step"], batch["progress"] = self.step, self.progress()
                    losses = self.method.train_step(batch)
                    self.step += 1
                log_now = self.step % t.log_every == 0 or self._done()
                if log_now:
                    self._sync()
                    last = {k: float(v) for k, v in losses.items()}
                dt = time.perf_counter() - start
                if self.device.type == "cuda" and self._clock_decision_near(dt):
                    # steps queue work without waiting for the GPU, so the host clock runs ahead of it; wait
                    # before the clock decides anything (an evaluation time, the time budget)
                    self._sync()
                    dt = time.perf_counter() - start
                # one training clock for all ranks (the main rank's): time budgets, evaluation times and
                # timed saves decide alike everywhere, so no rank stops or waits alone
                dt = distributed.from_main(dt, self.dist)
                self.elapsed += dt
                log_time += dt
                log_count += self.sampler.count(batch)
                for hook in self.hooks:  # after the clock: a viewer's rendering is not training time
                    hook(self, self.step, losses)
                if log_now:  # the run's throughput: the units of every rank
                    log_count = distributed.total(log_count, self.dist)
                if log_now and main:
                    self._log_train(last, unit, log_count / max(log_time, 1e-9))
                    bar.set_postfix_str(_postfix(last, log_count, log_time, unit))
                if log_now:
                    log_count, log_time = 0, 0.0
                bar.update(1)
                due = [s for s in t.eval_times if self.elapsed >= s and s not in self._evaluated_times]
                if main and (t.eval_every and self.step % t.eval_every == 0 or due) and not self._done():
                    self._evaluated_times.update(due)
                    self._log_eval(self.evaluate(self._eval_subset()))
                save_due = t.save_every and self.step % t.save_every == 0
                if t.save_every_s and self.elapsed - self._saved_at >= t.save_every_s:
                    save_due = True  # by training time too: a SIGKILL loses at most save_every_s seconds
                if save_due and not self._done():
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            path = self.save()
            if main:
                print(f"\ninterrupted at step {self.step}: checkpoint {path}\n"
                      f"resume with: ngraphics train --resume {self.run.path}", file=sys.stderr)
            return {"interrupted": True}
        bar.close()
        self.save()
        if not main:
            return {}
        result = self.evaluate(None, self.run.renders if t.render_final else None)
        self._log_eval(result)
        return result

    def _log_train(self, losses: dict, unit: str, rate: float) -> None:
        record = {"step": self.step, "time": round(self.elapsed, 3), "split": "train",
                  f"{unit}_per_s": round(rate, 1), **round_record(losses)}
        if self.device.type == "cuda":
            record["peak_gpu_gb"] = round(peak_gpu_gb(self.device), 3)
        self.run.log(record)
        choices = ops.decisions()
        if choices and not self._ops_logged:  # which backend each hot op took, once a run
            self._ops_logged = True
            self.run.log({"step": self.step, "split": "ops", **{k: v["backend"] for k, v in choices.items()}})

    def _log_eval(self, result: dict) -> None:
        record = {k: v for k, v in result.items() if k != "per_view"}
        self.run.log({"step": self.step, "time": round(self.elapsed, 3), "split": self.config.data.eval_split,
                      **round_record(record)})
        extra = "".join(f", {k} {v:.4g}" for k, v in record.items()
                        if k not in ("psnr", "ssim", "n_views") and isinstance(v, float))
        print(f"step {self.step}: {self.config.data.eval_split} PSNR {result['psnr']:.2f} dB, "
              f"SSIM {result['ssim']:.4f}{extra} ({result['n_views']} views)", file=sys.stderr)


def restore_run(run: RunFolder, split: str | None = None, device: str = "auto", overrides: list[str] = ()):
    """Rebuild a trained method from its run folder for evaluation or rendering.

    The method is built on `split` (default: the eval split) of the run's dataset, which fixes the same scene
    box as training, and loads the newest checkpoint. Returns (config, method, scene, checkpoint path)."""
    where = str(run.config_path)
    mapping = apply_overrides(run.read_config(), list(overrides)) if overrides else run.read_config()
    config = anchor_data_path(parse_run_config(mapping, where), run.path)
    found = run.checkpoints.latest(map_location="cpu")
    if found is None:
        raise ConfigError(f"{run.path}: no checkpoint to load (train it first, or resume it)")
    path, state = found
    if state.get("method_name") != config.method:
        raise ConfigError(f"{path}: holds method {state.get('method_name')!r}, {where} says {config.method!r}")
    scene = load_split(config.data, split or config.data.eval_split)
    torch.manual_seed(config.trainer.seed)
    method = method_class(config.method)(config.model, scene, pick_device(device, "--device"), SINGLE_PROCESS)
    load_method_state(method, state, path, to_dict(config.model))
    return config, method, scene, path


def _postfix(losses: dict, count: float, seconds: float, unit: str) -> str:
    parts = [f"{k} {losses[k]:.4g}" for k in ("loss", "psnr") if k in losses]
    return ", ".join(parts + [rate_text(count, seconds, unit)])


__all__ = ["Hook", "Trainer", "restore_run"]

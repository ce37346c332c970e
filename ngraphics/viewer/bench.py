"""Benchmark: what the live viewer costs training, and how fast it answers a moving camera.

    python -m ngraphics.viewer.bench                        # CPU, the procedural scene (bundled nerf/default)
    python -m ngraphics.viewer.bench --device cuda --config nerf/lego --data path/to/lego --resolution 800

Training runs of the same config and seed, `--steps` steps each: no viewer; the viewer with a connected
headless Chromium whose camera stays still (frames follow the model as it learns); the same with the camera
orbiting (moved through viser's API every 50 ms). Each run with a viewer sits between two runs without one
(none, still, none, moving, ..., none; `--repeat N` times), and its share kept is against the mean of those
two, which cancels a shared machine's drift. Reported per run: training steps/s (wall time between steps, the
viewer's hook included) and the share kept, frames handed to viser, the seconds the hook took in the training
thread, the browser's CPU seconds (all its processes) and the load average at the start and end. Then, on the
trained model with the viewer's own thread: frames/s while the camera moves (reduced size) and the latency
from the camera's last move to the full-size frame (`--resolution` a side). Needs chromium + chromium-driver and selenium (`ngraphics.viewer.browser`).

`--client socket` replaces the browser by `ngraphics.viewer.socket_client` (viser's websocket protocol spoken
from Python: no browser to install, none drawing on the CPU). Its camera moves 60 times a second in the
orbiting run and the interactive part, and frames/s and latency are measured where the frames arrive:

    python -m ngraphics.viewer.bench --client socket --device cuda --config nerf/lego --data path/to/lego \
        --steps 2000 --resolution 800 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _rotate(offset: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """`offset` (3,) turned by `angle` radians about the unit vector `axis` (3,) (Rodrigues)."""
    c, s = np.cos(angle), np.sin(angle)
    return offset * c + np.cross(axis, offset) * s + axis * np.dot(axis, offset) * (1 - c)


def _orbit(viewer, stop: threading.Event, centre: np.ndarray, period_s: float = 0.05) -> None:
    """Every browser's camera through viser's API: 0.05 rad (about 3 degrees) a move about the world's z axis
    through the centre, every `period_s`."""
    z = np.array([0.0, 0.0, 1.0])
    while not stop.is_set():
        for view in list(viewer.views.values()):
            cam = view.client.camera
            cam.position = centre + _rotate(np.asarray(cam.position) - centre, z, 0.05)
            cam.look_at = centre
        stop.wait(period_s)


class _SocketOrbit:
    """The socket client's camera: starts at the viewer's initial camera and orbits the scene's centre about
    its up direction, 0.05 rad a move, as a browser whose camera is dragged sends its moves."""

    def __init__(self, viewer, client):
        camera = viewer.server.initial_camera
        self.client, self.centre = client, np.asarray(camera.look_at, float)
        self.up = np.asarray(camera.up, float) / np.linalg.norm(camera.up)
        self.offset = np.asarray(camera.position, float) - self.centre

    def look(self) -> float:
        return self.client.look(self.centre + self.offset, self.centre, self.up)

    def move(self) -> float:
        self.offset = _rotate(self.offset, self.up, 0.05)
        return self.look()

    def run(self, stop: threading.Event, period_s: float) -> None:
        while not stop.is_set():
            self.move()
            stop.wait(period_s)


def _train(args, root: Path, name: str, client: str | None) -> dict:
    from ngraphics.training.run_config import find_config, load_run_config
    from ngraphics.training.run_folder import RunFolder
    from ngraphics.training.trainer import Trainer
    from ngraphics.viewer import Viewer, ViewerConfig
    from ngraphics.viewer.browser import headless_chromium
    from ngraphics.viewer.socket_client import SocketClient

    overrides = [f"trainer.steps={args.steps}", "trainer.progress=false", "trainer.eval_every=0",
                 "trainer.save_every=0", "trainer.save_every_s=0", "trainer.render_final=false",
                 f"trainer.device={args.device}", "data.eval_views=1"] + list(args.set)
    if args.data:
        overrides.append(f"data.path={args.data}")
    trainer = Trainer(load_run_config(find_config(args.config), overrides), RunFolder(root / name))
    load = os.getloadavg()[0]
    if client is None:
        trainer.hooks.append(clock := _WallClock())
        trainer.train()
        return {"steps_per_s": clock.steps_per_s(), "load": (load, os.getloadavg()[0])}
    viewer = Viewer(trainer.method, trainer.train_scene, trainer.run.path,
                    ViewerConfig(port=args.port, max_resolution=args.resolution, render_share=args.share),
                    lock=trainer.lock, training=True)
    timed = _Timed(viewer)
    trainer.hooks += [timed, clock := _WallClock()]  # the clock after the viewer: its renders count
    stop = threading.Event()
    socket = args.client == "socket"
    try:
        with (SocketClient(viewer.url, args.resolution, args.resolution) if socket else
              headless_chromium(args.resolution + 400, args.resolution + 150)) as connection:
            orbit = _SocketOrbit(viewer, connection) if socket else None
            if socket:
                orbit.look()  # the first camera message connects the client
            else:
                connection.get(viewer.url)
            deadline = time.time() + 60
            while not viewer.views and time.time() < deadline:
                time.sleep(0.05)
            viewer.show_cameras(False)
            if client == "moving":
                centre = trainer.train_scene.aabb.double().mean(0).numpy()
                target, targs = (orbit.run, (stop, 1 / 60)) if socket else (_orbit, (viewer, stop, centre))
                threading.Thread(target=target, args=targs, daemon=True).start()
            browser = [] if socket else _descendants(connection.service.process.pid)
            cpu0 = sum(map(_cpu_seconds, browser))
            trainer.train()
            stop.set()
            frames = sum(v.frames for v in viewer.views.values())
            result = {"steps_per_s": clock.steps_per_s(), "frames": frames, "hook_s": timed.seconds,
                      "wall_s": clock.wall_s(), "load": (load, os.getloadavg()[0])}
            if not socket:
                result["browser_cpu_s"] = sum(map(_cpu_seconds, browser)) - cpu0
            if client == "still":
                result.update(_interactive_socket(viewer, orbit) if socket else _interactive(viewer, trainer))
            return result
    finally:
        stop.set()
        viewer.close()


def _interactive(viewer, trainer) -> dict:
    """The trained model through the viewer's own thread: frames/s while orbiting, latency to a full frame."""
    viewer.start()
    view = next(iter(viewer.views.values()))
    centre = trainer.train_scene.aabb.double().mean(0).numpy()
    stop = threading.Event()
    n0, t0 = view.frames, time.perf_counter()
    orbit = threading.Thread(target=_orbit, args=(viewer, stop, centre), daemon=True)
    orbit.start()
    time.sleep(5.0)
    stop.set()
    orbit.join()
    stopped = time.perf_counter()
    moving_fps = (view.frames - n0) / (stopped - t0)
    small = view.last_size
    version = view.version
    deadline = time.time() + 60
    while time.time() < deadline and not (view.sent_full and view.sent_version >= version):
        time.sleep(0.002)
    full_at = next((t for v, t, full in reversed(view.log) if full), float("nan"))
    return {"moving_fps": moving_fps, "moving_size": small, "full_size": view.last_size,
            "still_to_full_s": full_at - stopped}


def _interactive_socket(viewer, orbit: _SocketOrbit, seconds: float = 5.0) -> dict:
    """`_interactive` as the socket client sees it (the viewer's own thread on the trained model): it orbits,
    moving 60 times a second for `seconds` (a dragged camera), counting the frames that arrive; then stops and
    waits for the full-size frame. Latency runs from the client's last camera message to that frame's arrival
    at the client (render, JPEG, websocket)."""
    client = orbit.client
    viewer.start()
    start = time.perf_counter()
    n0 = len(client.frames)
    last = start
    while last - start < seconds:
        last = orbit.move()
        time.sleep(max(0.0, 1 / 60 - (time.perf_counter() - last)))
    moving = [f for f in client.frames[n0:] if f.arrived <= last + 1 / 60]
    side = viewer.config.max_resolution
    full = client.wait_frame(after=last, size=(side, side), timeout=60)
    return {"client_moving_fps": len(moving) / seconds,
            "client_moving_size": moving[-1].size if moving else (0, 0),
            "client_still_to_full_s": (full.arrived - last) if full is not None else float("nan")}


def bracketed_kept(rows: list[tuple[str, float]]) -> list[float | None]:
    """Share of steps/s kept by each run with a viewer, against the mean of the runs without one ("none")
    just before and after it, so that a machine whose speed drifts during the benchmark (a shared CPU) does
    not count as the viewer's cost. rows: (case, steps/s) in the order run. Returns one value per row (None
    for the "none" runs); a run with a "none" on one side only is compared with that one."""
    out: list[float | None] = []
    for j, (case, speed) in enumerate(rows):
        if case == "none":
            out.append(None)
            continue
        before = next((s for c, s in reversed(rows[:j]) if c == "none"), None)
        after = next((s for c, s in rows[j + 1:] if c == "none"), None)
        neighbours = [s for s in (before, after) if s is not None]
        out.append(speed / float(np.mean(neighbours)) if neighbours else float("nan"))
    return out


class _Timed:
    """The viewer's hook, timed: seconds it took in the training thread."""

    def __init__(self, viewer):
        self.viewer, self.seconds = viewer, 0.0

    def __call__(self, trainer, step: int, losses: dict) -> None:
        start = time.perf_counter()
        self.viewer(trainer, step, losses)
        self.seconds += time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (chromedriver's browser and its renderer, GPU and utility processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class _WallClock:
    """A trainer hook noting the wall time after each step (hooks run outside the training clock, so the
    trainer's own `elapsed` leaves the viewer's rendering out; steps/s with a viewer must count it)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, trainer, step: int, losses: dict) -> None:
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        """Steps per wall second between the first and the last step (the first step's compile left out)."""
        return (len(self.times) - 1) / max(self.wall_s(), 1e-9)

    def wall_s(self) -> float:
        return self.times[-1] - self.times[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", default=None, help="run config (default: nerf/default, the procedural scene)")
    parser.add_argument("--data", help="dataset path (sets data.path)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--share", type=float, default=None, help="render share (default: the viewer's)")
    parser.add_argument("--resolution", type=int, default=256, help="longer side of a full frame")
    parser.add_argument("--port", type=int, default=8490)
    parser.add_argument("--repeat", type=int, default=1, help="run the block none, still, none, moving this many times (then a last none)")
    parser.add_argument("--client", choices=("browser", "socket"), default="browser",
                        help="browser: headless Chromium through Selenium; socket: the browserless viser client "
                             "(ngraphics.viewer.socket_client), for machines without a browser")
    args = parser.parse_args(argv)
    from ngraphics.viewer import ViewerConfig
    from ngraphics.viewer.browser import missing

    if args.client == "browser" and missing():
        print(f"viewer bench: {missing()} (or use --client socket)", file=sys.stderr)
        return 2
    args.share = ViewerConfig().render_share if args.share is None else args.share
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        order = [case for _ in range(args.repeat) for case in ("none", "still", "none", "moving")] + ["none"]
        for i, case in enumerate(order):
            rows.append((case, _train(args, Path(tmp), f"{case}{i}", None if case == "none" else case)))
    kept_of = bracketed_kept([(case, r["steps_per_s"]) for case, r in rows])
    print(f"render share {args.share:.0%}, {args.steps} steps, device {args.device}, {os.cpu_count()} CPUs, "
          f"client {args.client}")
    print("| client | steps/s | kept | frames sent | hook s (share of wall) | browser CPU s | load start-end |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    for (case, r), kept in zip(rows, kept_of):
        hook = f"{r['hook_s']:.1f} ({r['hook_s'] / r['wall_s']:.1%})" if "hook_s" in r else "-"
        browser = f"{r['browser_cpu_s']:.1f}" if "browser_cpu_s" in r else "-"
        print(f"| {case} | {r['steps_per_s']:.3f} | {'-' if kept is None else f'{kept:.1%}'} | "
              f"{r.get('frames', '-')} | {hook} | {browser} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    kept = {case: np.mean([k for (c, _), k in zip(rows, kept_of) if c == case]) for case in ("still", "moving")}
    print(f"kept (each run against the mean of the runs without a viewer just before and after it; mean over "
          f"runs): still {kept['still']:.1%}, moving {kept['moving']:.1%}")
    r = next(r for case, r in rows if case == "still")
    if args.client == "socket":
        w, h = r["client_moving_size"]
        print(f"trained model, viewer thread, at the client: {r['client_moving_fps']:.1f} frames/s while the camera "
              f"moves 60 times a second (last moving frame {w}x{h}); the full {args.resolution}x{args.resolution} "
              f"frame {r['client_still_to_full_s'] * 1000:.0f} ms after the last move "
              f"(of which still_after_s {ViewerConfig().still_after_s * 1000:.0f} ms)")
    else:
        print(f"trained model, viewer thread: {r['moving_fps']:.1f} frames/s while orbiting at "
              f"{r['moving_size'][0]}x{r['moving_size'][1]}; full {r['full_size'][0]}x{r['full_size'][1]} frame "
              f"{r['still_to_full_s'] * 1000:.0f} ms after the last move")
    return 0


if __name__ == "__main__":
    sys.exit(main())


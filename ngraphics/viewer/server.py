"""The live viewer: a viser server that shows any method's `render(cameras)` from each browser's camera.

    viewer = Viewer(method, scene, run_folder)            # starts the server, prints its URL
    trainer.hooks.append(viewer)                          # while training: renders between steps
    viewer.serve_forever()                                # a finished run: a render thread until Ctrl-C

Two drivers share one `render_pending(budget)`:

- **During training, a trainer hook** (`viewer(trainer, step, losses)`): after each step the training thread
  renders what the browsers wait for, but only while a token bucket (`RenderBudget`) holds credit, so
  rendering takes at most `render_share` of wall time (GUI slider, default 3 %). No second thread competes
  with the step for the lock or the cores, and the budget is exact. While paused, the hook renders freely.
- **Without training, a thread** (`start()` / `serve_forever()`): renders whenever a camera or a setting
  changes, holding `lock` (the trainer's, if one is given) around each render.

A frame is handed to viser (`client.scene.set_background_image`), which sends it from its own event loop:
a slow, frozen or closed browser never blocks the caller. While a camera moves, frames are reduced to what
renders in `moving_frame_s` (measured); once it has been still for `still_after_s`, one full-size frame follows.
Nothing here asks which method it shows: only `render`, `exports`/`export`, the optional `gaussians()` and
`surface_mesh()` (offered as "Show: splats / mesh" when a method implements them) and the scene's cameras and
images.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngraphics.data.scene import SceneData
from ngraphics.io.images import downscale, write_image
from ngraphics.methods.base import Method
from ngraphics.viewer.config import ViewerConfig
from ngraphics.viewer.frames import Pace, RenderBudget, camera_pose, crop_mask, display_image, frame_size, pinhole


SHOWS = {"splats": "gaussians", "mesh": "surface_mesh"}  # "Show" choices and the optional Method hook of each


def initial_position(origins: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Where a browser's camera starts: between training camera 0 and its nearest neighbour, 0.8 x their
    distance from the centre, so that the training cameras' frustums lie behind it or beside the picture,
    never in front of the scene. origins: (N, 3) camera centres; centre: (3,) what the camera looks at."""
    offsets = origins - centre
    near = int(np.argsort(np.linalg.norm(origins - origins[0], axis=1))[1]) if len(origins) > 1 else 0
    direction = offsets[0] + offsets[near]
    norm = np.linalg.norm(direction)
    direction = direction / norm if norm > 1e-9 else offsets[0] / max(np.linalg.norm(offsets[0]), 1e-9)
    return centre + 0.8 * float(np.linalg.norm(offsets[[0, near]], axis=1).mean()) * direction


def _slider(gui, label: str, lo: float, hi: float, step: float, value: float):
    """A GUI slider over [lo, hi], widened to hold `value` (viser refuses an initial value outside the range,
    and a config may ask for, e.g., frames smaller than the slider's usual 64 pixels)."""
    return gui.add_slider(label, min(lo, value), max(hi, value), step, value)


def _offers(method, hook: str) -> bool:
    """Whether `method` implements one of `Method`'s optional display hooks (its default returns None)."""
    return getattr(type(method), hook, None) not in (None, getattr(Method, hook))


JPEG_QUALITY = 85
PLOT_EVERY_S = 2.0  # loss/PSNR plot updates (and loss reads) at most this often, and at the last step
FIRST_TRAIN_FRAME_PIXELS = 32 * 32  # the first frame while training, before the render speed is known
PLOT_COLOURS = {"loss": "#d04030", "psnr": "#3060d0"}  # uPlot series strokes (the browser test looks for them)


@dataclass
class _ClientView:
    """What one browser has asked for and been sent."""

    client: object
    version: int = 0  # camera moves and setting changes seen
    moved_at: float = 0.0
    sent_version: int = -1
    sent_full: bool = False
    sent_step: int = -1
    sent_at: float = -1e9  # when the last frame was handed to viser
    frames: int = 0
    screenshot: bool = False
    last_size: tuple[int, int] = (0, 0)
    log: list = field(default_factory=list)  # (version, time the frame was handed to viser), for benchmarks


class Viewer:
    """A viser server showing `method` on `scene`'s cameras; see the module docstring.

    Args:
        method: any `Method`; its `render` gives the pictures.
        scene: the split whose cameras (frustums, photos, time range) are shown.
        run_path: the run folder: screenshots go to `run_path/screenshots/`, exports to `run_path/exports/`.
        config: `ViewerConfig`.
        background: (3,) colour behind the scene, RGB in [0, 1].
        lock: held around renders from the viewer's own thread (pass the trainer's `lock`).
        training: show the training controls (plots, pause, render share).
    """

    def __init__(self, method: Method, scene: SceneData, run_path: str | Path, config: ViewerConfig = ViewerConfig(),
                 background=(1.0, 1.0, 1.0), lock: threading.Lock | None = None, training: bool = False):
        import viser

        self.method, self.scene, self.run_path, self.config = method, scene, Path(run_path), config
        self.background = torch.tensor(background, dtype=torch.float32)
        self.lock = lock
        self.step, self.paused, self.keys = 0, False, ["rgb"]
        self.budget = RenderBudget(config.render_share)
        self.pace = Pace()
        self.views: dict[int, _ClientView] = {}
        self._views_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._history: list[tuple[int, float, float]] = []  # (step, loss, psnr)
        self._plotted_at = 0.0
        self._requests: list = []  # (kind, client view or None): exports, screenshots, nodes; done by the driver
        self._node = None  # viser's splat or mesh node while "Show" is not "picture"
        self.server = viser.ViserServer(host=config.host, port=config.port, label="ngraphics", verbose=False)
        self.port = self.server.get_port()
        if self.port != config.port:
            print(f"viewer: port {config.port} is in use, serving on {self.port}", file=sys.stderr)
        self._build_scene()
        self._build_gui(training)
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        print(f"viewer: {self.url}", file=sys.stderr)

    @property
    def url(self) -> str:
        host = "localhost" if self.config.host in ("127.0.0.1", "0.0.0.0", "::") else self.config.host
        return f"http://{host}:{self.port}"

    # --- scene and GUI ---------------------------------------------------------------------------------------

    def _build_scene(self) -> None:
        cams = self.scene.cameras
        origins = cams.origins.double().cpu().numpy()
        centre = self.scene.aabb.double().mean(0).cpu().numpy()
        up = -cams.c2w[:, :3, 1].double().mean(0).cpu().numpy()  # OpenCV: -y is up in the image
        up = up / max(np.linalg.norm(up), 1e-9)
        spread = float(np.median(np.linalg.norm(origins - origins.mean(0), axis=1))) or 1.0
        self.server.scene.set_up_direction(tuple(up))
        _, _, fov, _ = camera_pose(cams, 0)
        self.server.initial_camera.position = tuple(initial_position(origins, centre))
        self.server.initial_camera.look_at = tuple(centre)
        self.server.initial_camera.up = tuple(up)
        self.server.initial_camera.fov = fov
        self._frustum_handles = []
        for i in range(len(cams)):
            wxyz, position, fov, aspect = camera_pose(cams, i)
            photo = None
            if self.config.thumbnail > 0:
                rgb = self.scene.rgb_on(i, self.background).numpy()
                photo = (downscale(rgb, self.config.thumbnail).clip(0, 1) * 255 + 0.5).astype(np.uint8)
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=fov, aspect=aspect, scale=0.08 * spread, image=photo, wxyz=wxyz,
                position=position, color=(60, 90, 200), thickness=0.004 * spread)
            frustum.on_click(lambda event, i=i: self.jump_to(event.client, i))
            self._frustum_handles.append(frustum)
        lo, hi = self.scene.aabb.double().cpu().numpy()
        self._crop_box = self.server.scene.add_box("/crop", color=(230, 120, 40), dimensions=tuple(hi - lo),
                                                   wireframe=True, position=tuple((lo + hi) / 2), visible=False)

    def _build_gui(self, training: bool) -> None:
        gui = self.server.gui
        self._status = gui.add_markdown("waiting for a browser")
        self._mode = gui.add_dropdown("Render mode", ("rgb",), initial_value="rgb")
        self._mode.on_update(lambda _: self._changed())
        shows = ("picture",) + tuple(show for show, hook in SHOWS.items() if _offers(self.method, hook))
        self._show = gui.add_dropdown("Show", shows, initial_value="picture", visible=len(shows) > 1,
                                      hint="the rendered picture, or the model's splats / mesh drawn by the browser")
        self._show.on_update(lambda event: self._request("show", event.client))
        self._mesh_res = None
        if "mesh" in shows:
            self._mesh_res = _slider(gui, "Mesh resolution", 16, 512, 16, self.config.mesh_resolution)
        if len(shows) > 1:
            gui.add_button("Update splats / mesh").on_click(lambda event: self._request("show", event.client))
        self._frustums = gui.add_checkbox("Training cameras", True)
        self._frustums.on_update(lambda _: self._show_frustums())
        self._max_res = _slider(gui, "Max resolution", 64, 2048, 32, self.config.max_resolution)
        self._max_res.on_update(lambda _: self._changed())
        times = self.scene.times
        self._time = None
        if times is not None:
            lo, hi = float(times.min()), float(times.max())
            self._time = gui.add_slider("Time", lo, max(hi, lo + 1e-3), 0.001, lo)
            self._time.on_update(lambda _: self._changed())
        with gui.add_folder("Crop box", expand_by_default=False):
            lo, hi = self.scene.aabb.double().cpu().numpy()
            self._crop = gui.add_checkbox("Crop", False)
            self._crop_min = gui.add_vector3("Min", tuple(lo), step=0.01)
            self._crop_max = gui.add_vector3("Max", tuple(hi), step=0.01)
            for handle in (self._crop, self._crop_min, self._crop_max):
                handle.on_update(lambda _: self._crop_changed())
        gui.add_button("Screenshot (PNG into the run folder)").on_click(
            lambda event: self._request("screenshot", event.client))
        for kind in self.method.exports:
            gui.add_button(f"Export {kind}").on_click(lambda event, kind=kind: self._request(kind, event.client))
        self._share = self._pause = self._plots = None
        if training:
            with gui.add_folder("Training"):
                self._pause = gui.add_button("Pause training")
                self._pause.on_click(lambda _: self.set_paused(not self.paused))
                self._share = gui.add_slider("Render share %", 0.1, 100, 0.1, round(self.config.render_share * 100, 1))
                self._share.on_update(lambda _: setattr(self.budget, "share", self._share.value / 100))
                # Never created empty: uPlot ranges x once, at creation, from the data it is given, and viser
                # pushes later data with resetScales=false, so a chart born with no points keeps a null x scale
                # and draws no line. Two placeholder x values (no y) give it a range to follow.
                placeholder = (np.array([0.0, 1.0]), np.full(2, np.nan))
                self._plots = {
                    k: gui.add_uplot(placeholder, ({"label": "step"}, {"label": k, "stroke": colour, "width": 2}),
                                     title=k, aspect=2.0, scales={"x": {"time": False}})
                    for k, colour in PLOT_COLOURS.items()}

    # --- browser events (viser's threads) ---------------------------------------------------------------------

    def _connect(self, client) -> None:
        view = _ClientView(client, moved_at=time.perf_counter())
        with self._views_lock:
            self.views[client.client_id] = view

        async def moved(_camera) -> None:  # runs on viser's event loop: cheap, never blocks
            view.version += 1
            view.moved_at = time.perf_counter()
            self._wake.set()

        client.camera.on_update(moved)
        self._wake.set()

    def _disconnect(self, client) -> None:
        with self._views_lock:
            self.views.pop(client.client_id, None)

    def _changed(self) -> None:
        with self._views_lock:
            for view in self.views.values():
                view.version += 1
        self._wake.set()

    def _crop_changed(self) -> None:
        lo, hi = np.asarray(self._crop_min.value), np.asarray(self._crop_max.value)
        self._crop_box.position, self._crop_box.dimensions = tuple((lo + hi) / 2), tuple(np.abs(hi - lo))
        self._crop_box.visible = bool(self._crop.value)
        self._changed()

    def _show_frustums(self) -> None:
        for handle in self._frustum_handles:
            handle.visible = bool(self._frustums.value)

    def _request(self, kind: str, client) -> None:
        view = self.views.get(client.client_id) if client is not None else None
        self._requests.append((kind, view))
        self._wake.set()

    def jump_to(self, client, i: int) -> None:
        """Move a browser's camera to training camera i (a frustum click)."""
        wxyz, position, fov, _ = camera_pose(self.scene.cameras, i)
        with client.atomic():
            client.camera.wxyz, client.camera.position, client.camera.fov = wxyz, position, fov

    def set_mode(self, key: str) -> None:
        """Show `render`'s output `key` (rgb, depth, alpha, ...) in every browser (the Render mode menu)."""
        self._mode.value = key

    def show_cameras(self, visible: bool) -> None:
        """Show or hide the training-camera frustums (the Training cameras box)."""
        self._frustums.value = bool(visible)

    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        if self._pause is not None:
            self._pause.label = "Resume training" if self.paused else "Pause training"

    # --- rendering -----------------------------------------------------------------------------------------------

    def camera_of(self, view: _ClientView, pixels: float | None = None):
        """The Cameras (C = 1) that `view`'s browser looks through, at full or reduced (`pixels`) size."""
        cam = view.client.camera
        w, h = frame_size(cam.image_width, cam.image_height, int(self._max_res.value), pixels)
        t = None if self._time is None else float(self._time.value)
        return pinhole(cam.wxyz, cam.position, float(cam.fov), w, h, t)

    def render_picture(self, cameras) -> tuple[np.ndarray, dict]:
        """Render one camera and turn the chosen mode into an (H, W, 3) uint8 picture (crop applied)."""
        with self.lock if self.lock is not None else nullcontext():
            out = self.method.render(cameras, self.background)
        out = {k: v[0].detach().float().cpu() for k, v in out.items() if v.ndim == 4}
        keys = [k for k in out if out[k].shape[-1] in (1, 3)]
        if keys != self.keys:
            self.keys = keys
            self._mode.options = tuple(keys)
        mode = self._mode.value if self._mode.value in out else "rgb"
        alpha = out.get("alpha")
        image = out[mode]
        if self._crop.value and "depth" in out:
            box = torch.tensor([self._crop_min.value, self._crop_max.value], dtype=torch.float32).sort(0).values
            inside = crop_mask(cameras, out["depth"], alpha, box)
            fill = self.background if image.shape[-1] == 3 else torch.zeros(image.shape[-1])
            image = torch.where(inside, image, fill)
            alpha = inside.float() if alpha is None else alpha * inside
        return display_image(image, alpha if mode != "rgb" else None), out

    def _gets_pictures(self, view: _ClientView) -> bool:
        """Whether a browser is sent rendered pictures: its camera has reported its canvas, and no splat or
        mesh node shows instead."""
        return view.client.camera.image_width > 0 and self._show.value == "picture"

    def _due(self, view: _ClientView, now: float) -> tuple[bool, bool]:
        """(render now?, at full size?) for one browser."""
        if not self._gets_pictures(view):
            return False, False
        still = now - view.moved_at >= self.config.still_after_s
        if view.version != view.sent_version:
            return True, still
        if still and not view.sent_full:
            return True, True
        if view.sent_step != self.step and still and (self.paused or now - view.sent_at >= self.config.still_refresh_s):
            return True, True  # the model changed under a still camera: a new picture now and then
        return False, False

    def _idle_wait(self, longest: float = 0.05) -> float:
        """How long the render thread may sleep when nothing is due: until the first browser whose camera
        stopped counts as still (its full frame is then due at once, not up to `longest` later), at most
        `longest` seconds (moves and setting changes wake it earlier)."""
        now = time.perf_counter()
        with self._views_lock:
            waits = [view.moved_at + self.config.still_after_s - now for view in self.views.values()
                     if not view.sent_full and self._gets_pictures(view)]
        return min([longest] + [max(w, 0.001) for w in waits])

    def _frame_pixels(self, full: bool, training: bool) -> float | None:
        """At most how many pixels the next frame may have (None: the full size). While the camera moves: what
        renders in `moving_frame_s`. While training, no frame may take longer than `max_train_frame_s`, so a
        slow machine gets smaller still frames instead of one long stall of the training thread; until the
        speed is known, the first frame has FIRST_TRAIN_FRAME_PIXELS."""
        limits = [] if full else [self.pace.pixels_for(self.config.moving_frame_s)]
        if training:
            limits.append(self.pace.pixels_for(self.config.max_train_frame_s) or FIRST_TRAIN_FRAME_PIXELS)
        limits = [p for p in limits if p is not None]
        return min(limits) if limits else None

    def render_pending(self, budget: RenderBudget | None) -> int:
        """Render what the browsers wait for (at most one frame each), while `budget` allows (None: no limit).
        Returns the number of frames handed to viser."""
        self._serve_requests()
        with self._views_lock:
            views = list(self.views.values())
        sent = 0
        for view in views:
            now = time.perf_counter()
            due, full = self._due(view, now)
            if not due or (budget is not None and not budget.allows()):
                continue
            version = view.version
            cameras = self.camera_of(view, self._frame_pixels(full, budget is not None))
            start = time.perf_counter()
            picture, _ = self.render_picture(cameras)
            view.client.scene.set_background_image(picture, format="jpeg", jpeg_quality=JPEG_QUALITY)
            seconds = time.perf_counter() - start  # the whole frame: render, colour map, JPEG encoding, queueing
            self.pace.record(picture.shape[0] * picture.shape[1], seconds)
            if budget is not None:
                budget.spend(seconds)
            view.sent_version, view.sent_full, view.sent_step = version, full, self.step
            view.sent_at = time.perf_counter()
            view.frames, view.last_size = view.frames + 1, (picture.shape[1], picture.shape[0])
            view.log.append((version, time.perf_counter(), full))
            del view.log[:-256]
            sent += 1
            step = f"step {self.step} · " if self._plots is not None else ""
            self._status.content = (f"{step}{picture.shape[1]}x{picture.shape[0]} in {seconds * 1000:.0f} ms"
                                    f"{' · paused' if self.paused else ''}")
        return sent

    def _serve_requests(self) -> None:
        while self._requests:
            kind, view = self._requests.pop(0)
            try:
                if kind == "screenshot":
                    message = f"saved {self.screenshot(view)}"
                elif kind == "show":
                    message = self.show_node()
                else:
                    with self.lock if self.lock is not None else nullcontext():
                        message = f"exported {self.method.export(kind, self.run_path / 'exports' / kind)}"
            except Exception as err:  # noqa: BLE001 - a failed button press is reported, never fatal to training
                message = f"{kind} failed: {type(err).__name__}: {err}"
            print(f"viewer: {message}", file=sys.stderr)
            if view is not None:
                view.client.add_notification(title=kind, body=message, auto_close_seconds=5.0)

    def show_node(self) -> str:
        """Replace the splat or mesh node by one of the current model, as "Show" says (none for "picture"):
        `method.gaussians()` through viser's Gaussian-splat node, `method.surface_mesh(resolution)` as a mesh
        (a GLB with vertex colours where the mesh has them). The rendered picture is cleared while a node shows.
        Returns what is shown, in words."""
        show = self._show.value
        if self._node is not None:
            self._node.remove()
            self._node = None
        if show == "picture":
            self._changed()  # every browser gets a picture again
            return "showing the rendered picture"
        scene = self.server.scene
        with self.lock if self.lock is not None else nullcontext():
            if show == "splats":
                g = self.method.gaussians()
                self._node = scene.add_gaussian_splats("/splats", g.centers.numpy(), g.covariances.numpy(),
                                                       g.rgb.numpy(), g.opacity.numpy())
                message = f"showing {len(g.centers)} Gaussians (step {self.step})"
            else:
                resolution = int(self._mesh_res.value)
                mesh = self.method.surface_mesh(resolution)
                if mesh.colors is not None:
                    self._node = scene.add_mesh_trimesh("/mesh", mesh.to_trimesh())
                else:
                    self._node = scene.add_mesh_simple("/mesh", mesh.vertices.numpy(), mesh.faces.numpy())
                message = (f"showing the mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces "
                           f"(marching cubes at {resolution}, step {self.step})")
        with self._views_lock:
            views = list(self.views.values())
        for view in views:
            view.client.scene.set_background_image(None)
            view.sent_version = -1  # a picture is due once "Show" returns to "picture"
        return message

    def screenshot(self, view: _ClientView | None = None) -> Path:
        """Render a browser's camera (default: the first connected one, or training camera 0) at full size in
        the current mode and write it to `run_path/screenshots/step<step>-<n>.png`. Returns the path."""
        if view is None:
            with self._views_lock:
                view = next(iter(self.views.values()), None)
        cameras = self.camera_of(view) if view is not None else self.scene.cameras[0]
        picture, _ = self.render_picture(cameras)
        folder = self.run_path / "screenshots"
        n = len(list(folder.glob(f"step{self.step:06d}-*.png"))) if folder.is_dir() else 0
        path = folder / f"step{self.step:06d}-{n}.png"
        write_image(path, picture.astype(np.float32) / 255)
        return path

    # --- drivers -------------------------------------------------------------------------------------------------

    def __call__(self, trainer, step: int, losses: dict) -> None:
        """The trainer hook: render within the budget after a step; while paused, keep rendering and wait."""
        if not trainer.dist.is_main:
            return
        self.step = step
        now = time.perf_counter()
        last = step >= trainer.config.trainer.steps
        if self._plots is not None and "loss" in losses and (last or now - self._plotted_at >= PLOT_EVERY_S):
            self._plotted_at = now  # reading the losses is a host sync, and each update costs the browser a redraw
            self._plot(step, {k: float(v) for k, v in losses.items() if k in ("loss", "psnr")})
        self.render_pending(self.budget)
        while self.paused and not self._stop.is_set():
            if not self.render_pending(None):
                self._wake.wait(0.05)
                self._wake.clear()

    def _plot(self, step: int, losses: dict) -> None:
        self._history.append((step, losses.get("loss", float("nan")), losses.get("psnr", float("nan"))))
        if len(self._history) > 2000:
            self._history = self._history[::2]
        steps = np.array([h[0] for h in self._history], dtype=np.float64)
        for column, key in ((1, "loss"), (2, "psnr")):
            self._plots[key].data = (steps, np.array([h[column] for h in self._history], dtype=np.float64))

    def start(self) -> None:
        """Render in a thread of the viewer's own whenever a browser needs a frame (no budget)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                if not self.render_pending(None):
                    self._wake.wait(self._idle_wait())
                    self._wake.clear()

        self._thread = threading.Thread(target=loop, name="ngraphics-viewer", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        """`start()`, then wait for Ctrl-C (which propagates after the server stops)."""
        self.start()
        try:
            while True:
                time.sleep(1.0)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.server.stop()


__all__ = ["Viewer", "ViewerConfig"]

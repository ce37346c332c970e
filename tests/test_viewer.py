"""The viewer without a browser: camera conversion against the dataset's own rays, display images, the crop box,
the render budget, the drivers (hook and thread) with a fake browser client, ports and the `view` verb's errors.
The browser itself is in tests/test_viewer_browser.py."""

from __future__ import annotations

import math
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.data.load import load_dataset
from ngraphics.errors import ConfigError
from ngraphics.viewer.config import ViewerConfig
from ngraphics.viewer.frames import (Pace, RenderBudget, camera_pose, crop_mask, display_image, frame_size,
                                     pinhole, turbo)

pytest.importorskip("viser")


@pytest.fixture(scope="module")
def scene():
    return load_dataset(None, "train", resolution=16, n_views=4, mesh_resolution=0)


# --- cameras -----------------------------------------------------------------------------------------------------


def test_dataset_camera_through_viser_pose_gives_the_same_rays(scene):
    cams = scene.cameras
    for i in range(len(cams)):
        wxyz, position, fov, aspect = camera_pose(cams, i)
        assert aspect == 1.0 and abs(np.linalg.norm(wxyz) - 1) < 1e-6
        back = pinhole(wxyz, position, fov, int(cams.width[i]), int(cams.height[i]))
        o0, d0 = cams.image_rays(i)
        o1, d1 = back.image_rays(0)
        torch.testing.assert_close(o1, o0, atol=1e-5, rtol=0)
        torch.testing.assert_close(d1, d0, atol=1e-5, rtol=0)


def test_pinhole_looks_down_its_z_axis_with_the_given_vertical_fov():
    # camera at (0, 0, 5) looking down -z (OpenCV: z forward, y down): a 180 degree turn about x
    cam = pinhole((0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 5.0), math.radians(60), 40, 20, time_value=0.25)
    assert cam.time.tolist() == [0.25] and cam.time.dtype == torch.float32
    origins, dirs = cam.rays(torch.zeros(3, dtype=torch.int64), torch.tensor([[20.0, 10.0], [20.0, 0.0], [20.0, 20.0]]))
    torch.testing.assert_close(dirs[0], torch.tensor([0.0, 0.0, -1.0]))
    angle = math.degrees(math.acos(float(dirs[1] @ dirs[2])))  # top edge to bottom edge = vertical fov
    assert abs(angle - 60) < 1e-3
    assert float(dirs[1, 1]) > 0  # the image's top row looks towards +y: y-down camera turned about x
    with pytest.raises(ConfigError, match="fov"):
        pinhole((1.0, 0, 0, 0), (0, 0, 0), 0.0, 10, 10)


def test_initial_camera_has_no_training_camera_in_front_of_the_scene():
    from ngraphics.data.procedural import load_procedural
    from ngraphics.viewer.server import initial_position

    for n in (1, 2, 48):
        cams = load_procedural("train", resolution=8, n_views=n).cameras
        origins, centre = cams.origins.double().numpy(), np.zeros(3)
        p = initial_position(origins, centre)
        assert abs(np.linalg.norm(p - centre) - 0.8 * 3.5) < 1e-6  # inside the ring of cameras (radius 3.5)
        _, _, fov, _ = camera_pose(cams, 0)
        view = (centre - p) / np.linalg.norm(centre - p)
        for o in origins:  # between the viewer and the scene's centre: none in the field of view
            v = o - p
            depth = float(v @ view)
            if 0 < depth < np.linalg.norm(centre - p):
                assert math.acos(depth / np.linalg.norm(v)) > fov, (n, o)


def test_frame_size_keeps_the_canvas_aspect_within_the_limits():
    assert frame_size(1600, 900, 512) == (512, 288)
    assert frame_size(300, 200, 512) == (300, 200)  # never enlarged
    w, h = frame_size(1600, 900, 512, pixels=64 * 36)
    assert (w, h) == (64, 36)
    assert frame_size(1600, 900, 512, pixels=1) == (8, 8)  # floor of 8 pixels a side


# --- pictures ----------------------------------------------------------------------------------------------------


def test_crop_mask_keeps_surface_points_inside_the_box():
    # camera at the origin looking down +z; a plane at z = 2 seen through a 90-degree fov
    cam = pinhole((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0), math.radians(90), 8, 8)
    origins, dirs = cam.image_rays(0)
    depth = (2.0 / dirs[:, 2]).reshape(8, 8, 1)  # ray distance to the plane
    box = torch.tensor([[0.0, -5.0, 1.0], [5.0, 5.0, 3.0]])  # keeps x >= 0: the right half of the image
    inside = crop_mask(cam, depth, None, box)
    assert inside[:, 4:].all() and not inside[:, :4].any()
    alpha = torch.ones(8, 8, 1)
    alpha[0] = 0
    assert not crop_mask(cam, depth, alpha, box)[0].any()


def test_display_image_by_kind():
    rgb = torch.rand(4, 5, 3)
    np.testing.assert_array_equal(display_image(rgb), (rgb.numpy() * 255 + 0.5).astype(np.uint8))
    normals = torch.tensor([[[-1.0, 0.0, 1.0]]])
    np.testing.assert_array_equal(display_image(normals), [[[0, 128, 255]]])
    alpha = torch.tensor([[[0.0]], [[1.0]]])
    np.testing.assert_array_equal(display_image(alpha), [[[0, 0, 0]], [[255, 255, 255]]])
    depth = torch.linspace(2, 6, 101).reshape(101, 1, 1)
    picture = display_image(depth, torch.ones(101, 1, 1))
    np.testing.assert_array_equal(picture[50, 0], turbo(np.array([[0.5]]))[0, 0])  # the middle of the range
    np.testing.assert_array_equal(picture[0, 0], turbo(np.zeros((1, 1)))[0, 0])  # below the 1st percentile
    uncovered = torch.ones(101, 1, 1)
    uncovered[7] = 0
    assert display_image(depth, uncovered)[7, 0].tolist() == [0, 0, 0]


# --- budget ------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5])
def test_budget_keeps_rendering_to_its_share_of_wall_time(share):
    clock, render_s, step_s = Clock(), 0.07, 0.01
    budget = RenderBudget(share, burst_s=1.0, clock=clock)
    rendering = 0.0
    clock.t = 100.0  # a long idle spell first: buys at most share x burst_s
    for _ in range(20000):  # training steps, each followed by the hook
        clock.t += step_s
        if budget.allows():
            clock.t += render_s
            budget.spend(render_s)
            rendering += render_s
    wall = clock.t - 100.0
    assert rendering <= share * wall + share * 1.0 + render_s
    assert rendering >= 0.9 * share * wall  # and it does use its share


def test_budget_rejects_bad_shares_and_pace_learns_speed():
    with pytest.raises(ConfigError, match="share"):
        RenderBudget(0.0)
    assert RenderBudget(1.0).allows()
    pace = Pace()
    assert pace.pixels_for(0.1) is None
    pace.record(1000, 0.01)
    assert pace.pixels_for(0.1) == pytest.approx(10000)


# --- the viewer with a fake browser ----------------------------------------------------------------------------


class Gradient:
    """A method stand-in: renders a horizontal ramp whose level is the number of steps taken."""

    exports = ()

    def __init__(self):
        self.level, self.calls, self.sizes = 0.0, 0, []

    def render(self, cameras: Cameras, background=None) -> dict:
        self.calls += 1
        H, W = int(cameras.height[0]), int(cameras.width[0])
        self.sizes.append((W, H))
        ramp = torch.linspace(0, 1, W).expand(H, W)[None, ..., None]
        return {"rgb": (ramp * 0 + self.level).expand(1, H, W, 3).contiguous(), "depth": 2 + ramp,
                "alpha": torch.ones(1, H, W, 1)}


class FakeClient:
    """What the viewer uses of a viser ClientHandle: camera state, set_background_image, notifications."""

    def __init__(self, client_id=1):
        self.client_id = client_id
        self.camera = SimpleNamespace(wxyz=np.array([1.0, 0, 0, 0]), position=np.zeros(3), fov=1.0,
                                      image_width=320, image_height=240, on_update=lambda cb: None)
        self.frames, self.notes = [], []
        self.scene = SimpleNamespace(set_background_image=lambda image, **kw: self.frames.append(image))

    def add_notification(self, **kw):
        self.notes.append(kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def viewer(scene, tmp_path):
    from ngraphics.viewer import Viewer

    v = Viewer(Gradient(), scene, tmp_path, ViewerConfig(port=_free_port(), max_resolution=64, thumbnail=8))
    yield v
    v.close()


def test_binds_localhost_and_moves_past_a_port_in_use(scene, tmp_path, capsys):
    from ngraphics.viewer import Viewer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        v = Viewer(Gradient(), scene, tmp_path, ViewerConfig(port=port, thumbnail=0))
        try:
            assert v.server.get_host() == "127.0.0.1" and v.port != port
            err = capsys.readouterr().err
            assert f"port {port} is in use, serving on {v.port}" in err and f"viewer: {v.url}" in err
        finally:
            v.close()


def test_moving_camera_gets_small_frames_then_one_full_frame(viewer):
    client = FakeClient()
    viewer._connect(client)
    view = viewer.views[1]
    viewer.pace.record(100, 1.0)  # 100 pixels/s: a 1/30 s frame has ~3 pixels -> the 8-pixel floor
    assert viewer.render_pending(None) == 1
    assert client.frames[-1].shape[:2] == (8, 8)
    assert viewer.render_pending(None) == 0  # nothing changed, still moving: nothing to send
    view.moved_at -= 1.0  # the camera has been still for a second
    assert viewer.render_pending(None) == 1
    assert client.frames[-1].shape[:2] == (48, 64)  # the canvas's 4:3 at max_resolution 64
    assert viewer.render_pending(None) == 0
    viewer._mode.value = "depth"
    viewer._changed()
    assert viewer.render_pending(None) == 1 and not np.array_equal(client.frames[-1], client.frames[-2])


def _fake_trainer(is_main: bool = True, steps: int = 1000):
    """What the hook uses of a Trainer: its rank and its number of steps."""
    return SimpleNamespace(dist=SimpleNamespace(is_main=is_main),
                           config=SimpleNamespace(trainer=SimpleNamespace(steps=steps)))


def test_hook_renders_within_its_budget_and_pause_waits(viewer):
    client = FakeClient()
    viewer._connect(client)
    viewer.views[1].moved_at -= 1.0
    viewer.budget.share = 0.01
    viewer.budget.credit = -1.0  # a render just spent the credit: 100 s of wall time to earn it back
    trainer = _fake_trainer()
    for step in range(1, 6):
        viewer.method.level = step / 10
        viewer(trainer, step, {"loss": torch.tensor(0.5)})
    assert len(client.frames) == 0  # no credit yet: training is not held up
    viewer.budget.credit = 1.0
    viewer(trainer, 6, {})
    assert len(client.frames) == 1 and client.frames[-1][0, 0, 0] == round(0.5 * 255)  # the step-5 model
    viewer.set_paused(True)
    done = threading.Event()
    threading.Thread(target=lambda: (viewer(trainer, 7, {}), done.set()), daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set()  # paused: the hook holds the training thread
    assert len(client.frames) == 2  # ... and renders the new step anyway, without a budget
    viewer.set_paused(False)
    assert done.wait(5)
    assert viewer(_fake_trainer(is_main=False), 8, {}) is None


def test_still_camera_follows_training_at_most_every_still_refresh_s(viewer):
    client = FakeClient()
    viewer._connect(client)
    view = viewer.views[1]
    view.moved_at -= 1.0  # still
    viewer.budget.share = 1.0  # no budget limit: only the refresh interval holds frames back
    trainer = _fake_trainer()
    viewer(trainer, 1, {})
    assert len(client.frames) == 1
    for step in range(2, 6):  # the model changes every step; the picture waits for still_refresh_s
        viewer(trainer, step, {})
    assert len(client.frames) == 1
    view.sent_at -= viewer.config.still_refresh_s
    viewer(trainer, 6, {})
    assert len(client.frames) == 2 and view.sent_step == 6
    view.version += 1  # a camera move is answered at once
    viewer(trainer, 7, {})
    assert len(client.frames) == 3


def test_frames_while_training_are_sized_to_max_train_frame_s(viewer):
    client = FakeClient()
    viewer._connect(client)
    view = viewer.views[1]
    view.moved_at -= 1.0
    viewer.budget.share = 1.0
    viewer(_fake_trainer(), 1, {})  # speed unknown: the first frame has 32 x 32 pixels (the canvas's 4:3)
    assert client.frames[-1].shape[:2] == (28, 37)
    viewer.pace.pixels_per_s = 1000.0  # a slow machine: 1000 pixels in max_train_frame_s = 1 s
    view.version += 1
    viewer(_fake_trainer(), 2, {})
    h, w = client.frames[-1].shape[:2]
    assert (h, w) == (27, 37) and h * w <= 1000
    view.version += 1
    assert viewer.render_pending(None) == 1  # no training, no limit: the full 64 x 48
    assert client.frames[-1].shape[:2] == (48, 64)


def test_render_thread_answers_camera_moves_and_screenshots(viewer, tmp_path):
    client = FakeClient()
    viewer._connect(client)
    viewer.views[1].moved_at -= 1.0
    viewer.start()
    deadline = time.time() + 10
    while not client.frames and time.time() < deadline:
        time.sleep(0.01)
    assert client.frames
    viewer._request("screenshot", client)
    while not client.notes and time.time() < deadline:
        time.sleep(0.01)
    assert "saved" in client.notes[0]["body"]
    shots = list((tmp_path / "screenshots").glob("step*.png"))
    assert len(shots) == 1
    from ngraphics.io.images import read_image

    assert read_image(shots[0]).shape[:2] == (48, 64)


def test_view_verb_errors_are_one_line(tmp_path, capsys):
    from ngraphics.cli import main

    assert main(["view", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="share"):
        ViewerConfig(render_share=1.5)


def test_train_viewer_flag_serves_while_and_after_training(tmp_path, capsys, monkeypatch):
    from ngraphics.cli import main
    from ngraphics.viewer import server

    seen = []

    def serve_forever(self):  # after training: stands for the user's Ctrl-C
        seen.append(self.step)
        self.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(server.Viewer, "serve_forever", serve_forever)
    tiny = ["data.options={resolution: 16, n_views: 4, mesh_resolution: 0}", "trainer.steps=3",
            "trainer.progress=false", "model.field.encoding={n_levels: 2, log2_hashmap_size: 10}",
            "model.field.max_resolution=32", "model.occupancy={resolution: 8, warmup_steps: 2, update_every: 2}",
            "model.render_steps=32", "model.target_samples=1024", "model.initial_rays=128"]
    args = ["train", "--runs-dir", str(tmp_path), "--name", "v", "--viewer", "--viewer-port", str(_free_port())]
    assert main(args + [a for s in tiny for a in ("--set", s)]) == 0
    assert seen == [3]  # the hook saw every step, then the viewer stayed up
    assert "viewer still serving the trained scene at http://localhost:" in capsys.readouterr().err


# --- loss and PSNR plots ---------------------------------------------------------------------------------------


def test_plots_start_with_a_range_and_get_float64_points_in_step_order(scene, tmp_path):
    from ngraphics.viewer import Viewer

    v = Viewer(Gradient(), scene, tmp_path, ViewerConfig(port=_free_port(), thumbnail=0), training=True)
    try:
        x, y = v._plots["loss"].data
        assert len(x) == 2 and x[1] > x[0] and np.isnan(y).all()  # never born empty: uPlot needs an x range
        trainer = _fake_trainer(steps=6)
        for step in range(1, 7):  # the first step plots, then at most every PLOT_EVERY_S, and the last step
            if step == 4:
                v._plotted_at -= 10.0  # time has passed
            v(trainer, step, {"loss": torch.tensor(1.0 / step), "psnr": torch.tensor(10.0 + step)})
        for key, column in (("loss", 1), ("psnr", 2)):
            x, y = v._plots[key].data
            assert x.dtype == y.dtype == np.float64
            assert x.tolist() == [1.0, 4.0, 6.0]
            np.testing.assert_allclose(y, [h[column] for h in v._history])
    finally:
        v.close()


# --- splats and meshes through viser's own nodes -----------------------------------------------------------------


def test_splat_gaussians_covariances_match_a_float64_rotation(scene):
    from scipy.spatial.transform import Rotation

    from ngraphics.methods.splat import SH_C0, Splat, SplatConfig

    method = Splat(SplatConfig(sh_degree=0, init_points=40), scene)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        method.params["quats"].copy_(torch.randn(40, 4, generator=g) * 3)  # not normalised: gaussians() must
        method.params["scales"].copy_(torch.randn(40, 3, generator=g) - 2)
        method.params["means"][7, 1] = float("nan")  # a broken Gaussian is left out
    out = method.gaussians()
    keep = np.array([i != 7 for i in range(40)])
    assert out.centers.shape == (39, 3) and out.covariances.shape == (39, 3, 3)
    assert out.rgb.shape == (39, 3) and out.opacity.shape == (39, 1) and out.covariances.dtype == torch.float32
    q = method.params["quats"].detach().double().numpy()[keep]
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: (x, y, z, w), normalises itself
    s = np.exp(method.params["scales"].detach().double().numpy()[keep])
    expected = np.einsum("nij,nj,nkj->nik", R, s**2, R)
    np.testing.assert_allclose(out.covariances.double().numpy(), expected, rtol=1e-4, atol=1e-9)
    sh0 = method.params["sh0"].detach().double().numpy()[keep, 0]
    np.testing.assert_allclose(out.rgb.numpy(), np.clip(sh0 * SH_C0 + 0.5, 0, 1), atol=1e-6)
    logit = method.params["opacities"].detach().double().numpy()[keep]
    np.testing.assert_allclose(out.opacity[:, 0].numpy(), 1 / (1 + np.exp(-logit)), atol=1e-6)


def test_splat_run_shows_its_gaussians_as_a_splat_node(scene, tmp_path):
    from ngraphics.methods.splat import Splat, SplatConfig
    from ngraphics.viewer import Viewer

    method = Splat(SplatConfig(sh_degree=0, init_points=30), scene)
    v = Viewer(method, scene, tmp_path, ViewerConfig(port=_free_port(), thumbnail=0))
    try:
        assert v._show.options == ("picture", "splats")  # offered because Splat has gaussians(), no kind named
        client = FakeClient()
        v._connect(client)
        v._show.value = "splats"
        v.render_pending(None)
        node = v._node
        assert node is not None and node.buffer.shape == (30, 8)  # viser's 32 bytes a Gaussian
        centers = node.buffer[:, :3].copy().view(np.float32)
        np.testing.assert_array_equal(centers, method.params["means"].detach().numpy())
        assert client.frames[-1] is None  # the rendered picture is cleared while the node shows
        frames = len(client.frames)
        v._changed()
        assert v.render_pending(None) == 0 and len(client.frames) == frames  # no pictures behind the node
        v._show.value = "picture"
        v.render_pending(None)
        assert v._node is None and client.frames[-1] is not None
    finally:
        v.close()


def test_surface_run_shows_its_marching_cubes_mesh(scene, tmp_path):
    import io

    import trimesh

    from ngraphics.fields.sdf_field import SDFFieldConfig
    from ngraphics.methods.neus import Neus, NeusConfig
    from ngraphics.viewer import Viewer

    config = NeusConfig(field=SDFFieldConfig(encoding={"n_levels": 2, "log2_hashmap_size": 10, "base_resolution": 4},
                                             max_resolution=16, init_radius=0.8, geometry_features=3,
                                             color_neurons=8, sdf_neurons=8))
    method = Neus(config, scene, "cpu")
    v = Viewer(method, scene, tmp_path, ViewerConfig(port=_free_port(), thumbnail=0, mesh_resolution=16))
    try:
        assert v._show.options == ("picture", "mesh")
        expected = method.surface_mesh(16)  # the untrained SDF (about the initial sphere), in the scene's box
        lo, hi = scene.aabb
        assert len(expected.faces) > 100 and bool(((expected.vertices >= lo) & (expected.vertices <= hi)).all())
        client = FakeClient()
        v._connect(client)
        v._show.value = "mesh"
        v.render_pending(None)
        shown = trimesh.load(io.BytesIO(v._node.glb_data), file_type="glb", force="mesh", process=False)
        assert len(shown.vertices) == len(expected.vertices) and len(shown.faces) == len(expected.faces)
        np.testing.assert_allclose(np.asarray(shown.vertices), expected.vertices.numpy(), atol=1e-5)
        assert shown.visual.vertex_colors.shape == (len(expected.vertices), 4)
    finally:
        v.close()


def test_methods_without_the_hooks_offer_only_the_picture(viewer):
    assert viewer._show.options == ("picture",)


def test_socket_client_gets_frames_over_viser_websocket(viewer):
    """The browserless client (the device benchmark's) over viser's real websocket: its first camera message
    connects it and gets the full frame of its canvas's aspect; a move after that gets a new frame, and once
    still the full one again."""
    from ngraphics.viewer.socket_client import SocketClient, look_at_wxyz

    viewer.start()
    with SocketClient(viewer.url, 320, 240) as client:
        sent = client.look((3.0, 0.0, 0.5), (0.0, 0.0, 0.0))
        full = client.wait_frame(after=sent, size=(64, 48), timeout=30)
        assert full is not None
        assert len(viewer.views) == 1
        cam = next(iter(viewer.views.values())).client.camera
        assert np.allclose(cam.position, (3.0, 0.0, 0.5)) and (cam.image_width, cam.image_height) == (320, 240)
        # the pose the client sent: forward looks at the target, y points down (OpenCV axes, z up here)
        from viser.transforms import SO3

        R = SO3(np.asarray(cam.wxyz)).as_matrix()
        assert np.allclose(R[:, 2], -np.array([3.0, 0.0, 0.5]) / np.linalg.norm([3.0, 0.0, 0.5]), atol=1e-6)
        assert R[2, 1] < 0 and np.allclose(R, SO3(look_at_wxyz((3, 0, 0.5), (0, 0, 0), (0, 0, 1))).as_matrix())
        sent = client.look((0.0, 3.0, 0.5), (0.0, 0.0, 0.0))
        assert client.wait_frame(after=sent, timeout=30) is not None
        assert client.wait_frame(after=sent, size=(64, 48), timeout=30) is not None
    assert all(f.nbytes > 0 for f in client.frames) and client.messages > len(client.frames)


def test_render_thread_sleeps_until_a_stopped_camera_counts_as_still(viewer):
    """Nothing due: the thread sleeps until the first stopped camera's full frame is due, at most 50 ms."""
    assert viewer._idle_wait() == 0.05  # no browser
    client = FakeClient()
    viewer._connect(client)
    view = viewer.views[1]
    view.moved_at = time.perf_counter()
    assert 0.5 * viewer.config.still_after_s < viewer._idle_wait() <= viewer.config.still_after_s
    view.moved_at -= 1.0
    assert viewer._idle_wait() == 0.001  # overdue: at once
    view.sent_full = True
    assert viewer._idle_wait() == 0.05  # its full frame went out: nothing to wait for
    view.sent_full = False
    client.camera.image_width = 0
    assert viewer._idle_wait() == 0.05  # a camera not ready gets no frame: no busy loop waiting for it


@pytest.mark.parametrize("share", [0.001, 0.004, 0.03, 1.0])
def test_training_viewer_takes_any_allowed_share_and_its_slider_shows_it(scene, tmp_path, share):
    """Shares below 0.5 % once crashed viser's 1..100 slider (initial value 0); the slider steps 0.1 %."""
    from ngraphics.viewer import Viewer

    v = Viewer(Gradient(), scene, tmp_path, ViewerConfig(port=_free_port(), thumbnail=0, render_share=share),
               training=True)
    try:
        assert v._share.value == pytest.approx(share * 100) and v.budget.share == share
    finally:
        v.close()
    with pytest.raises(ConfigError, match="0.001"):
        ViewerConfig(render_share=0.0005)


def test_bench_compares_each_viewer_run_with_the_runs_around_it():
    """A machine slowing down linearly during the benchmark: a viewer run at the interpolated speed keeps
    100 %, one at 90 % of it keeps 90 %, whatever the drift; a run at the end has one neighbour."""
    from ngraphics.viewer.bench import bracketed_kept

    speeds = [10.0, 9.0 * 0.9, 8.0, 7.0, 6.0]  # none, still (90 % of the 9.0 it would have run at), none, ...
    kept = bracketed_kept([("none", speeds[0]), ("still", speeds[1]), ("none", speeds[2]), ("moving", speeds[3]),
                           ("none", speeds[4]), ("still", 3.0)])
    assert kept[0] is None and kept[2] is None and kept[4] is None
    assert kept[1] == pytest.approx(0.9) and kept[3] == pytest.approx(1.0) and kept[5] == pytest.approx(0.5)


@pytest.mark.parametrize("max_resolution", [32, 4096])
def test_viewer_takes_resolutions_outside_its_sliders_usual_range(scene, tmp_path, max_resolution):
    """A max resolution of 32 (the config allows >= 8) once crashed viser's 64..2048 slider."""
    from ngraphics.viewer import Viewer

    v = Viewer(Gradient(), scene, tmp_path, ViewerConfig(port=_free_port(), thumbnail=0,
                                                        max_resolution=max_resolution, mesh_resolution=8))
    try:
        assert v._max_res.value == max_resolution
    finally:
        v.close()

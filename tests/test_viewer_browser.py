"""The viewer in a real (headless) browser: the system's Chromium driven by Selenium, no download at run time.

NeRF trains briefly on the procedural scene with the viewer hook on and the browser connected; then the canvas
must show the scene (a region of it against the offline render of the same camera: similar mean colour,
correlated, not blank), follow a camera moved through viser's API, and change with the render mode.
NGRAPHICS_VIEWER_SCREENSHOT=path.png also saves the page as it was at the end of training.
"""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from ngraphics.viewer.browser import canvas_picture, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

# as tests/test_trainer.py's TINY, a little larger so that the picture has structure
TINY = [
    "data.options={resolution: 24, n_views: 6, mesh_resolution: 0}",
    "data.eval_views=1",
    "trainer.steps=40",
    "trainer.log_every=4",
    "trainer.save_every=0",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "model.field.encoding={n_levels: 4, log2_hashmap_size: 12}",
    "model.field.max_resolution=64",
    "model.occupancy={resolution: 16, warmup_steps: 4, update_every: 4}",
    "model.render_steps=64",
    "model.target_samples=4096",
    "model.initial_rays=512",
    "model.render_chunk=4096",
    "model.warmup_steps=2",
]


def _wait(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _full_frame_after(viewer, version: int):
    """The browser's view once a full-size frame of camera state >= `version` has been handed to viser."""
    def ready():
        views = list(viewer.views.values())
        return bool(views) and views[0].sent_version >= version and views[0].sent_full and views[0]
    return _wait(ready, 120, "a full-size frame")


def _region(picture: np.ndarray) -> np.ndarray:
    """The middle of the canvas, away from the GUI panel (top right), notifications (top left) and the axes
    gizmo (bottom left). Float RGB in [0, 1]."""
    H, W = picture.shape[:2]
    return picture[int(0.3 * H): int(0.9 * H), int(0.2 * W): int(0.6 * W)].astype(np.float64) / 255


def _shown_matches_offline(driver, viewer, view) -> np.ndarray:
    """Poll the canvas until it matches the offline render of the browser's camera; returns the region."""
    offline, _ = viewer.render_picture(viewer.camera_of(view))
    last = {}

    def matches():
        shown = canvas_picture(driver)
        expected = cv2.resize(offline, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_LINEAR)
        a, b = _region(shown), _region(expected)
        last.update(diff=np.abs(a.mean((0, 1)) - b.mean((0, 1))).max(), std=a.std(),
                    corr=np.corrcoef(a.mean(-1).ravel(), b.mean(-1).ravel())[0, 1])
        return a if last["diff"] < 0.06 and last["std"] > 0.02 and last["corr"] > 0.6 else None

    try:
        return _wait(matches, 30, "the canvas to show the offline render")
    except AssertionError as err:
        raise AssertionError(f"{err}: last mean-colour difference {last.get('diff')}, contrast "
                             f"{last.get('std')}, correlation {last.get('corr')}") from None


def _changed(after: np.ndarray, before: np.ndarray, what: str) -> None:
    """Both regions matched their offline renders; they must also differ from each other."""
    change = np.abs(after - before).mean()
    assert change > 0.01, f"the canvas did not change with the {what} (mean change {change:.4f})"


def _colour_pixels(picture: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """Pixels of an (H, W, 3) uint8 RGB picture within `tolerance` of a "#rrggbb" colour on every channel."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(picture.astype(np.int64) - rgb).max(-1) <= tolerance).sum())


def _plots_draw_their_lines(driver, viewer) -> None:
    """Each uPlot canvas (loss, then PSNR, in the Training folder) shows its series' stroke colour along a line,
    and not the other series' colour."""
    from ngraphics.viewer.browser import element_pictures
    from ngraphics.viewer.server import PLOT_COLOURS

    assert len(viewer._history) >= 2, f"the plots got {len(viewer._history)} points; a line needs 2"
    last = {}

    def drawn():
        pictures = element_pictures(driver, ".uplot canvas")
        if len(pictures) != len(PLOT_COLOURS):
            last["found"] = f"{len(pictures)} plot canvases"
            return None
        counts = {key: {other: _colour_pixels(p, c) for other, c in PLOT_COLOURS.items()}
                  for key, p in zip(PLOT_COLOURS, pictures)}
        last["found"] = counts
        width = min(p.shape[1] for p in pictures)  # a line across the plot has about this many pixels or more
        ok = all(counts[k][k] >= 0.3 * width and all(counts[k][o] < 0.05 * width for o in counts if o != k)
                 for k in counts)
        return ok or None

    try:
        _wait(drawn, 30, "the loss and PSNR plots to draw their lines")
    except AssertionError as err:
        scales = driver.execute_script(
            "const r = (window.__viserTestpoints || {}).uplots || {};"
            "return Object.values(r).map(t => [t.chart.scales.x.min, t.chart.scales.x.max, t.chart.data[0].length]);")
        raise AssertionError(f"{err}: series-colour pixels per plot {last.get('found')}; x scales and point "
                             f"counts in the browser {scales}") from None


def test_browser_shows_training_follows_the_camera_and_the_mode(tmp_path):
    from ngraphics.training.run_config import find_config, load_run_config
    from ngraphics.training.run_folder import RunFolder
    from ngraphics.training.trainer import Trainer
    from ngraphics.viewer import Viewer, ViewerConfig
    from ngraphics.viewer.browser import headless_chromium, page_picture

    trainer = Trainer(load_run_config(find_config(None), TINY), RunFolder(tmp_path / "run"))
    viewer = Viewer(trainer.method, trainer.train_scene, trainer.run.path,
                    ViewerConfig(port=8470, max_resolution=96, render_share=0.2), lock=trainer.lock, training=True)
    trainer.hooks.append(viewer)
    try:
        with headless_chromium() as driver:
            driver.get(viewer.url)
            _wait(lambda: bool(viewer.views), 60, "the browser to connect")
            viewer.show_cameras(False)  # frustums would cover the picture we compare
            trainer.train()
            view = next(iter(viewer.views.values()))
            assert view.frames >= 1, "no frame was rendered while training"
            if os.environ.get("NGRAPHICS_VIEWER_SCREENSHOT"):
                cv2.imwrite(os.environ["NGRAPHICS_VIEWER_SCREENSHOT"], page_picture(driver)[..., ::-1])
            _plots_draw_their_lines(driver, viewer)
            # camera 0's view from a step back (the 40-step model is fog from up close): the whole scene in view
            centre = trainer.train_scene.aabb.double().mean(0).numpy()
            position = trainer.train_scene.cameras.origins[0].double().numpy()
            version = view.version
            view.client.camera.position = centre + 1.25 * (position - centre)
            view.client.camera.look_at = centre
            _wait(lambda: view.version > version, 30, "the camera move to reach the viewer")
            viewer.start()  # training is over: the viewer's own thread renders from now on

            view = _full_frame_after(viewer, view.version)
            first = _shown_matches_offline(driver, viewer, view)

            client = view.client  # move the camera through viser's API: orbit 60 degrees about the centre
            position = np.asarray(client.camera.position, dtype=np.float64)
            c, s = np.cos(np.radians(60)), np.sin(np.radians(60))
            offset = position - centre
            client.camera.position = centre + np.array([c * offset[0] - s * offset[1],
                                                        s * offset[0] + c * offset[1], offset[2]])
            client.camera.look_at = centre
            view = _full_frame_after(viewer, view.version + 1)
            moved = _shown_matches_offline(driver, viewer, view)
            _changed(moved, first, "camera")

            assert "depth" in viewer.keys and "alpha" in viewer.keys
            version = view.version
            viewer.set_mode("depth")
            view = _full_frame_after(viewer, version + 1)
            depth = _shown_matches_offline(driver, viewer, view)
            _changed(depth, moved, "render mode")
    finally:
        viewer.close()

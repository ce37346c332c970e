"""A picture of the viewer page for the docs: a finished run served as `ngraphics view` serves it, opened in a
headless Chromium (`ngraphics.viewer.browser`), saved once the full-size frame is on the canvas.

    ngraphics train --name viewer-demo                     # the procedural scene, CPU-sized
    python -m ngraphics.viewer.snapshot runs/viewer-demo docs/images/viewer.png --position 1.62 1.62 1.61 \
        --fov 55 --width 1200 --height 720 --resolution 1200

The browser's camera is the viewer's initial one (between two training cameras, inside their ring, so the
frustums lie behind it or around the scene, never in front of it), or `--position` looking at the scene's
centre (docs/images/viewer.png: 2.8 from the centre at 35 degrees elevation and 45 degrees azimuth, inside the
procedural scene's ring of cameras at 3.5). Viser's "Software WebGL rendering detected"
notice, which only software WebGL (SwiftShader) shows, is closed before the picture is taken.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run", help="run folder (path or name under --runs-dir)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--width", type=int, default=1000, help="browser window width, pixels")
    parser.add_argument("--height", type=int, default=560, help="browser window height, pixels")
    parser.add_argument("--resolution", type=int, default=1000, help="longer side of the rendered frame")
    parser.add_argument("--no-cameras", action="store_true", help="hide the training cameras' frustums")
    parser.add_argument("--position", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="camera position, looking at the scene box's centre (default: the initial camera)")
    parser.add_argument("--fov", type=float, help="vertical field of view, degrees (default: training camera 0's)")
    parser.add_argument("--port", type=int, default=8520)
    args = parser.parse_args(argv)

    import cv2

    from ngraphics.training.evaluation import BACKGROUNDS
    from ngraphics.training.run_folder import resolve_run
    from ngraphics.training.trainer import restore_run
    from ngraphics.viewer import Viewer, ViewerConfig
    from ngraphics.viewer.browser import headless_chromium, missing, page_picture

    if missing():
        print(f"viewer snapshot: {missing()}", file=sys.stderr)
        return 2
    folder = resolve_run(args.run, args.runs_dir)
    split = folder.read_config().get("data", {}).get("train_split", "train")
    run_config, method, scene, _ = restore_run(folder, split, "cpu")
    viewer = Viewer(method, scene, folder.path, ViewerConfig(port=args.port, max_resolution=args.resolution),
                    BACKGROUNDS[run_config.data.eval_background])
    viewer.show_cameras(not args.no_cameras)
    viewer.start()
    try:
        with headless_chromium(args.width, args.height) as driver:
            driver.get(viewer.url)
            deadline = time.time() + 600
            while time.time() < deadline and not viewer.views:
                time.sleep(0.2)
            view = next(iter(viewer.views.values()))
            if args.position is not None:
                version = view.version
                view.client.camera.position = tuple(args.position)
                view.client.camera.look_at = tuple(scene.aabb.double().mean(0).tolist())
            if args.fov is not None:
                version = view.version
                view.client.camera.fov = math.radians(args.fov)
                while time.time() < deadline and view.version == version:
                    time.sleep(0.05)
            while time.time() < deadline and not (view.sent_full and view.sent_version == view.version):
                time.sleep(0.2)
            time.sleep(3.0)  # the JPEG decoded and drawn
            driver.execute_script(  # close the software-WebGL notice (headless SwiftShader only)
                "document.querySelectorAll('.mantine-Notification-root').forEach(n => n.remove());")
            time.sleep(0.5)
            cv2.imwrite(args.out, page_picture(driver)[..., ::-1])
    finally:
        viewer.close()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

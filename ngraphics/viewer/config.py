"""`ViewerConfig`: the viewer's settings, importable without viser or torch (the CLI builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass

from ngraphics.errors import ConfigError


@dataclass(frozen=True)
class ViewerConfig:
    """Viewer settings (`ngraphics view` / `train --viewer` flags).

    host: address to bind; 127.0.0.1 (this machine only) unless you mean to share it.
    port: first port to try; a port in use moves on to the next free one (said on stderr).
    render_share: share of wall time given to rendering while training, in [0.001, 1] (GUI slider, in 0.1 %
        steps).
    max_resolution: longer side of a still frame, pixels (the browser canvas, shrunk to fit).
    moving_frame_s: target seconds per frame while the camera moves, rendering and JPEG encoding included (sets
        the reduced size; 1/40 s leaves room for the rest of the loop, so a moving camera gets >= 30 frames/s).
    still_after_s: the camera counts as still after this many seconds without a move (a dragged camera moves
        every browser frame, 1/60 s; the full frame should follow a stop within 100 ms, rendering included).
    still_refresh_s: while training, a still camera's picture follows the model at most this often (and
        within the budget): the model changes every step, the picture need not.
    max_train_frame_s: while training, the longest one frame may take (measured speed): a full frame that
        would take longer is rendered smaller, so the training thread never stalls long for the viewer.
    thumbnail: longer side of the training photos shown in the frustums, pixels (0: no photos).
    mesh_resolution: marching-cubes grid of the mesh shown for surface methods (GUI slider).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    render_share: float = 0.03
    max_resolution: int = 512
    moving_frame_s: float = 1 / 40
    still_after_s: float = 0.03
    still_refresh_s: float = 2.0
    max_train_frame_s: float = 1.0
    thumbnail: int = 96
    mesh_resolution: int = 128

    def __post_init__(self) -> None:
        if not 0.001 <= self.render_share <= 1:
            raise ConfigError(f"--viewer-share must be in [0.001, 1] (0.1 % to all of the time), got "
                              f"{self.render_share}")
        if self.max_resolution < 8 or not 0 < self.port < 65536:
            raise ConfigError(f"viewer: need --max-resolution >= 8 and a port in 1..65535, got "
                              f"{self.max_resolution} and {self.port}")

"""A viser client without a browser: it speaks viser's websocket protocol itself, for the viewer's benchmark on
machines with no browser (the GPU machine) and for measuring the viewer without a software-rendering browser
sharing its CPU.

It does what the browser's JavaScript does on the wire and nothing more: it connects with viser's version
subprotocol, sends its camera as a `ViewerCameraMessage` (which is also what makes viser count it as
connected), and decodes every message window the server sends (8-byte decompressed size, 8-byte compressed
size, zstd-compressed msgpack `{"messages": [...]}`, raw binary buffers after it), keeping the background
images, which are the viewer's rendered frames, with their arrival time and JPEG size. It draws nothing.

    with SocketClient(viewer.url, 800, 800) as client:
        sent = client.look(position, look_at)         # like a browser's camera move; returns the send time
        frame = client.wait_frame(after=sent)          # the first frame that arrived after it
        frame.arrived - sent, frame.size                # latency (s), (width, height)
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One rendered frame as the client received it: arrival time (time.perf_counter()), JPEG size
    (width, height) and encoded bytes."""

    arrived: float
    size: tuple[int, int]
    nbytes: int


def look_at_wxyz(position, look_at, up) -> np.ndarray:
    """Camera-to-world rotation (OpenCV axes: x right, y down, z forward) of a camera at `position` looking at
    `look_at` with `up` up, as viser's unit quaternion (w, x, y, z). Each argument (3,)."""
    from viser.transforms import SO3

    forward = np.asarray(look_at, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, float))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return SO3.from_matrix(np.stack([right, down, forward], axis=1)).wxyz


def decode_window(data: bytes) -> list[dict]:
    """The messages of one server-to-client websocket message (viser's hybrid wire format; binary buffers
    are left out: the viewer's frames travel inline as JPEG bytes)."""
    import msgspec
    import zstandard

    size = int.from_bytes(data[:8], "little")
    compressed = int.from_bytes(data[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(data[16:16 + compressed], max_output_size=size)
    return list(msgspec.msgpack.decode(inner)["messages"])


class SocketClient:
    """One browser-like viser client over a websocket; see the module docstring.

    Args:
        url: the viewer's URL (`Viewer.url`, http://host:port).
        width, height: the canvas size it reports, pixels (the viewer renders full frames of this aspect).
        fov: vertical field of view it reports, radians.
    """

    def __init__(self, url: str, width: int, height: int, fov: float = 0.69):
        self.url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self.width, self.height, self.fov = int(width), int(height), float(fov)
        self.frames: list[Frame] = []
        self.messages = 0
        self._arrived = threading.Condition()
        self._socket = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> SocketClient:
        import viser
        from websockets.sync.client import connect

        self._socket = connect(self.url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None,
                               open_timeout=30)
        self._reader = threading.Thread(target=self._read, daemon=True, name="viser-socket-client")
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self) -> None:
        from PIL import Image
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                data = self._socket.recv()
                arrived = time.perf_counter()
                for message in decode_window(data):
                    self.messages += 1
                    if message.get("type") == "BackgroundImageMessage" and message.get("rgb_data"):
                        jpeg = message["rgb_data"]
                        frame = Frame(arrived, Image.open(io.BytesIO(jpeg)).size, len(jpeg))
                        with self._arrived:
                            self.frames.append(frame)
                            self._arrived.notify_all()
        except (ConnectionClosed, OSError, AttributeError):  # closed by either side
            return

    def look(self, position, look_at, up=(0.0, 0.0, 1.0)) -> float:
        """Send a camera pose, as the browser does on every move. Returns the send time (time.perf_counter())."""
        import msgspec
        from viser._messages import ViewerCameraMessage

        message = ViewerCameraMessage(
            wxyz=tuple(float(v) for v in look_at_wxyz(position, look_at, up)),
            position=tuple(float(v) for v in position), fov=self.fov, near=0.01, far=1000.0,
            image_height=self.height, image_width=self.width, look_at=tuple(float(v) for v in look_at),
            up_direction=tuple(float(v) for v in up))
        sent = time.perf_counter()
        self._socket.send(msgspec.msgpack.encode(message.as_serializable_dict()))
        return sent

    def wait_frame(self, after: float, size: tuple[int, int] | None = None, timeout: float = 60.0) -> Frame | None:
        """The first frame that arrived after time `after` (and has `size`, when given); waits up to `timeout`
        seconds for it, None if none came."""
        deadline = time.perf_counter() + timeout
        with self._arrived:
            while True:
                found = next((f for f in self.frames if f.arrived > after and (size is None or f.size == size)),
                             None)
                left = deadline - time.perf_counter()
                if found is not None or left <= 0:
                    return found
                self._arrived.wait(left)


__all__ = ["Frame", "SocketClient", "decode_window", "look_at_wxyz"]

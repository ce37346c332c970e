"""The live browser viewer (viser): `ngraphics view RUN`, `ngraphics train --viewer`. See docs/viewer.md."""

from ngraphics.viewer.config import ViewerConfig


def __getattr__(name: str):  # `Viewer` imports viser and torch: only when asked for
    if name == "Viewer":
        from ngraphics.viewer.server import Viewer

        return Viewer
    raise AttributeError(name)


__all__ = ["Viewer", "ViewerConfig"]

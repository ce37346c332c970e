"""Cameras: one type, one convention (OpenCV: x right, y down, z forward; camera-to-world)."""

from ngraphics.cameras.cameras import Cameras, OPENGL_TO_OPENCV

__all__ = ["Cameras", "OPENGL_TO_OPENCV"]

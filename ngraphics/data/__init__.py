"""Multi-view datasets: loaders for Blender, instant-ngp, COLMAP and NeuS/DTU, and the procedural default
scene.

    from ngraphics.data import load_dataset
    scene = load_dataset("path/to/lego", "train", downscale=2)  # or load_dataset(None): the built-in scene

Every loader returns `SceneData` (ngraphics/data/scene.py): undistorted images on the CPU and `Cameras` in the
OpenCV convention. Format cards live in datasets/ at the repository root. Training batches are drawn from a
SceneData by the samplers of `ngraphics.data.batches` (rays, whole views, image points).
"""

from ngraphics.data.frames import DataWarning
from ngraphics.data.load import detect_format, load_dataset
from ngraphics.data.procedural import ProceduralScene, load_procedural, render_views
from ngraphics.data.scene import SceneData

__all__ = ["DataWarning", "ProceduralScene", "SceneData", "detect_format", "load_dataset", "load_procedural",
           "render_views"]

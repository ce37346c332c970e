"""`Cameras`: intrinsics, distortion and camera-to-world poses of C pinhole cameras.

Convention, fixed for the whole library: OpenCV camera axes (x right, y down, z forward, looking down +z),
`c2w` maps camera coordinates to world coordinates, and pixel (u, v) covers [u, u+1) x [v, v+1), so a ray
through the centre of pixel (i, j) (column i, row j) aims at (i + 0.5, j + 0.5). Loaders convert from their
format's convention once, at load time (Blender/NeRF/instant-ngp poses are OpenGL: multiply by
`OPENGL_TO_OPENCV` on the right).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ngraphics.errors import DataError

# Flip y and z of the camera axes: c2w_opencv = c2w_opengl @ OPENGL_TO_OPENCV.
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """C cameras.

    Attributes:
        c2w: camera-to-world transforms, OpenCV axes. (C, 4, 4) float32, last row (0, 0, 0, 1).
        K: pixel intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. (C, 3, 3) float32, pixels.
        width: image widths. (C,) int64, pixels.
        height: image heights. (C,) int64, pixels.
        distortion: OpenCV coefficients (k1, k2, p1, p2, k3). (C, 5) float32; zeros once images are undistorted.
        time: optional per-camera timestamps of dynamic scenes. (C,) float32 in [0, 1], or None (static).

    Every method that builds new Cameras from these (indexing, `to`, `scaled`, `shifted`, `cat`) keeps `time`.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    distortion: torch.Tensor | None = None
    time: torch.Tensor | None = None

    def __post_init__(self) -> None:
        C = self.c2w.shape[0]
        assert self.c2w.shape == (C, 4, 4), self.c2w.shape
        assert self.K.shape == (C, 3, 3), self.K.shape
        assert self.width.shape == (C,) and self.height.shape == (C,)
        if self.distortion is None:
            self.distortion = torch.zeros(C, 5, dtype=self.c2w.dtype, device=self.c2w.device)
        assert self.distortion.shape == (C, 5), self.distortion.shape
        if self.time is not None and (self.time.shape != (C,) or self.time.dtype != torch.float32):
            raise DataError(f"Cameras.time must be ({C},) float32 like c2w's C, got {tuple(self.time.shape)} "
                             f"{self.time.dtype}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "Cameras":
        """A subset: `cameras[3]`, `cameras[1:4]`, `cameras[tensor_of_indices]` (always keeps the C axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.c2w[index], self.K[index], self.width[index], self.height[index], self.distortion[index],
                       None if self.time is None else self.time[index])

    def to(self, device) -> "Cameras":
        time = None if self.time is None else self.time.to(device)
        return Cameras(*(t.to(device) for t in (self.c2w, self.K, self.width, self.height, self.distortion)), time)

    @staticmethod
    def cat(cameras: "list[Cameras]") -> "Cameras":
        """Concatenate camera sets along C; they must all have `time` or all lack it."""
        timed = {c.time is not None for c in cameras}
        if len(timed) > 1:
            raise DataError("Cameras.cat: some camera sets have time and others do not")
        fields = ("c2w", "K", "width", "height", "distortion") + (("time",) if timed == {True} else ())
        return Cameras(**{k: torch.cat([getattr(c, k) for c in cameras]) for k in fields})

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def origins(self) -> torch.Tensor:
        """Camera centres in world space. (C, 3)"""
        return self.c2w[:, :3, 3]

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by `factor` (e.g. 0.5 halves width and height)."""
        K = self.K.clone()
        K[:, :2, :] *= factor
        width = torch.round(self.width.to(torch.float64) * factor).to(torch.int64)
        height = torch.round(self.height.to(torch.float64) * factor).to(torch.int64)
        return replace(self, K=K, width=width, height=height)

    def shifted(self, du: float, dv: float) -> "Cameras":
        """The same cameras with every pixel moved by (du, dv) pixels: the ray through pixel centre (i + 0.5,
        j + 0.5) of the result is the ray through (i + 0.5 + du, j + 0.5 + dv) of these (supersampling)."""
        K = self.K.clone()
        K[:, 0, 2] -= du
        K[:, 1, 2] -= dv
        return replace(self, K=K)

    def rays(self, camera_index: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays through pixel positions of undistorted cameras.

        Args:
            camera_index: which camera each ray belongs to. (R,) int64
            pixels: pixel positions (u, v) in pixels, u along the width; use +0.5 for pixel centres. (R, 2) float
        Returns: origins (R, 3) and unit directions (R, 3), float32.
        """
        K = self.K[camera_index]
        y = (pixels[:, 1] - K[:, 1, 2]) / K[:, 1, 1]
        x = (pixels[:, 0] - K[:, 0, 2] - K[:, 0, 1] * y) / K[:, 0, 0]  # K[0, 1]: skew (NeuS/DTU cameras)
        d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        c2w = self.c2w[camera_index]
        d_world = torch.einsum("rij,rj->ri", c2w[:, :3, :3], d_cam)
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
        return c2w[:, :3, 3].expand_as(d_world).contiguous(), d_world

    def image_rays(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All pixel-centre rays of camera i, row-major. Returns origins, directions: (H*W, 3) each."""
        H, W = int(self.height[i]), int(self.width[i])
        v, u = torch.meshgrid(
            torch.arange(H, device=self.device, dtype=torch.float32),
            torch.arange(W, device=self.device, dtype=torch.float32),
            indexing="ij",
        )
        pixels = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1) + 0.5
        index = torch.full((H * W,), i, dtype=torch.int64, device=self.device)
        return self.rays(index, pixels)

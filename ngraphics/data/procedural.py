"""The built-in default scene: three textured analytic SDF primitives, rendered by sphere tracing on the CPU.

`load_dataset(None)` / `load_dataset("procedural")` return it, so every method can train and be tested with no
download. Because the geometry is analytic, the scene also gives exact ground truth: per-view z-depth, masks,
normals, the signed distance function itself (`ProceduralScene.sdf`) and a marching-cubes mesh of it.

World frame: +z up (as in Blender / NeRF-synthetic), objects inside [-1, 1]^3, aabb = [-1.5, 1.5]^3, cameras
on the upper hemisphere of radius 3.5 looking at the origin (OpenCV axes, like every `Cameras`).

Objects (each textured in its own local frame, so textures move with it):
- a sphere (radius 0.42) with a latitude/longitude checker,
- a rounded box (half size 0.34 x 0.28 x 0.3, rounding 0.05), rotated about z, with diagonal stripes,
- a torus (radii 0.36 / 0.12), tilted, with smooth value noise.
Shading is view-independent Lambert + ambient (light from `LIGHT`), no shadows. Each pixel traces 4 rays (2x2
grid) for colour and coverage (alpha = fraction of rays that hit) plus 1 ray through its centre for depth,
mask and normal. The seed sets the colours, the noise and the camera jitter; `dynamic=True` makes the objects
move with time t in [0, 1] (sphere bobs, box spins, torus slides) for dynamic-scene methods.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ngraphics.cameras import Cameras
from ngraphics.data.frames import check_split, subsample
from ngraphics.data.scene import SceneData
from ngraphics.errors import DataError

LIGHT = (0.45, -0.35, 0.82)  # direction towards the light, normalised at use
SCENE_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
TORUS_TILT = math.radians(55.0)  # about the x axis
DEFAULT_VIEWS = {"train": 48, "val": 8, "test": 8}


class ProceduralScene:
    """Analytic scene: `sdf(points, time)`, `albedo`, `normal`, `mesh`; see the module docstring.

    Args:
        seed: sets the texture colours and noise (and, in `load_procedural`, the camera jitter).
        dynamic: objects move with time; with dynamic=False `time` is ignored.
    """

    def __init__(self, seed: int = 0, dynamic: bool = False):
        self.seed, self.dynamic = int(seed), bool(dynamic)
        rng = np.random.default_rng(self.seed)
        self.palette = torch.tensor(rng.uniform(0.12, 0.95, size=(3, 2, 3)))  # object, colour A/B, rgb
        self.noise_table = torch.tensor(rng.uniform(0.0, 1.0, size=(16, 16, 16)))
        self.aabb = torch.tensor(SCENE_AABB)

    # --- object placement -----------------------------------------------------------------------------------

    def _local_xyz(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, time) -> list[tuple]:
        """Coordinates in each object's local frame (object at its origin): [(x, y, z)] x 3 objects."""
        if self.dynamic and time is not None:
            t = torch.as_tensor(time, dtype=x.dtype, device=x.device)
            bob, slide = 0.25 * torch.sin(2 * math.pi * t), 0.3 * t
            angle = math.radians(30.0) + 0.5 * math.pi * t
            c, s = torch.cos(angle), torch.sin(angle)
        else:
            bob, slide = 0.0, 0.0
            c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
        sphere = (x - 0.45, y - 0.35, z - 0.02 - bob)
        bx, by = x + 0.45, y - 0.3  # the box is rotated by `angle` about z: undo it
        box = (c * bx + s * by, c * by - s * bx, z + 0.1)
        ty = y + 0.48  # the torus is tilted about x by TORUS_TILT: undo it
        ct, st = math.cos(TORUS_TILT), math.sin(TORUS_TILT)
        torus = (x + 0.05 - slide, ct * ty + st * z, ct * z - st * ty)
        return [sphere, box, torus]

    def _local(self, points: torch.Tensor, time) -> list[torch.Tensor]:
        """Points in each object's local frame. 3 x (N, 3)."""
        return [torch.stack(q, -1) for q in self._local_xyz(*points.unbind(-1), time)]

    @staticmethod
    def _sdf_sphere(x, y, z) -> torch.Tensor:
        return torch.sqrt(x * x + y * y + z * z) - 0.42

    @staticmethod
    def _sdf_box(x, y, z) -> torch.Tensor:
        r = 0.05
        dx, dy, dz = x.abs() - (0.34 - r), y.abs() - (0.28 - r), z.abs() - (0.3 - r)
        outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2 + dz.clamp_min(0) ** 2)
        inside = torch.maximum(dx, torch.maximum(dy, dz)).clamp_max(0)
        return outside + inside - r

    @staticmethod
    def _sdf_torus(x, y, z) -> torch.Tensor:
        ring = torch.sqrt(x * x + y * y) - 0.36
        return torch.sqrt(ring * ring + z * z) - 0.12

    def _sdfs(self, points: torch.Tensor, time) -> list[torch.Tensor]:
        s, b, t = self._local_xyz(*points.unbind(-1), time)
        return [self._sdf_sphere(*s), self._sdf_box(*b), self._sdf_torus(*t)]

    def object_sdfs(self, points: torch.Tensor, time=None) -> torch.Tensor:
        """Signed distance to each object. points (N, 3) -> (N, 3): sphere, box, torus."""
        return torch.stack(self._sdfs(points, time), -1)

    def sdf(self, points: torch.Tensor, time=None) -> torch.Tensor:
        """Signed distance to the scene surface (exact outside the objects, negative inside).

        Args:
            points: world positions. (N, 3) float32 or float64
            time: None, a float in [0, 1], or per-point times (N,); ignored unless dynamic.
        Returns: (N,) same dtype.
        """
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
        ds, db, dt = self._sdfs(points, time)
        return torch.minimum(ds, torch.minimum(db, dt))

    def normal(self, points: torch.Tensor, time=None, eps: float = 1e-4) -> torch.Tensor:
        """Unit outward normals from central differences of the SDF. (N, 3) -> (N, 3)."""
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
        grad = torch.stack(
            [self.sdf(points + o, time) - self.sdf(points - o, time) for o in offsets], -1
        )
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # --- appearance -----------------------------------------------------------------------------------------

    def _value_noise(self, q: torch.Tensor) -> torch.Tensor:
        """Smooth periodic value noise in [0, 1]. q (N, 3) -> (N,)."""
        table = self.noise_table.to(q)
        base = torch.floor(q)
        f = q - base
        f = f * f * (3 - 2 * f)
        i = base.to(torch.int64)
        out = torch.zeros(q.shape[0], dtype=q.dtype, device=q.device)
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in range(3)]
            idx = [(i[:, k] + bits[k]) % 16 for k in range(3)]
            w = torch.ones_like(out)
            for k in range(3):
                w = w * (f[:, k] if bits[k] else 1 - f[:, k])
            out = out + w * table[idx[0], idx[1], idx[2]]
        return out

    def albedo(self, points: torch.Tensor, time=None) -> torch.Tensor:
        """Base colour of the nearest object at each point. (N, 3) -> (N, 3) in [0, 1]."""
        local = self._local(points, time)
        which = self.object_sdfs(points, time).argmin(dim=-1)
        palette = self.palette.to(points)
        s = local[0]
        phi = torch.atan2(s[:, 1], s[:, 0])
        theta = torch.acos((s[:, 2] / s.norm(dim=-1).clamp_min(1e-9)).clamp(-1, 1))
        checker = (torch.floor(phi * 8 / (2 * math.pi)) + torch.floor(theta * 4 / math.pi)) % 2
        b = local[1]
        stripes = (torch.sin(14.0 * (b[:, 0] + 0.6 * b[:, 1] + 0.4 * b[:, 2])) > 0).to(points.dtype)
        noise = self._value_noise(local[2] * 6.0 + 3.0)
        noise = ((noise - 0.3) / 0.4).clamp(0, 1)  # sharpen the blotches
        mix = torch.stack([checker, stripes, noise], -1).gather(1, which[:, None])  # (N, 1) in [0, 1]
        a, c = palette[which, 0], palette[which, 1]
        return a * (1 - mix) + c * mix

    def shade(self, points: torch.Tensor, normals: torch.Tensor, time=None) -> torch.Tensor:
        """Lambert + ambient colour. (N, 3), (N, 3) -> (N, 3) in [0, 1]."""
        light = torch.tensor(LIGHT, dtype=points.dtype, device=points.device)
        light = light / light.norm()
        lambert = (normals @ light).clamp_min(0)[:, None]
        return (self.albedo(points, time) * (0.3 + 0.7 * lambert)).clamp(0, 1)

    # --- geometry export ------------------------------------------------------------------------------------

    def mesh(self, resolution: int = 96, time=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Marching-cubes mesh of the zero level set over [-1.2, 1.2]^3 (skimage).

        Returns: vertices (V, 3) float32, world units; faces (F, 3) int64, outward-facing (counter-clockwise).
        """
        from skimage.measure import marching_cubes

        lo, hi = -1.2, 1.2
        axis = torch.linspace(lo, hi, resolution, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        values = self.sdf(grid, time).reshape(resolution, resolution, resolution).numpy()
        step = (hi - lo) / (resolution - 1)
        verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step))
        verts = torch.from_numpy(verts.copy()).to(torch.float32) + lo
        # skimage winds the faces towards increasing values: outward
        faces = torch.from_numpy(faces.astype(np.int64))
        return verts, faces


BOUNDING_RADIUS = 1.3  # every object stays inside this sphere around the origin at every time


def sphere_trace(
    scene: ProceduralScene, origins: torch.Tensor, dirs: torch.Tensor, time=None, eps: float = 1e-4,
    max_steps: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays through the scene's SDF, from where they enter its bounding sphere.

    Args:
        origins, dirs: rays, dirs unit length. (R, 3) float32
        time: None, a float, or per-ray times (R,) (dynamic scenes).
        eps: a ray hits once the SDF is below eps; rays that do not converge in max_steps count as misses.
    Returns: t (R,) distance along the ray (inf for misses), hit (R,) bool. A hit has |sdf| < eps at t.
    """
    R = origins.shape[0]
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - BOUNDING_RADIUS**2)
    root = disc.clamp_min(0).sqrt()
    t_near, t_far = (-b - root).clamp_min(0), -b + root
    times = None
    if time is not None and scene.dynamic:
        times = torch.as_tensor(time, dtype=origins.dtype).reshape(-1).expand(R)
    t, hit = torch.full((R,), float("inf"), dtype=origins.dtype), torch.zeros(R, dtype=torch.bool)
    idx = torch.nonzero((disc > 0) & (t_far > 0)).squeeze(1)  # compacted state of the rays still marching
    o, d, ta, tf = origins[idx], dirs[idx], t_near[idx], t_far[idx]
    tm = None if times is None else times[idx]
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        dist = scene.sdf(o + ta[:, None] * d, tm)
        done = dist < eps
        t[idx[done]], hit[idx[done]] = ta[done], True
        ta = ta + dist
        keep = ~done & (ta < tf)
        idx, o, d, ta, tf = idx[keep], o[keep], d[keep], ta[keep], tf[keep]
        tm = None if tm is None else tm[keep]
    return t, hit


def _pixel_rays(cameras: Cameras, i: int, offsets: list[tuple[float, float]]):
    """Rays of camera i through pixel (u, v) + offset, for each offset. Returns origins, dirs (S, H*W, 3)."""
    H, W = int(cameras.height[i]), int(cameras.width[i])
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                          indexing="ij")
    index = torch.full((H * W,), i, dtype=torch.int64)
    pixels = [torch.stack([u.reshape(-1) + du, v.reshape(-1) + dv], -1) for du, dv in offsets]
    rays = [cameras.rays(index, p) for p in pixels]
    return torch.stack([r[0] for r in rays]), torch.stack([r[1] for r in rays])


def render_views(scene: ProceduralScene, cameras: Cameras, time=None) -> dict[str, list[torch.Tensor]]:
    """Render every camera of `cameras` (pinhole, OpenCV axes) with ground truth.

    Args:
        scene: the scene.
        cameras: C cameras (any sizes).
        time: None, one float for all views, or per-camera times (C,) in [0, 1] (dynamic scenes).
    Returns: dict of per-camera lists:
        rgba (H, W, 4) float32, straight alpha = pixel coverage (2x2 rays), transparent background;
        depth (H, W) float32 z-depth along the camera axis of the pixel-centre ray, 0 where it misses;
        mask (H, W) float32 1 where the pixel-centre ray hits, else 0;
        normal (H, W, 3) float32 world-space unit normal at the centre hit (0 on misses).
    All views are traced in one batch: the default 48 views at 80x80 take ~1 s on an idle 16-core CPU and
    ~2.5-4 s on one core.
    """
    cameras = cameras.to("cpu")
    C = len(cameras)
    times = None if time is None else torch.as_tensor(time, dtype=torch.float32).reshape(-1).expand(C)
    offsets = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5)]  # 2x2 coverage + centre
    origins, dirs, ray_times, counts = [], [], [], []
    for i in range(C):
        o, d = _pixel_rays(cameras, i, offsets)
        origins.append(o.reshape(-1, 3)), dirs.append(d.reshape(-1, 3)), counts.append(d.shape[1])
        if times is not None:
            ray_times.append(times[i].expand(d.shape[0] * d.shape[1]))
    origins, dirs = torch.cat(origins), torch.cat(dirs)
    ray_times = torch.cat(ray_times) if times is not None else None
    t, hit = sphere_trace(scene, origins, dirs, ray_times)
    points = origins + torch.where(hit, t, torch.zeros_like(t))[:, None] * dirs
    normals, colour = torch.zeros_like(points), torch.zeros_like(points)
    if hit.any():
        p = points[hit].double()
        th = None if ray_times is None else ray_times[hit].double()
        normals[hit] = scene.normal(p, th).float()
        colour[hit] = scene.shade(p, normals[hit].double(), th).float()

    out = {"rgba": [], "depth": [], "mask": [], "normal": []}
    start = 0
    for i, P in enumerate(counts):
        H, W = int(cameras.height[i]), int(cameras.width[i])
        sl = slice(start, start + 5 * P)
        start += 5 * P
        h, c, n, ti, di = hit[sl].reshape(5, P), colour[sl].reshape(5, P, 3), normals[sl].reshape(5, P, 3), \
            t[sl].reshape(5, P), dirs[sl].reshape(5, P, 3)
        cover = h[:4].float().mean(0)
        premult = c[:4].mean(0)
        rgb = torch.where(cover[:, None] > 0, premult / cover.clamp_min(1e-6)[:, None],
                          torch.zeros_like(premult))
        z = torch.where(h[4], ti[4] * (di[4] @ cameras.c2w[i, :3, 2]), torch.zeros_like(ti[4]))
        out["rgba"].append(torch.cat([rgb, cover[:, None]], -1).reshape(H, W, 4).clamp(0, 1))
        out["depth"].append(z.reshape(H, W))
        out["mask"].append(h[4].float().reshape(H, W))
        out["normal"].append(n[4].reshape(H, W, 3))
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world matrices looking from eye to target with world `up` mapping to image up.
    eye, target (C, 3) -> (C, 4, 4)."""
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, torch.as_tensor(up, dtype=eye.dtype).expand_as(forward), dim=-1)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, eye
    return c2w


def orbit_cameras(
    n: int, resolution: int = 80, split: str = "train", seed: int = 0, radius: float = 3.5,
    fov_deg: float = 36.0,
) -> Cameras:
    """n square cameras on the upper hemisphere (elevation 8-65 degrees) looking at the origin.

    "train" spreads them on a golden-angle spiral with small seeded jitter; "val"/"test" draw them at random
    (seeded differently per split), so the splits do not share views.
    """
    offset = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, offset])
    lo, hi = math.radians(8.0), math.radians(65.0)
    if split == "train":
        k = np.arange(n)
        azimuth = k * math.pi * (3 - math.sqrt(5)) + rng.uniform(-0.05, 0.05, n)
        elevation = lo + (hi - lo) * (k + 0.5) / n + rng.uniform(-0.02, 0.02, n)
    else:
        azimuth = rng.uniform(0, 2 * math.pi, n)
        elevation = np.arcsin(rng.uniform(math.sin(lo), math.sin(hi), n))
    eye = radius * np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                             np.sin(elevation)], -1)
    c2w = look_at(torch.tensor(eye, dtype=torch.float32), torch.zeros(n, 3))
    f = 0.5 * resolution / math.tan(0.5 * math.radians(fov_deg))
    K = torch.tensor([[f, 0.0, resolution / 2], [0.0, f, resolution / 2], [0.0, 0.0, 1.0]]).repeat(n, 1, 1)
    size = torch.full((n,), resolution, dtype=torch.int64)
    return Cameras(c2w=c2w, K=K, width=size, height=size.clone())


def view_times(n: int, split: str, seed: int = 0) -> torch.Tensor:
    """Per-view times for dynamic scenes: one stratified random time per view, increasing. (n,) in [0, 1)."""
    rng = np.random.default_rng([seed, 7, list(DEFAULT_VIEWS).index(split)])
    return torch.tensor((np.arange(n) + rng.uniform(0, 1, n)) / n, dtype=torch.float32)


def load_procedural(
    split: str = "train", resolution: int = 80, n_views: int | None = None, seed: int = 0,
    background: str = "white", dynamic: bool = False, max_frames: int | None = None, frame_stride: int = 1,
    mesh_resolution: int = 96,
) -> SceneData:
    """The built-in scene as SceneData (deterministic given the arguments).

    Args:
        split: "train" (48 views by default), "val" (8), "test" (8) or "all" (the three concatenated).
        resolution: image width = height in pixels.
        n_views: views per split (default DEFAULT_VIEWS[split]).
        seed: colours, noise and camera jitter.
        background: recorded in SceneData.background; images are RGBA with alpha = coverage.
        dynamic: moving objects; cameras.time (SceneData.times) holds each view's time in [0, 1].
        max_frames, frame_stride: keep views[::frame_stride][:max_frames] (before rendering).
        mesh_resolution: marching-cubes grid for SceneData.surface (static scenes only; 0 skips it).
    Returns: SceneData with RGBA images, depths, masks, surface (static), cameras.time (dynamic), and
        meta["scene"] (the ProceduralScene: call its `sdf`), meta["normals"] (per-view world normals).
    """
    check_split(split, "procedural")
    if resolution < 4 or (n_views is not None and n_views < 1):
        raise DataError(f"procedural: need resolution >= 4 and n_views >= 1, got {resolution}, {n_views}")
    scene = ProceduralScene(seed, dynamic)
    cameras, times, names = [], [], []
    for s in list(DEFAULT_VIEWS) if split == "all" else [split]:
        n = DEFAULT_VIEWS[s] if n_views is None else int(n_views)
        cameras.append(orbit_cameras(n, resolution, s, seed))
        times.append(view_times(n, s, seed))
        names += [f"{s}_{i:03d}" for i in range(n)]
    keep = torch.tensor(subsample(range(len(names)), max_frames, frame_stride))
    cameras = Cameras.cat(cameras)[keep]
    if dynamic:
        cameras = replace(cameras, time=torch.cat(times)[keep])
    views = render_views(scene, cameras, cameras.time)
    surface = scene.mesh(mesh_resolution) if mesh_resolution and not dynamic else None
    return SceneData(
        cameras=cameras, images=views["rgba"], names=[names[i] for i in keep],
        aabb=scene.aabb.to(torch.float32),
        near=1.5, far=6.0, masks=views["mask"], depths=views["depth"], background=background, surface=surface,
        meta={"format": "procedural", "scene": scene, "split": split, "seed": seed, "resolution": resolution,
              "normals": views["normal"]},
    )

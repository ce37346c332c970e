"""The standard Gaussian-splat files: INRIA 3DGS `.ply`, antimatter15's `.splat`, Niantic's `.spz`.

All three read into and write from one `Splats` (3DGS's stored parameterisation: log scales, opacity logits,
SH coefficients with the DC term first) in the scene's world frame as INRIA .ply files hold it (x right,
y down, z forward: "RDF" in the spz library's words). `.ply` and `.splat` store that frame as it is; `.spz`
stores "RUB" (y and z flipped), so its reader and writer convert as the library does for RDF data
(`flip_rub_rdf`: positions, quaternions and the odd-in-y-or-z SH coefficients change sign).

- `.ply`: binary little-endian, one `vertex` element of float32 properties x y z, nx ny nz (zeros),
  f_dc_0..2, f_rest_0..3(K-1)-1 (channel-major: all R coefficients, then G, then B), opacity, scale_0..2,
  rot_0..3 (w x y z). K = (degree + 1)^2, so f_rest has 0, 9, 24 or 45 entries.
- `.splat` (antimatter15/splat): 32 bytes per Gaussian, no header: position 3 x float32, scales 3 x
  float32 (not log), RGBA 4 x uint8 (rgb = 0.5 + C0 f_dc, a = sigmoid(opacity)), quaternion 4 x uint8
  (w x y z, q * 128 + 128). Degree 0 only; 8-bit colour, opacity and rotation.
- `.spz` (nianticlabs/spz): a 16-byte header (magic "NGSP", version, count, SH degree, fractional bits,
  flags, 1 byte: v4's stream count) then, per attribute, positions (24-bit fixed point), alphas (uint8
  sigmoid), colours (uint8, f_dc x 0.15 + 0.5), scales (uint8, (log s + 10) x 16), rotations (v2: x y z of
  a w >= 0 quaternion; v3+: "smallest three", 2 + 3 x 10 bits) and SH (uint8, x 128 + 128, coefficient-major).
  Versions 2 and 3 gzip the whole stream; version 4 keeps the header plain and follows it with a table of
  (compressed, uncompressed) uint64 sizes at the header's offset and one zstd frame per attribute.
Every reader checks sizes, magic, version and finiteness and raises a one-line DataError naming the file;
writers go through `ngraphics.io.atomic`, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ngraphics.errors import ConfigError, DataError
from ngraphics.io.atomic import atomic_write_bytes

SH_C0 = 0.28209479177387814  # Y_0^0
FORMATS = ("ply", "splat", "spz")
SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_COLOR_SCALE = 0.15
SPZ_MAX_POINTS = 10_000_000


@dataclass
class Splats:
    """N Gaussians in 3DGS's stored parameterisation.

    means: centres, world units. (N, 3) float32
    scales: log standard deviations. (N, 3) float32
    quats: rotations (w, x, y, z), any norm. (N, 4) float32
    opacities: logits. (N,) float32
    sh: spherical-harmonics coefficients, DC first. (N, K, 3) float32, K = (degree + 1)^2 in {1, 4, 9, 16}
    """

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return round(math.sqrt(self.sh.shape[1])) - 1

    def finite_rows(self) -> torch.Tensor:
        """(N,) bool: rows whose every parameter is finite."""
        return (self.means.isfinite().all(1) & self.scales.isfinite().all(1) & self.quats.isfinite().all(1)
                & self.opacities.isfinite() & self.sh.isfinite().flatten(1).all(1))

    def select(self, rows: torch.Tensor) -> Splats:
        return Splats(self.means[rows], self.scales[rows], self.quats[rows], self.opacities[rows], self.sh[rows])

    def check(self, where: str) -> None:
        N = len(self)
        K = self.sh.shape[1] if self.sh.ndim == 3 else -1
        if (self.means.shape != (N, 3) or self.scales.shape != (N, 3) or self.quats.shape != (N, 4)
                or self.opacities.shape != (N,) or self.sh.shape != (N, K, 3) or K not in (1, 4, 9, 16)):
            raise DataError(f"{where}: inconsistent splat shapes means {tuple(self.means.shape)}, scales "
                            f"{tuple(self.scales.shape)}, quats {tuple(self.quats.shape)}, opacities "
                            f"{tuple(self.opacities.shape)}, sh {tuple(self.sh.shape)} (K must be 1, 4, 9 or 16)")
        bad = int((~self.finite_rows()).sum())
        if bad:
            raise DataError(f"{where}: {bad} of {N} Gaussians have NaN or infinite parameters")
        if N == 0:
            raise DataError(f"{where}: no Gaussians")


def _float(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C"))  # a copy: file buffers are read-only


def _finite_for_writing(splats: Splats, path: Path) -> tuple[Splats, int]:
    """Drop rows with NaN/inf parameters; returns the kept splats and how many were dropped."""
    keep = splats.finite_rows()
    dropped = int((~keep).sum())
    splats = splats.select(keep) if dropped else splats
    if len(splats) == 0:
        raise DataError(f"{path}: nothing to write: all {dropped} Gaussians have NaN or infinite parameters")
    return splats, dropped


# --- INRIA .ply ------------------------------------------------------------------------------------------------

def _ply_names(K: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * (K - 1))] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def ply_bytes(splats: Splats) -> bytes:
    N, K = len(splats), splats.sh.shape[1]
    names = _ply_names(K)
    rest = splats.sh[:, 1:].transpose(1, 2).reshape(N, -1)  # channel-major
    columns = torch.cat([splats.means, torch.zeros(N, 3), splats.sh[:, 0], rest, splats.opacities[:, None],
                         splats.scales, splats.quats], 1)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {N}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    return header.encode("ascii") + columns.detach().cpu().numpy().astype("<f4").tobytes()


def read_ply(path: str | Path) -> Splats:
    """A 3DGS .ply (binary little-endian float32 properties; extra properties are ignored)."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise DataError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header)")
    lines = [ln.strip() for ln in data[:end].decode("ascii", "replace").splitlines()[1:]]
    lines = [ln for ln in lines if ln and not ln.startswith(("comment", "obj_info"))] + ["", ""]
    if lines[0] != "format binary_little_endian 1.0":
        raise DataError(f"{path}: expected 'format binary_little_endian 1.0', got {lines[0]!r}")
    element = lines[1].split()
    if len(element) != 3 or element[:2] != ["element", "vertex"] or not element[2].isdigit():
        raise DataError(f"{path}: expected 'element vertex N' first, got {lines[1]!r}")
    N = int(element[2])
    props = []
    for ln in lines[2:-2]:
        parts = ln.split()
        if parts[0] == "element":
            break
        if len(parts) != 3 or parts[0] != "property" or parts[1] not in ("float", "float32"):
            raise DataError(f"{path}: vertex property {ln!r} is not a float32 (3DGS files hold float32 only)")
        props.append(parts[2])
    body = data[end + len(b"end_header\n"):]
    if len(body) < N * 4 * len(props):
        raise DataError(f"{path}: truncated: {N} vertices x {len(props)} floats need {N * 4 * len(props)} "
                        f"bytes, the file has {len(body)}")
    table = np.frombuffer(body, "<f4", count=N * len(props)).reshape(N, len(props))
    col = {n: i for i, n in enumerate(props)}
    n_rest = sum(n.startswith("f_rest_") for n in props)
    if n_rest not in (0, 9, 24, 45):
        raise DataError(f"{path}: {n_rest} f_rest_* properties is no SH degree (expected 0, 9, 24 or 45)")
    K = n_rest // 3 + 1
    missing = [n for n in _ply_names(K) if n not in col and n not in ("nx", "ny", "nz")]
    if missing:
        raise DataError(f"{path}: missing vertex properties {', '.join(missing)} (not a 3DGS .ply?)")

    def cols(names):
        return _float(table[:, [col[n] for n in names]])

    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(N, 3, K - 1).transpose(1, 2)
    sh = torch.cat([cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None], rest], 1)
    splats = Splats(cols(["x", "y", "z"]), cols([f"scale_{i}" for i in range(3)]),
                    cols([f"rot_{i}" for i in range(4)]), cols(["opacity"])[:, 0], sh)
    splats.check(str(path))
    return splats


# --- antimatter15 .splat ---------------------------------------------------------------------------------------

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(splats: Splats) -> bytes:
    N = len(splats)
    rows = np.zeros(N, SPLAT_DTYPE)
    rows["position"] = splats.means.detach().cpu().numpy()
    rows["scale"] = torch.exp(splats.scales).detach().cpu().numpy()
    rgb = 0.5 + SH_C0 * splats.sh[:, 0]
    rgba = torch.cat([rgb, torch.sigmoid(splats.opacities)[:, None]], 1)
    rows["rgba"] = (rgba * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    q = torch.nn.functional.normalize(splats.quats, dim=1)
    rows["rot"] = (q * 128 + 128).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    order = np.argsort(-(np.exp(splats.scales.detach().cpu().numpy()).prod(1) * rgba[:, 3].detach().cpu().numpy()),
                       kind="stable")  # antimatter15's order: largest, most opaque first
    return rows[order].tobytes()


def read_splat(path: str | Path) -> Splats:
    path = Path(path)
    data = path.read_bytes()
    if len(data) == 0 or len(data) % 32:
        raise DataError(f"{path}: a .splat file is 32 bytes per Gaussian; {len(data)} bytes is "
                        f"{'empty' if not data else 'truncated or not a .splat'}")
    rows = np.frombuffer(data, SPLAT_DTYPE)
    scale = rows["scale"].astype(np.float64)
    if not np.isfinite(rows["position"]).all() or not np.isfinite(scale).all() or (scale <= 0).any():
        raise DataError(f"{path}: NaN, infinite or non-positive positions/scales (not a .splat file?)")
    rgba = rows["rgba"].astype(np.float32) / 255.0
    alpha = np.clip(rgba[:, 3], 1e-6, 1 - 1e-6)
    q = (rows["rot"].astype(np.float32) - 128.0) / 128.0
    q[np.linalg.norm(q, axis=1) == 0] = (1, 0, 0, 0)
    splats = Splats(_float(rows["position"]), _float(np.log(scale)), _float(q),
                    _float(np.log(alpha / (1 - alpha))), _float((rgba[:, :3] - 0.5) / SH_C0)[:, None])
    splats.check(str(path))
    return splats


# --- Niantic .spz ----------------------------------------------------------------------------------------------

# sign of each SH coefficient (3DGS's real basis, bands 1-3) under (x, y, z) -> (x, -y, -z)
SH_FLIP_YZ = torch.tensor([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=torch.float32)


def flip_rub_rdf(splats: Splats) -> Splats:
    """The same Gaussians with y and z negated (RUB <-> RDF, its own inverse)."""
    means = splats.means * torch.tensor([1.0, -1.0, -1.0])
    quats = splats.quats * torch.tensor([1.0, 1.0, -1.0, -1.0])  # w x y z: R' = F R F with F = diag(1, -1, -1)
    sh = splats.sh.clone()
    sh[:, 1:] *= SH_FLIP_YZ[: sh.shape[1] - 1, None]
    return Splats(means, splats.scales, quats, splats.opacities, sh)


def _sh_dim(degree: int) -> int:
    return (degree + 1) ** 2 - 1


def _pack_quats_smallest_three(q: np.ndarray) -> np.ndarray:
    """(N, 4) x y z w -> (N, 4) uint8: index of the largest |component| (2 bits) and the other three as sign +
    9-bit magnitude / sqrt(1/2), the first of them in the high bits."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    largest = np.abs(q).argmax(1)
    negate = q[np.arange(len(q)), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        sel = largest != i
        neg = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = (511.0 * np.abs(q[:, i]) / math.sqrt(0.5) + 0.5).astype(np.uint32)
        comp = np.where(sel, (comp << 10) | (neg << 9) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_quats_smallest_three(r: np.ndarray) -> np.ndarray:
    comp = r.astype(np.uint32) @ np.array([1, 1 << 8, 1 << 16, 1 << 24], dtype=np.uint32)
    largest = comp >> 30
    q = np.zeros((len(r), 4), np.float32)
    for i in range(3, -1, -1):
        sel = largest != i
        mag = (comp & 511).astype(np.float32)
        neg = (comp >> 9) & 1
        value = math.sqrt(0.5) * mag / 511.0 * np.where(neg == 1, -1.0, 1.0)
        q[:, i] = np.where(sel, value, 0.0)
        comp = np.where(sel, comp >> 10, comp)
    q[np.arange(len(r)), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(1)))
    return q


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def spz_bytes(splats: Splats, version: int = 4) -> bytes:
    if version not in (2, 3, 4):
        raise ConfigError(f"spz version {version}: this writer writes versions 2, 3 and 4")
    splats = flip_rub_rdf(splats)
    N, degree = len(splats), splats.sh_degree
    means = splats.means.detach().cpu().numpy().astype(np.float64)
    fixed = np.round(means * 4096.0).astype(np.int64)
    if np.abs(fixed).max(initial=0) >= 1 << 23:
        raise DataError(f"spz: positions must lie within +-2048 world units (24-bit fixed point, 12 fractional "
                        f"bits), got {np.abs(means).max():.1f}")
    positions = (fixed.reshape(-1)[:, None] >> np.array([0, 8, 16])) & 0xFF
    alphas = _u8(torch.sigmoid(splats.opacities).detach().cpu().numpy() * 255.0)
    colors = _u8(splats.sh[:, 0].detach().cpu().numpy() * (SPZ_COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((splats.scales.detach().cpu().numpy() + 10.0) * 16.0)
    q = splats.quats.detach().cpu().numpy()[:, [1, 2, 3, 0]]  # x y z w
    if version >= 3:
        rotations = _pack_quats_smallest_three(q)
    else:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        q = q * np.where(q[:, 3:] < 0, -127.5, 127.5) + 127.5
        rotations = _u8(q[:, :3])
    sh = splats.sh[:, 1:].detach().cpu().numpy()  # (N, K-1, 3): coefficient-major, colour inner
    sh_bytes = np.clip(((np.round(sh * 128.0) + 128.0 + 4) // 8) * 8, 0, 255).astype(np.uint8)  # 5-bit buckets
    if degree >= 1:  # degree-1 coefficients keep 5 bits, the rest 4 (the library's defaults)
        rest = np.clip(((np.round(sh[:, 3:] * 128.0) + 128.0 + 8) // 16) * 16, 0, 255).astype(np.uint8)
        sh_bytes[:, 3:] = rest
    streams = [positions.astype(np.uint8).tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(),
               rotations.tobytes()] + ([sh_bytes.tobytes()] if degree > 0 else [])
    if version < 4:
        header = struct.pack("<IIIBBBB", SPZ_MAGIC, version, N, degree, 12, 0, 0)
        return gzip.compress(header + b"".join(streams), mtime=0)
    import zstandard

    frames = [zstandard.ZstdCompressor(level=12).compress(s) for s in streams]
    header = struct.pack("<IIIBBBBI12x", SPZ_MAGIC, 4, N, degree, 12, 0, len(frames), 32)
    toc = b"".join(struct.pack("<QQ", len(f), len(s)) for f, s in zip(frames, streams))
    return header + toc + b"".join(frames)


def read_spz(path: str | Path) -> Splats:
    """A .spz file of version 2, 3 (gzip) or 4 (zstd streams)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip stream ({e})") from None
        gzipped = True
    else:
        gzipped = False
    if len(data) < 16:
        raise DataError(f"{path}: {len(data)} bytes is too short for a .spz header (16 bytes)")
    magic, version, N, degree, frac, flags, n_streams = struct.unpack_from("<IIIBBBB", data)
    if magic != SPZ_MAGIC:
        raise DataError(f"{path}: not a .spz file (magic {magic:#010x}, expected {SPZ_MAGIC:#010x} 'NGSP')")
    if version not in (2, 3, 4) or (version == 4) == gzipped:
        raise DataError(f"{path}: .spz version {version} {'in gzip' if gzipped else 'without gzip'} is not "
                        "supported (versions 2, 3: gzip; 4: zstd streams)")
    if N > SPZ_MAX_POINTS or degree > 3:
        raise DataError(f"{path}: {N} points of SH degree {degree}: expected <= {SPZ_MAX_POINTS} points, degree <= 3")
    if frac > 23:
        raise DataError(f"{path}: {frac} fractional bits of 24-bit positions: expected 0..23 (not a .spz file?)")
    if flags & 2:
        raise DataError(f"{path}: .spz extensions (flags & 2) are not supported")
    rot_bytes = 4 if version >= 3 else 3
    sizes = [9 * N, N, 3 * N, 3 * N, rot_bytes * N] + ([_sh_dim(degree) * 3 * N] if degree > 0 else [])
    if version < 4:
        body, offset = data, 16
        if len(body) < offset + sum(sizes):
            raise DataError(f"{path}: truncated: {N} points need {offset + sum(sizes)} bytes, got {len(body)}")
        streams = []
        for size in sizes:
            streams.append(body[offset:offset + size])
            offset += size
    else:
        streams = _zstd_streams(path, data, n_streams, sizes)
    pos = np.frombuffer(streams[0], np.uint8).reshape(-1, 3).astype(np.int32)
    fixed = pos[:, 0] | (pos[:, 1] << 8) | (pos[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.reshape(N, 3).astype(np.float32) / float(1 << frac)
    alpha = np.frombuffer(streams[1], np.uint8).astype(np.float32) / 255.0
    alpha = np.clip(alpha, 1e-6, 1 - 1e-6)
    colors = (np.frombuffer(streams[2], np.uint8).astype(np.float32).reshape(N, 3) / 255.0 - 0.5) / SPZ_COLOR_SCALE
    scales = np.frombuffer(streams[3], np.uint8).astype(np.float32).reshape(N, 3) / 16.0 - 10.0
    r = np.frombuffer(streams[4], np.uint8).reshape(N, rot_bytes)
    if version >= 3:
        xyzw = _unpack_quats_smallest_three(r)
    else:
        xyz = r.astype(np.float32) / 127.5 - 1.0
        xyzw = np.concatenate([xyz, np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(1, keepdims=True)))], 1)
    sh = torch.from_numpy(colors)[:, None]
    if degree > 0:
        rest = (np.frombuffer(streams[5], np.uint8).astype(np.float32) - 128.0) / 128.0
        sh = torch.cat([sh, _float(rest.reshape(N, _sh_dim(degree), 3))], 1)
    splats = Splats(_float(means), _float(scales), _float(xyzw[:, [3, 0, 1, 2]]),
                    _float(np.log(alpha / (1 - alpha))), sh)
    splats.check(str(path))
    return flip_rub_rdf(splats)


def _zstd_streams(path: Path, data: bytes, n_streams: int, sizes: list[int]) -> list[bytes]:
    import zstandard

    if n_streams != len(sizes):
        raise DataError(f"{path}: .spz v4 header lists {n_streams} streams, expected {len(sizes)}")
    if len(data) < 32:
        raise DataError(f"{path}: truncated: {len(data)} bytes is too short for a .spz v4 header (32 bytes)")
    (toc,) = struct.unpack_from("<I", data, 16)
    if toc < 32 or len(data) < toc + 16 * n_streams:
        raise DataError(f"{path}: truncated .spz v4 stream table")
    offset, streams = toc + 16 * n_streams, []
    for i, size in enumerate(sizes):
        compressed, raw = struct.unpack_from("<QQ", data, toc + 16 * i)
        if raw != size:
            raise DataError(f"{path}: .spz stream {i} holds {raw} bytes, expected {size}")
        if offset + compressed > len(data):
            raise DataError(f"{path}: truncated: stream {i} ends at byte {offset + compressed}, file has {len(data)}")
        try:
            stream = zstandard.ZstdDecompressor().decompress(data[offset:offset + compressed], max_output_size=size)
        except zstandard.ZstdError as e:
            raise DataError(f"{path}: corrupt zstd stream {i} ({e})") from None
        if len(stream) != size:
            raise DataError(f"{path}: .spz stream {i} decompressed to {len(stream)} bytes, expected {size}")
        streams.append(stream)
        offset += compressed
    return streams


# --- by suffix -------------------------------------------------------------------------------------------------

def read_splats(path: str | Path) -> Splats:
    """Read a .ply, .splat or .spz file (by its suffix)."""
    path = Path(path)
    readers = {".ply": read_ply, ".splat": read_splat, ".spz": read_spz}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise DataError(f"{path}: unknown splat file suffix {path.suffix!r} (expected .ply, .splat or .spz)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return readers[suffix](path)


def write_splats(path: str | Path, splats: Splats, format: str | None = None) -> int:
    """Write `splats` as `format` (ply | splat | spz; default: the suffix of `path`) atomically. Rows with NaN
    or infinite parameters are left out; returns how many were."""
    path = Path(path)
    format = format or path.suffix.lstrip(".")
    if format not in FORMATS:
        raise ConfigError(f"splat format {format!r} is not one of {', '.join(FORMATS)}")
    splats, dropped = _finite_for_writing(splats, path)
    data = {"ply": ply_bytes, "splat": splat_bytes, "spz": spz_bytes}[format](splats)
    atomic_write_bytes(path, data)
    return dropped

"""Splat files: round trips of .ply/.splat/.spz, plyfile as an independent .ply reader, the reference-written
fixtures and a trained INRIA .ply, and one clear error per kind of bad input (never a half-written file)."""

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from ngraphics.cameras import Cameras
from ngraphics.errors import ConfigError, DataError
from ngraphics.io.splat_files import SH_C0, Splats, read_splats, spz_bytes, write_splats
from ngraphics.splatting import rasterization
from ngraphics.splatting.project import quat_scale_to_covar
from tests.conftest import need_data


def random_splats(N=37, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = (degree + 1) ** 2
    return Splats(means=torch.randn(N, 3, generator=g), scales=torch.rand(N, 3, generator=g) * 3 - 5,
                  quats=torch.randn(N, 4, generator=g), opacities=torch.randn(N, generator=g) * 2,
                  sh=torch.rand(N, K, 3, generator=g) - 0.5)


def covariances(s: Splats) -> torch.Tensor:
    return quat_scale_to_covar(s.quats, torch.exp(s.scales))


def test_ply_round_trip_is_exact_and_plyfile_reads_it(tmp_path):
    s = random_splats()
    assert write_splats(tmp_path / "a.ply", s) == 0
    r = read_splats(tmp_path / "a.ply")
    for k in ("means", "scales", "quats", "opacities", "sh"):
        assert torch.equal(getattr(r, k), getattr(s, k)), k
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"]
    assert v.count == 37 and len(v.properties) == 3 + 3 + 3 + 45 + 1 + 3 + 4
    assert np.allclose(v["f_rest_0"], s.sh[:, 1, 0].numpy())  # channel-major: R of coefficient 1 first
    assert np.allclose(v["f_rest_15"], s.sh[:, 1, 1].numpy())  # then G
    assert np.allclose(v["rot_0"], s.quats[:, 0].numpy()) and np.allclose(v["opacity"], s.opacities.numpy())


def test_splat_round_trip_within_8_bit_quantisation(tmp_path):
    s = random_splats(degree=0)
    s.sh = s.sh.clamp(-1.5, 1.5)
    write_splats(tmp_path / "a.splat", s)
    assert (tmp_path / "a.splat").stat().st_size == 32 * 37
    r = read_splats(tmp_path / "a.splat")
    order = torch.cdist(s.means, r.means).argmin(1)  # the file is sorted by size x opacity
    r = r.select(order)
    assert torch.allclose(r.means, s.means) and torch.allclose(r.scales, s.scales, atol=1e-5)
    assert torch.allclose(torch.sigmoid(r.opacities), torch.sigmoid(s.opacities), atol=0.5 / 255 + 1e-6)
    assert torch.allclose(0.5 + SH_C0 * r.sh[:, 0], (0.5 + SH_C0 * s.sh[:, 0]).clamp(0, 1), atol=0.5 / 255 + 1e-6)
    assert torch.allclose(covariances(r), covariances(s), atol=0.05 * float(torch.exp(s.scales).max()) ** 2)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_round_trip_within_quantisation(tmp_path, version):
    s = random_splats(degree=2 if version > 2 else 1)
    s.sh = s.sh * 0.5
    path = tmp_path / f"v{version}.spz"
    path.write_bytes(spz_bytes(s, version))
    r = read_splats(path)
    assert len(r) == len(s) and r.sh.shape == s.sh.shape
    assert (r.means - s.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (r.scales - s.scales).abs().max() <= 0.5 / 16 + 1e-5
    assert (torch.sigmoid(r.opacities) - torch.sigmoid(s.opacities)).abs().max() <= 0.5 / 255 + 1e-6
    assert (r.sh[:, 0] - s.sh[:, 0]).abs().max() <= 0.5 / 255 / 0.15 + 1e-5
    assert (r.sh[:, 1:] - s.sh[:, 1:]).abs().max() <= 8.5 / 128  # 4- and 5-bit buckets
    qs = torch.nn.functional.normalize(s.quats, dim=1)
    dot = (qs * r.quats).sum(1).abs()
    assert dot.min() > (0.999 if version > 2 else 0.99)


def test_spz_v4_layout_is_zstd_streams(tmp_path):
    data = spz_bytes(random_splats(N=5, degree=1), 4)
    magic, version, N, degree, frac, flags, n_streams, toc = struct.unpack_from("<IIIBBBBI", data)
    assert (magic, version, N, degree, frac, n_streams, toc) == (0x5053474E, 4, 5, 1, 12, 6, 32)
    compressed, raw = struct.unpack_from("<QQ", data, toc)
    assert raw == 5 * 9 and data[toc + 16 * 6: toc + 16 * 6 + 4] == b"\x28\xb5\x2f\xfd"


# --- files written by other tools --------------------------------------------------------------------------

def test_reference_fixtures_agree():
    """minimal.splat and minimal-v3/v4.spz: four Gaussians, written by the reference tools."""
    ref = read_splats(need_data("splat", "fixtures", "minimal.splat"))
    assert len(ref) == 4
    assert torch.allclose(torch.exp(ref.scales), torch.full((4, 3), 0.1))
    for name in ("minimal-v3.spz", "minimal-v4.spz"):
        s = read_splats(need_data("splat", "fixtures", name))
        order = torch.cdist(ref.means, s.means).argmin(1)
        s = s.select(order)
        assert torch.allclose(s.means, ref.means, atol=1e-3), name
        assert torch.allclose(torch.exp(s.scales), torch.exp(ref.scales), rtol=0.05), name
        assert torch.allclose(torch.sigmoid(s.opacities), torch.sigmoid(ref.opacities), atol=2 / 255), name
        assert torch.allclose(0.5 + SH_C0 * s.sh[:, 0], 0.5 + SH_C0 * ref.sh[:, 0], atol=2 / 255), name
        assert torch.allclose(covariances(s), covariances(ref), rtol=0.05, atol=1e-6), name


def test_reference_fixtures_v2_and_raw_read():
    v2 = read_splats(need_data("splat", "fixtures", "minimal-v2.spz"))
    raw = need_data("splat", "fixtures", "minimal-raw.spz").read_bytes()  # v2 payload without its gzip
    assert gzip.decompress(need_data("splat", "fixtures", "minimal-v2.spz").read_bytes()) == raw
    assert len(v2) == 4 and torch.allclose(torch.exp(v2.scales), torch.full((4, 3), 0.1), rtol=0.05)
    assert torch.allclose(torch.sigmoid(v2.opacities), torch.full((4,), 0.9), atol=2 / 255)


def test_trained_inria_ply_renders():
    s = read_splats(need_data("splat", "kacytran_try_iter7000_point_cloud.ply"))
    assert len(s) == 9080 and s.sh_degree == 3
    centre = s.means.median(0).values
    extent = float((s.means - centre).norm(dim=1).quantile(0.9))
    c2w = torch.eye(4)
    c2w[:3, 3] = centre - torch.tensor([0.0, 0.0, 2.0 * extent])  # looking along +z at the centre
    K = torch.tensor([[[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]])
    cams = Cameras(c2w[None], K, torch.tensor([64]), torch.tensor([48]))
    out = rasterization(s.means, s.quats, torch.exp(s.scales), torch.sigmoid(s.opacities), s.sh, cams, sh_degree=3)
    rgb, alpha = out["rgb"], out["alpha"]
    assert torch.isfinite(rgb).all() and torch.isfinite(alpha).all()
    assert float(alpha.mean()) > 0.05 and float(rgb.std()) > 0.01


# --- bad input: one clear line each, nothing half-written -------------------------------------------------

def test_ply_missing_fields_and_wrong_sh_count(tmp_path):
    s = random_splats(N=3, degree=1)
    good = (tmp_path / "a.ply")
    write_splats(good, s)
    data = good.read_bytes()
    (tmp_path / "b.ply").write_bytes(data.replace(b"property float opacity\n", b""))
    with pytest.raises(DataError, match="missing vertex properties opacity"):
        read_splats(tmp_path / "b.ply")
    (tmp_path / "c.ply").write_bytes(data.replace(b"property float f_rest_8\n", b""))
    with pytest.raises(DataError, match="8 f_rest_. properties is no SH degree"):
        read_splats(tmp_path / "c.ply")
    (tmp_path / "d.ply").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_splats(tmp_path / "d.ply")
    (tmp_path / "e.ply").write_bytes(b"solid\n")
    with pytest.raises(DataError, match="not a PLY file"):
        read_splats(tmp_path / "e.ply")


def test_truncated_splat_and_spz(tmp_path):
    s = random_splats(N=4, degree=1)
    write_splats(tmp_path / "a.splat", s)
    (tmp_path / "b.splat").write_bytes((tmp_path / "a.splat").read_bytes()[:-5])
    with pytest.raises(DataError, match="32 bytes per Gaussian"):
        read_splats(tmp_path / "b.splat")
    for version in (3, 4):
        data = spz_bytes(s, version)
        (tmp_path / "t.spz").write_bytes(data[: len(data) - 7])
        with pytest.raises(DataError, match="truncated|corrupt"):
            read_splats(tmp_path / "t.spz")


def test_wrong_magic_and_version(tmp_path):
    s = random_splats(N=4, degree=0)
    raw = gzip.decompress(spz_bytes(s, 3))
    (tmp_path / "m.spz").write_bytes(gzip.compress(b"XXXX" + raw[4:]))
    with pytest.raises(DataError, match="not a .spz file"):
        read_splats(tmp_path / "m.spz")
    (tmp_path / "v.spz").write_bytes(gzip.compress(raw[:4] + struct.pack("<I", 9) + raw[8:]))
    with pytest.raises(DataError, match="version 9"):
        read_splats(tmp_path / "v.spz")
    with pytest.raises(ConfigError, match="versions 2, 3 and 4"):
        spz_bytes(s, 1)
    with pytest.raises(DataError, match="unknown splat file suffix"):
        read_splats(tmp_path / "x.obj")


def test_nan_parameters(tmp_path):
    s = random_splats(N=5, degree=0)
    s.means[1, 0] = float("nan")
    s.opacities[3] = float("inf")
    assert write_splats(tmp_path / "a.ply", s) == 2  # exporters drop and report
    assert len(read_splats(tmp_path / "a.ply")) == 3
    data = bytearray((tmp_path / "a.ply").read_bytes())
    data[-4:] = struct.pack("<f", math.nan)  # a NaN written by some other tool
    (tmp_path / "n.ply").write_bytes(bytes(data))
    with pytest.raises(DataError, match="1 of 3 Gaussians have NaN"):
        read_splats(tmp_path / "n.ply")
    s.means[:] = float("nan")
    with pytest.raises(DataError, match="nothing to write"):
        write_splats(tmp_path / "b.ply", s)
    assert not (tmp_path / "b.ply").exists()


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.spz"
    path.write_bytes(b"old")
    s = random_splats(N=2, degree=0)
    s.means[0, 0] = 1e5  # beyond spz's 24-bit fixed point
    with pytest.raises(DataError, match="within \\+-2048"):
        write_splats(path, s)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.spz"]


def test_rub_rdf_flip_moves_colour_and_covariance_with_the_frame():
    from ngraphics.io.splat_files import flip_rub_rdf
    from ngraphics.splatting.sh import sh_to_color

    s = random_splats(N=11, degree=3)
    f = flip_rub_rdf(s)
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    dirs = torch.nn.functional.normalize(torch.randn(11, 3), dim=1)
    assert torch.allclose(sh_to_color(3, f.sh, dirs @ F), sh_to_color(3, s.sh, dirs), atol=1e-5)
    assert torch.allclose(covariances(f), F @ covariances(s) @ F, atol=1e-6)
    assert torch.allclose(flip_rub_rdf(f).sh, s.sh) and torch.allclose(f.means, s.means @ F)


# --- antimatter15 .splat rotation bytes ---------------------------------------------------------------------

def convert_py_splat(path) -> tuple[bytes, np.ndarray]:
    """antimatter15/splat's convert.py (ply -> .splat) transcribed: plyfile, not our reader; rot_0..rot_3
    (w x y z) normalised, x 128 + 128, truncated to uint8, in that byte order; colours truncated too; rows
    sorted by -exp(sum of log scales) x sigmoid(opacity). Returns the bytes and that order (file row -> ply row)."""
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(path))["vertex"]
    order = np.argsort(-np.exp(v["scale_0"] + v["scale_1"] + v["scale_2"]) / (1 + np.exp(-v["opacity"])))
    rows = []
    for i in order:
        rot = np.array([v["rot_0"][i], v["rot_1"][i], v["rot_2"][i], v["rot_3"][i]], dtype=np.float32)
        color = np.array([0.5 + SH_C0 * v["f_dc_0"][i], 0.5 + SH_C0 * v["f_dc_1"][i], 0.5 + SH_C0 * v["f_dc_2"][i],
                          1 / (1 + np.exp(-v["opacity"][i]))])
        rows += [np.array([v["x"][i], v["y"][i], v["z"][i]], dtype=np.float32).tobytes(),
                 np.exp(np.array([v["scale_0"][i], v["scale_1"][i], v["scale_2"][i]], dtype=np.float32)).tobytes(),
                 (color * 255).clip(0, 255).astype(np.uint8).tobytes(),
                 ((rot / np.linalg.norm(rot)) * 128 + 128).clip(0, 255).astype(np.uint8).tobytes()]
    return b"".join(rows), order


def test_splat_rotation_bytes_are_w_x_y_z_as_antimatter15_writes_them(tmp_path):
    """The same anisotropic Gaussians as .ply and as antimatter15's .splat (convert.py) read back to the same
    covariances up to 8-bit quantisation, and our writer's bytes match convert.py's (rounding vs truncation:
    at most 1 apart). The reference viewer (main.js) reads byte 28 as w, bytes 29-31 as x, y, z. (The
    fixtures cannot tell: minimal.splat's 4 Gaussians are isotropic, so any byte order gives one covariance.)"""
    s = random_splats(N=60, degree=0, seed=3)
    s.scales = torch.log(torch.tensor([0.5, 0.1, 0.02])).expand(60, 3).clone()  # strongly anisotropic
    s.quats = torch.nn.functional.normalize(s.quats, dim=1)
    s.quats[s.quats[:, 0] < 0] *= -1  # w >= 0: the 8-bit code of -q is not that of q
    write_splats(tmp_path / "a.ply", s)
    reference, order = convert_py_splat(tmp_path / "a.ply")
    (tmp_path / "ref.splat").write_bytes(reference)
    r = read_splats(tmp_path / "ref.splat")
    s = s.select(torch.from_numpy(order))
    assert torch.equal(r.means, s.means)
    cov_s, cov_r = covariances(s), covariances(r)
    assert (cov_r - cov_s).abs().max() < 0.05 * 0.25  # 1/128 per quaternion component, largest variance 0.25
    wrong = Splats(r.means, r.scales, r.quats[:, [1, 2, 3, 0]], r.opacities, r.sh)  # x y z w: fails by far
    assert (covariances(wrong) - cov_s).abs().max() > 0.05
    ours = np.frombuffer((write_splats(tmp_path / "b.splat", s), (tmp_path / "b.splat").read_bytes())[1],
                         np.uint8).reshape(60, 32)
    ref = np.frombuffer(reference, np.uint8).reshape(60, 32)
    assert np.array_equal(ours[:, :12], ref[:, :12])  # the same order, the same float32 positions
    assert np.allclose(ours[:, 12:24].copy().view("<f4"), ref[:, 12:24].copy().view("<f4"), rtol=1e-6)
    assert np.abs(ours[:, 24:].astype(int) - ref[:, 24:].astype(int)).max() <= 1



def test_trained_inria_ply_as_splat_keeps_its_covariances(tmp_path):
    """The trained INRIA .ply through convert.py: every covariance within 8-bit rotation quantisation."""
    path = need_data("splat", "kacytran_try_iter7000_point_cloud.ply")
    ply = read_splats(path)
    data, order = convert_py_splat(path)
    (tmp_path / "k.splat").write_bytes(data)
    r = read_splats(tmp_path / "k.splat")
    ply = ply.select(torch.from_numpy(order))
    assert torch.equal(r.means, ply.means)
    largest = torch.exp(ply.scales).max(1).values ** 2
    error = (covariances(r) - covariances(ply)).abs().flatten(1).max(1).values / largest
    assert float(error.max()) < 0.04 and float(error.median()) < 0.012, (error.max(), error.median())


def test_every_truncation_and_byte_flip_is_a_data_error(tmp_path):
    """No other exception, no warning, for any cut-off or damaged file of each format."""
    import random
    import warnings

    s = random_splats(N=3, degree=1)
    from ngraphics.io.splat_files import ply_bytes, splat_bytes
    files = {"a.ply": ply_bytes(s), "a.splat": splat_bytes(s), "v2.spz": spz_bytes(s, 2), "v3.spz": spz_bytes(s, 3),
             "v4.spz": spz_bytes(s, 4)}
    rng = random.Random(0)
    for name, data in files.items():
        cases = [data[:n] for n in range(0, len(data), 3)]
        for _ in range(60):
            damaged = bytearray(data)
            damaged[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            cases.append(bytes(damaged))
        for case in cases:
            (tmp_path / name).write_bytes(case)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    read_splats(tmp_path / name)
                except DataError as err:
                    assert "\n" not in str(err) and str(tmp_path / name) in str(err), err


def test_malformed_ply_headers(tmp_path):
    for header, message in [(b"ply\nend_header\n", "expected 'format binary_little_endian"),
                            (b"ply\nformat binary_little_endian 1.0\nend_header\n", "expected 'element vertex N'"),
                            (b"ply\nformat binary_little_endian 1.0\nelement vertex x\nend_header\n", "element vertex"),
                            (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float\nend_header\n",
                             "is not a float32"),
                            (b"ply\nformat ascii 1.0\nelement vertex 1\nend_header\n", "binary_little_endian")]:
        (tmp_path / "h.ply").write_bytes(header)
        with pytest.raises(DataError, match=message):
            read_splats(tmp_path / "h.ply")

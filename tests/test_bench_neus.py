"""The NeuS device benchmark (`python -m ngraphics.methods.bench_neus`) end to end at toy sizes on the CPU: every
part runs and writes its numbers and pictures (the device run measures; this only checks the program)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, need_data

from ngraphics.methods.bench_neus import main


@pytest.mark.slow
def test_quick_benchmark_writes_every_part(tmp_path, capsys):
    need_data("meshes", "armadillo.obj")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(tmp_path), "--quick", "--data", str(DATA), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "results.json").read_text())
    curve = results["armadillo"]["curve"]
    assert len(curve) >= 2 and curve[-1]["train_s"] > curve[0]["train_s"]
    assert all(0 < row["chamfer_l1_rel_diagonal"] < 1 for row in curve)
    assert (tmp_path / "armadillo_mesh.png").stat().st_size > 0
    if (DATA / "dtu" / "dtu_scan65").is_dir():
        dtu = results["dtu"]
        assert dtu["steps"] > 0 and 0 <= dtu["mask_iou"] <= 1 and dtu["heldout_psnr"] > 5
        assert (tmp_path / "dtu_mesh.png").stat().st_size > 0 and (tmp_path / "dtu_heldout.png").stat().st_size > 0
    for mode in ("grid", "no_grid"):
        row = results["step"][mode]
        assert row["steps_per_s"] > 0 and set(row["phase_percent"]) == {"sample", "forward", "backward", "optimizer"}
        assert abs(sum(row["phase_percent"].values()) - 100) < 1 and "grid_bwd_bwd" in row["kernel_percent"]
    assert "Chamfer-L1 / diagonal" in capsys.readouterr().out


def test_pack_dtu_keeps_the_scene(tmp_path):
    """The JPEG copy for the device loads as the same scene: same cameras and masks, images within JPEG error."""
    import shutil

    from ngraphics.data.neus import load_neus
    from ngraphics.metrics.image import psnr

    root = need_data("dtu", "dtu_scan65")
    src = tmp_path / "src"
    (src / "image").mkdir(parents=True)
    (src / "mask").mkdir()
    shutil.copy(root / "cameras_sphere.npz", src)
    for i in range(2):
        shutil.copy(root / "image" / f"{i:06d}.png", src / "image")
        shutil.copy(root / "mask" / f"{i:03d}.png", src / "mask")
    assert main(["--pack-dtu", str(src), str(tmp_path / "dst")]) == 0
    a = load_neus(src, "all", downscale=4, cache=False)
    b = load_neus(tmp_path / "dst", "all", downscale=4, cache=False)
    assert torch.equal(a.cameras.c2w, b.cameras.c2w) and torch.equal(a.masks[1], b.masks[1])
    assert all(psnr(x, y) > 40 for x, y in zip(a.images, b.images))
    assert main(["--pack-dtu", str(tmp_path / "nothing"), str(tmp_path / "d2")]) == 2

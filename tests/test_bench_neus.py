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

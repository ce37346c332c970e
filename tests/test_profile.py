"""`ngraphics profile`: the CLI on CPU with tiny sizes writes the expected rows; absent backends are n/a."""

from __future__ import annotations

import json

import pytest

from ngraphics.errors import ConfigError
from ngraphics.profiling.report import format_table


def _tiny_configs(tmp_path):
    hash_cfg = tmp_path / "tiny_hash.json"
    hash_cfg.write_text(json.dumps({"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8}))
    simplex_cfg = tmp_path / "tiny_simplex.yaml"
    simplex_cfg.write_text("otype: Simplex\nn_levels: 2\nlog2_hashmap_size: 8\n")
    return hash_cfg, simplex_cfg


def test_profile_encodings_cli_writes_rows(tmp_path, capsys):
    from ngraphics.cli import main

    hash_cfg, simplex_cfg = _tiny_configs(tmp_path)
    out = tmp_path / "enc.json"
    argv = ["profile", "encodings", "--device", "cpu", "--encodings", f"{hash_cfg},{simplex_cfg},Frequency",
            "--dims", "2,3", "--batch-sizes", "2^6..2^7", "--backends", "torch,triton,tcnn", "--json",
            str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["bench"] == "encodings" and data["environment"]["device"] == "cpu"
    assert len(rows) == 3 * 2 * 2 * 3  # encodings x dims x batch sizes x backends
    keys = {(r["name"], r["n_input_dims"], r["batch_size"], r["backend"]) for r in rows}
    assert ("HashGrid(tiny_hash)", 3, 128, "torch") in keys and ("Frequency", 2, 64, "tcnn") in keys
    for r in rows:
        if r["backend"] == "torch":
            assert r["status"] == "ok" and r["forward_ms"] > 0 and r["forward_vs_torch"] == 1.0
            assert r["forward_pts_per_s"] == pytest.approx(r["batch_size"] / (r["forward_ms"] * 1e-3))
            # Frequency has no parameters (and no input gradients were asked for): no fwd+bwd timing
            assert (r.get("fwd_bwd_ms") is None) == (r["name"] == "Frequency")
        else:  # no CUDA on the test machine: triton and tinycudann cannot run, and say why
            assert r["status"] == "n/a" and r["reason"] and r.get("forward_ms") is None
    widths = {r["n_output_dims"] for r in rows if r["name"] == "HashGrid(tiny_hash)" and "n_output_dims" in r}
    assert widths == {4}
    printed = capsys.readouterr().out
    assert "HashGrid(tiny_hash)" in printed and "triton: n/a" in printed and "tcnn: n/a" in printed


def test_profile_mlp_and_encoding_mlp(tmp_path):
    from ngraphics.cli import main

    out = tmp_path / "mlp.json"
    assert main(["profile", "mlp", "--device", "cpu", "--widths", "16,32", "--batch-sizes", "64",
                 "--backends", "torch", "--input-grad", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["MLP 32->16x2->16", "MLP 32->32x2->16"]
    assert all(r["status"] == "ok" and r["fwd_bwd_ms"] > 0 for r in rows)
    assert rows[0]["n_params"] == 16 * 32 + 16 * 16 + 16 * 16  # tcnn layout, no biases, padded output 16

    hash_cfg, _ = _tiny_configs(tmp_path)
    out = tmp_path / "encmlp.json"
    assert main(["profile", "encoding-mlp", "--device", "cpu", "--encodings", str(hash_cfg), "--dims", "3",
                 "--batch-sizes", "64", "--backends", "torch", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and row["name"] == "HashGrid(tiny_hash)+MLP64x2"
    assert row["n_output_dims"] == 16


def test_profile_bad_arguments_are_one_line(capsys):
    from ngraphics.cli import main

    argv = ["profile", "encodings", "--device", "cpu", "--encodings", "HashGird", "--batch-sizes", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "HashGird" in err and "HashGrid" in err
    assert main(["profile", "encodings", "--device", "cpu", "--backends", "torch,cuda"]) == 2
    assert "cuda" in capsys.readouterr().err
    assert main(["profile", "mlp", "--device", "gpu0"]) == 2  # ngraphics.devices.pick_device names the flag
    assert "--device: 'gpu0' is not a device" in capsys.readouterr().err


def test_parse_sizes():
    from ngraphics.apps.profile import parse_sizes

    assert parse_sizes("2^4..2^6", "x") == [16, 32, 64]
    assert parse_sizes("1000, 2^10,1e3", "x") == [1000, 1024]
    for bad in ("2^4..100", "abc", "0", ""):
        with pytest.raises(ConfigError):
            parse_sizes(bad, "--batch-sizes")


def test_format_table_aligns_and_marks_missing():
    text = format_table([{"a": "x", "b": 1.5}, {"a": "long", "b": None}], [("a", "name"), ("b", "ms")])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "ms"] and lines[2].split() == ["x", "1.5"]
    assert lines[3].split() == ["long", "n/a"]
    assert len({len(line) for line in lines[1:]}) == 1  # numbers right-aligned to one width


def test_time_helpers_call_counts_and_summary():
    """time_fn / time_queued: warm-up calls untimed, then the asked repeats; median within [min, max]."""
    from ngraphics.profiling.timing import time_fn, time_queued

    calls = []
    t = time_queued(lambda: calls.append(1), "cpu", warmup=2, repeats=7)
    assert len(calls) == 9 and t.repeats == 7 and t.min_ms <= t.median_ms <= t.max_ms
    calls.clear()
    t = time_fn(lambda: calls.append(1), "cpu", warmup=3, min_repeats=4, max_repeats=4, min_time_s=0.0)
    assert len(calls) == 7 and t.repeats == 4 and t.min_ms <= t.median_ms <= t.max_ms

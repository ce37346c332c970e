"""training/progress.py: SI numbers and rates against hand-computed strings, record rounding, the bar."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ngraphics.training.progress import format_si, progress_bar, rate_text, round_record


@pytest.mark.parametrize("value,text", [
    (12_345_678, "12.3M"),
    (1234, "1.23k"),
    (1000, "1k"),
    (999, "999"),
    (999.4, "999"),
    (999.6, "1k"),          # rounds to 1000 before the prefix is chosen
    (999_950, "1M"),        # ditto: not "1e+03k"
    (2.5e9, "2.5G"),
    (7.0e12, "7T"),
    (0.5, "0.5"),
    (0.0123, "0.0123"),
    (0, "0"),
    (-2500, "-2.5k"),
    (float("nan"), "nan"),
    (float("inf"), "inf"),
    (float("-inf"), "-inf"),
])
def test_format_si_hand_computed(value, text):
    assert format_si(value) == text


def test_rate_text_hand_computed():
    assert rate_text(24_600_000, 2.0, "rays") == "12.3M rays/s"  # 24.6e6 / 2 = 12.3e6
    assert rate_text(8192 * 25, 0.5, "samples") == "410k samples/s"  # 409,600 -> 3 digits: 410k
    assert rate_text(3, 4.0, "step") == "0.75 step/s"
    assert rate_text(100, 0.0, "rays") == "- rays/s"


def test_round_record_rounds_floats_and_keeps_the_rest():
    record = {"step": 7, "split": "train", "ok": True, "loss": 0.123456789, "small": 1.2345678e-5,
              "big": 1234.567891234, "np": np.float32(0.25), "none": None}
    out = round_record(record)
    assert out == {"step": 7, "split": "train", "ok": True, "loss": 0.123457, "small": 1.23457e-05,
                   "big": 1234.567891, "np": 0.25, "none": None}
    assert type(out["np"]) is float and out["ok"] is True and record["loss"] == 0.123456789  # input unchanged


def test_round_record_passes_nan_and_inf_through():
    out = round_record({"loss": float("nan"), "psnr": float("inf"), "low": float("-inf"), "z": 0.0,
                        "np_nan": np.float64("nan")})
    assert math.isnan(out["loss"]) and math.isnan(out["np_nan"])
    assert out["psnr"] == math.inf and out["low"] == -math.inf and out["z"] == 0.0
    back = json.loads(json.dumps(out))  # what metrics.jsonl holds and RunFolder.read_metrics reads back
    assert math.isnan(back["loss"]) and back["psnr"] == math.inf and back["low"] == -math.inf


def test_progress_bar_on_stderr_or_silent(capsys):
    bar = progress_bar(10, initial=2, unit="case")
    bar.update(3)
    bar.set_postfix_str("loss 0.5")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and "5/10" in captured.err and "loss 0.5" in captured.err
    quiet = progress_bar(10, enabled=False)
    quiet.update(1)
    quiet.set_postfix_str("x")
    quiet.close()
    assert capsys.readouterr() == ("", "")

"""Shared test fixtures.

Real data is found through NGRAPHICS_DATA (default: ../shared/data beside the checkout); tests that need it
skip with the reason when it is absent. GPU tests carry @pytest.mark.gpu and skip without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# pytest-xdist runs one worker per core: one thread each keeps 2 cores from being oversubscribed.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NGRAPHICS_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder; skips the test when it is missing."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set NGRAPHICS_DATA)")
    return DATA


def need_data(*parts: str) -> Path:
    """Path under the shared data folder, or skip with the missing path named."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file missing: {path} (set NGRAPHICS_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

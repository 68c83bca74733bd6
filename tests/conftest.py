"""Shared fixtures: data location, backends under test, hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import uniap

# No test may reach the network: ViT weights come from caches the tests prepare (a test of the
# download path replaces huggingface_hub's download function).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "thorough", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """``../shared/data`` beside the repository, or ``$UNIAP_DATA``; None when absent."""
    path = Path(os.environ.get("UNIAP_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip("the real data set ../shared/data is not beside this checkout (set UNIAP_DATA)")
    return path


def cpu_backends() -> list[str]:
    """CPU backends to compare with the reference: $UNIAP_BACKENDS (comma-separated) or all."""
    wanted = os.environ.get("UNIAP_BACKENDS")
    names = wanted.split(",") if wanted else ["numba"]
    status = uniap.backends.available()
    return [n for n in names if status.get(n, "unknown") is None and n != "numpy"]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251124)

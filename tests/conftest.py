"""Fixtures shared by the test modules that train tiny models end to end."""

from __future__ import annotations

import os
from pathlib import Path

# Marks the test session: rsbench.io installs its crash-injection hook (RSBENCH_TEST_KILL_AT) only
# when this is set at import, so production runs never look at that variable. Set before rsbench is
# imported, and inherited by the `bench`/torchrun subprocesses the kill tests start.
os.environ["RSBENCH_TESTING"] = "1"
# One intra-op thread per process unless the caller says otherwise: the tests train tiny models and start
# `bench`/torchrun subprocesses beside the pytest process, and on a 2-core CI machine two threads each
# only wait for one another (the suite took 14 min with them, 7 min without, on 2 cores). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from rsbench import io as rio


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image, 32 px synthetic dataset folder, generated once per session (tests only read it)."""
    from rsbench.datasets.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("tiny") / "syn"
    generate_synthetic(root, n_images=40, image_size=32, seed=0)
    return root


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RSBENCH_CACHE in the test's tmp folder, and no crash-injection hook left set."""
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(rio.KILL_ENV, raising=False)
    return tmp_path / "cache"

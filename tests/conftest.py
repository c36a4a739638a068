"""Shared fixtures: a private cache, tiny generated streams and the micro model (built once)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

# The suite runs on pytest-xdist workers, one per core: each a 1-thread torch process (two
# 2-thread processes sharing 2 cores spin; DESIGN.md), the processes they launch too. Set before
# any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# Every worker builds its own cache (micro bases and streams: ~1.5 GB of memory and a minute of
# CPU each) and the slowest tests take a minute alone, so more than 4 workers gain little.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return min(MAX_WORKERS, os.cpu_count() or 1)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session uses its own cache, so tests never depend on a user's cache; each
    worker its own folder of it (two processes building one base would write the same files)."""
    given = os.environ.get("MMCL_TEST_CACHE")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    root = Path(given) / worker if given else tmp_path_factory.mktemp("mmcl-cache")
    os.environ["MMCL_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def micro_overrides() -> dict:
    """Config overrides for a fast micro run on a 2-task stream."""
    return {
        "model.preset": "micro",
        "tasks": ["ocr", "gui"],
        "data.train_size": 48,
        "data.test_size": 12,
        "train.epochs": 1,
        "train.batch_size": 16,
        "eval.max_new_tokens": 6,
    }


@pytest.fixture
def killed_after_first_step(monkeypatch) -> Callable[[], AbstractContextManager[None]]:
    """`with killed_after_first_step(): Run(...).execute()`: the run stops right after step 0's
    checkpoint (KeyboardInterrupt, as a killed run), and runs behave normally again after."""
    from mmcl.runner import Run

    @contextmanager
    def killed() -> Iterator[None]:
        real = Run._save

        def crash_after_first_step(self, step, *args):
            real(self, step, *args)
            if step == 0:
                raise KeyboardInterrupt

        monkeypatch.setattr(Run, "_save", crash_after_first_step)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(Run, "_save", real)

    return killed

"""Shared fixtures: a private cache, tiny generated streams and the micro model (built once)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session uses its own cache, so tests never depend on a user's cache."""
    root = Path(os.environ.get("MMCL_TEST_CACHE") or tmp_path_factory.mktemp("mmcl-cache"))
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

"""Shared fixtures: every test gets its own working area; sample data is generated, never stored."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tasks import settings
from tasks.sample import SampleData, generate, write

RUN_DATE = date(2026, 11, 24)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty AUDIENCES_HOME with a private, editable copy of the repository's config."""
    config = tmp_path / "config"
    shutil.copytree(settings.PROJECT_ROOT / "config", config)
    monkeypatch.setenv("AUDIENCES_HOME", str(tmp_path))
    monkeypatch.setenv("AUDIENCES_CONFIG", str(config))
    return tmp_path


@pytest.fixture(scope="session")
def small_sample() -> SampleData:
    return generate(end_date=RUN_DATE, scale=0.2, seed=7)


@pytest.fixture
def sample_home(home: Path, small_sample: SampleData) -> Iterator[Path]:
    write(small_sample, home / "sample")
    yield home

"""The shipped destinations.yaml: every example validates, and only the outbox is on by default."""

from __future__ import annotations

import pytest

from tasks.config.models import AppConfig
from tasks.destinations.base import DESTINATIONS
from tasks.segments.evaluate import load_segments
from tasks.settings import PROJECT_ROOT


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> AppConfig:
    monkeypatch.setenv("AUDIENCES_CONFIG", str(PROJECT_ROOT / "config"))
    return AppConfig()


def test_every_shipped_destination_builds_from_its_options(shipped: AppConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shipped.directory / "destinations.yaml"
    kinds = set()
    for name, cfg in shipped.destinations.destinations.items():
        if "connection" in cfg.options:  # ad clients read their token when built
            monkeypatch.setenv(f"AIRFLOW_CONN_{cfg.options['connection'].upper()}", '{"password": "placeholder"}')
        built = DESTINATIONS.build(name, cfg.kind, cfg.options, path)
        kinds.add(cfg.kind)
        if hasattr(built, "close"):
            built.close()
    assert kinds == set(DESTINATIONS.kinds()), "every destination kind has a shipped example"


def test_only_the_local_outbox_is_enabled_out_of_the_box(shipped: AppConfig) -> None:
    enabled = [n for n, c in shipped.destinations.destinations.items() if c.enabled]
    assert enabled == ["marketing_outbox"]


def test_shipped_examples_name_real_segments(shipped: AppConfig) -> None:
    names = {s.name for s in load_segments(shipped.directory).segments}
    for name, cfg in shipped.destinations.destinations.items():
        if cfg.segments != "all":
            assert set(cfg.segments) <= names, f"{name} names unknown segments {set(cfg.segments) - names}"

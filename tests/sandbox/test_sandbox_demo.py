"""The demo's sandbox: every shipped platform destination pointed at a live local contract server."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import yaml

from tasks import topology
from tasks.sandbox.demo import sandbox
from tasks.settings import PROJECT_ROOT


def test_sandbox_enables_every_platform_against_a_live_server_and_restores_the_environment(tmp_path: Path) -> None:
    before = dict(os.environ)
    with sandbox(PROJECT_ROOT / "config", tmp_path) as config:
        doc = yaml.safe_load((config / "destinations.yaml").read_text(encoding="utf-8"))
        platforms = {n: d for n, d in doc["destinations"].items() if d["kind"] in topology.PLATFORM_KINDS}
        assert {d["kind"] for d in platforms.values()} == set(topology.PLATFORM_KINDS)
        for spec in platforms.values():
            assert spec["enabled"] is True
            url = spec["options"]["base_url"]
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(url, timeout=5).status_code < 500, "the contract server answers"
            assert os.environ[f"AIRFLOW_CONN_{spec['options']['connection'].upper()}"]
        shipped = yaml.safe_load((PROJECT_ROOT / "config" / "destinations.yaml").read_text(encoding="utf-8"))
        assert {n: d["segments"] for n, d in doc["destinations"].items()} == {
            n: d["segments"] for n, d in shipped["destinations"].items()
        }, "the demo keeps each destination's segments"
    assert dict(os.environ) == before
    assert not (PROJECT_ROOT / "config" / "config-sandbox").exists()

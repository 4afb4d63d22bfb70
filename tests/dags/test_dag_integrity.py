"""The DAG files import cleanly and quickly, read only the config that shapes them, import no heavy
library, and generate the topology that config describes.

Runs in a subprocess so Airflow starts with a private AIRFLOW_HOME and the measurements are not
polluted by modules other tests already imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks import settings

PROBE = r"""
import json, os, sys, time
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.append(args[0])
from airflow.dag_processing.dagbag import DagBag
heavy_before = {m for m in ("great_expectations", "duckdb", "ibis", "pandas", "pyarrow") if m in sys.modules}
sys.addaudithook(hook)
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - start
heavy_after = {m for m in ("great_expectations", "duckdb", "ibis", "pyarrow") if m in sys.modules} - heavy_before
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {
        d.dag_id: {
            "tasks": sorted(d.task_ids),
            "schedule": type(d.timetable).__name__,
            "pools": {t.task_id: t.pool for t in d.tasks},
            "docs": {t.task_id: bool(t.doc_md or getattr(t, "doc", None)) for t in d.tasks},
            "doc_md": bool(d.doc_md),
            "catchup": d.catchup,
            "retries": {t.task_id: t.retries for t in d.tasks},
        }
        for d in bag.dags.values()
    },
    "opened": opened,
    "heavy": sorted(heavy_after),
    "seconds": elapsed,
}))
"""


def parse_dags(tmp_path: Path, config: Path | None = None) -> dict:
    env = os.environ | {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AUDIENCES_HOME": str(tmp_path / "home"),
        "AUDIENCES_CONFIG": str(config or settings.PROJECT_ROOT / "config"),
    }
    dags = settings.PROJECT_ROOT / "dags"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(dags)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dags_import_without_errors_heavy_imports_or_data_io(tmp_path: Path) -> None:
    result = parse_dags(tmp_path)
    assert result["errors"] == {}
    assert sorted(result["dags"]) == ["customer_segments", "ingest_crm", "ingest_pos", "ingest_surveys", "ingest_web"]
    for source in ("crm", "pos", "surveys", "web"):
        ingest = result["dags"][f"ingest_{source}"]
        assert {"extract", "validate", "quality_gate"} <= set(ingest["tasks"])
        assert ingest["schedule"] == "CronTriggerTimetable"
    segments = result["dags"]["customer_segments"]
    assert segments["schedule"] == "AssetTriggeredTimetable", "segments run when the sources' Assets land"
    for task in ("unify", "build_features", "evaluate_segments", "deliver__marketing_outbox", "approve_held_syncs"):
        assert task in segments["tasks"]
    assert segments["doc_md"] and segments["docs"]["unify"], "DAG and task docs show in the Airflow UI"
    assert not any(d["catchup"] for d in result["dags"].values()), "backfills are explicit, never catch-up storms"
    assert result["dags"]["ingest_pos"]["retries"]["quality_gate"] == 0, "a failed gate is data, not a glitch"
    assert result["heavy"] == [], f"DAG parsing imported heavy libraries: {result['heavy']}"
    assert result["seconds"] < 10
    project = str(settings.PROJECT_ROOT)
    shaping = {str(settings.PROJECT_ROOT / "config" / f) for f in ("sources.yaml", "destinations.yaml")}
    touched = [
        p
        for p in result["opened"]
        if (
            p.startswith(project)
            and not p.startswith(str(settings.PROJECT_ROOT / "dags"))
            and "/.venv/" not in p
            and "__pycache__" not in p
            and not p.endswith(".py")
            and p not in shaping
        )
        or p.startswith(str(tmp_path / "home"))
    ]
    assert touched == [], f"DAG parsing read data or other files: {touched}"


def test_topology_follows_config_sources_and_destinations(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(settings.PROJECT_ROOT / "config", config)
    sources = yaml.safe_load((config / "sources.yaml").read_text(encoding="utf-8"))
    sources["sources"]["surveys"]["enabled"] = False
    sources["sources"]["web"]["schedule"] = "30 6 * * *"
    (config / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True), encoding="utf-8")
    dests = yaml.safe_load((config / "destinations.yaml").read_text(encoding="utf-8"))
    dests["destinations"]["mailchimp_newsletter"]["enabled"] = True
    dests["destinations"]["meta_ads"]["enabled"] = True
    (config / "destinations.yaml").write_text(yaml.safe_dump(dests, allow_unicode=True), encoding="utf-8")
    result = parse_dags(tmp_path, config)
    assert result["errors"] == {}
    assert "ingest_surveys" not in result["dags"], "a disabled source has no DAG"
    pools = result["dags"]["customer_segments"]["pools"]
    assert pools["deliver__mailchimp_newsletter"] == "audiences_mailchimp"
    assert pools["deliver__meta_ads"] == "audiences_meta_custom_audience"
    assert pools["deliver__marketing_outbox"] == "default_pool", "file destinations need no rate-limit pool"


def test_every_platform_kind_has_a_pool() -> None:
    from tasks import topology
    from tasks.destinations.base import DESTINATIONS

    platform_kinds = {k for k in DESTINATIONS.kinds() if hasattr(DESTINATIONS._kinds[k], "capabilities")}
    assert platform_kinds == set(topology.PLATFORM_KINDS)
    assert set(topology.pools()) == {f"audiences_{k}" for k in platform_kinds}

"""Every DAG file imports cleanly, quickly, and without touching data, config or heavy libraries.

Runs in a subprocess so Airflow starts with a private AIRFLOW_HOME and the measurements are not
polluted by modules other tests already imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    "dags": {d.dag_id: {"tasks": sorted(d.task_ids), "schedule": repr(d.timetable)} for d in bag.dags.values()},
    "opened": opened,
    "heavy": sorted(heavy_after),
    "seconds": elapsed,
}))
"""


def parse_dags(tmp_path: Path) -> dict:
    env = os.environ | {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AUDIENCES_HOME": str(tmp_path / "home"),
    }
    dags = settings.PROJECT_ROOT / "dags"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(dags)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dags_import_without_errors_or_io(tmp_path: Path) -> None:
    result = parse_dags(tmp_path)
    assert result["errors"] == {}
    dag = result["dags"]["customer_segments"]
    for task in ("extract", "validate", "quality_gate", "unify", "build_features", "evaluate_segments", "deliver"):
        assert task in dag["tasks"]
    assert result["heavy"] == [], f"DAG parsing imported heavy libraries: {result['heavy']}"
    project = str(settings.PROJECT_ROOT)
    touched = [
        p
        for p in result["opened"]
        if (
            p.startswith(project)
            and not p.startswith(str(settings.PROJECT_ROOT / "dags"))
            and "/.venv/" not in p
            and "__pycache__" not in p
            and not p.endswith(".py")
        )
        or p.startswith(str(tmp_path / "home"))
    ]
    assert touched == [], f"DAG parsing read data or config files: {touched}"

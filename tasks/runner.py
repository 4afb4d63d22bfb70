"""Run the Airflow DAG in-process for one business date, on embedded defaults.

The demo and `audiences run` go through the real DAG (``dag.test()``), not a side script, so what a
data engineer sees locally is what the scheduler runs in production (ARCHITECTURE decision 9).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tasks import settings

DAG_FILE = settings.PROJECT_ROOT / "dags" / "audiences.py"
SEGMENTS_DAG = "customer_segments"


@dataclass
class RunOutcome:
    state: str
    failed_tasks: list[str]
    task_states: dict[str, str]


def configure_airflow(home: Path) -> Path:
    """Point Airflow at a private SQLite metadata DB and this repository's dags folder.

    Must run before anything imports airflow; an AIRFLOW_HOME the user already set is respected.
    """
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", home / "airflow"))
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(airflow_home)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAG_FILE.parent))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("AUDIENCES_TASK_RETRIES", "0")  # fail fast in-process; the scheduler retries
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return airflow_home


def migrate_metadata_db(airflow_home: Path) -> None:
    """`airflow db migrate` once per Airflow version; it is idempotent but costs seconds."""
    import airflow

    marker = airflow_home / f".migrated-{airflow.__version__}"
    if marker.exists():
        return
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`airflow db migrate` failed (AIRFLOW_HOME={airflow_home}):\n{proc.stderr[-2000:]}\n"
            "Delete that folder to start from a fresh metadata DB, then run again."
        )
    marker.write_text("ok\n")


def load_dags() -> dict[str, Any]:
    """Every DAG the DAG file generates from config, by dag id."""
    spec = importlib.util.spec_from_file_location("audiences_dagfile", DAG_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {v.dag_id: v for v in vars(module).values() if type(v).__name__ == "DAG"}


def run_dag(run_date: date) -> RunOutcome:
    """Each source's ingestion DAG, then the segments DAG for the same business date — what the
    scheduler does when the sources' Assets are published, in one process."""
    from tasks.config.models import AppConfig
    from tasks.settings import RunWindow

    airflow_home = configure_airflow(settings.home())
    migrate_metadata_db(airflow_home)
    window = RunWindow(run_date, AppConfig().pipeline.tz)
    dags = load_dags()
    # dag.test() polls once a second and warns "No tasks to run" while mapped tasks wait: noise.
    logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
    # Re-running a date leaves one serialized DAG version per parse in the embedded DB; harmless here.
    warnings.filterwarnings("ignore", message="Multiple rows returned with uselist=False")
    states: dict[str, str] = {}
    outcome = "success"
    order = [*sorted(d for d in dags if d != SEGMENTS_DAG), SEGMENTS_DAG]
    for dag_id in order:
        dag = dags[dag_id]
        if dag_id == SEGMENTS_DAG and outcome != "success":
            break  # like the scheduler: a source that failed its gate published no Asset, so no segments run
        if dag_id == SEGMENTS_DAG:
            dag_run = dag.test(logical_date=window.as_of, run_conf={"run_date": run_date.isoformat()})
        else:
            # A trigger timetable's run at D+1 00:00 (business time) closes business day D.
            dag_run = dag.test(logical_date=window.as_of)
        for ti in dag_run.get_task_instances():
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            states[key if dag_id == SEGMENTS_DAG else f"{dag_id}.{key}"] = str(ti.state)
        if str(dag_run.state) != "success":
            outcome = str(dag_run.state)
    failed = sorted(k for k, s in states.items() if s in {"failed", "upstream_failed"})
    return RunOutcome(state=outcome, failed_tasks=failed, task_states=states)

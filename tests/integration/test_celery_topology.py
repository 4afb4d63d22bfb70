"""The docker-compose topology, run without Docker: scheduler, DAG processor, API server and a Celery
worker as separate processes on PostgreSQL (metadata and app state) and Redis (broker, results).

Why: `dag.test()` (the demo, test_e2e.py) runs every task in one process, so it cannot catch what
only breaks when tasks are shipped to a worker — a task that is not importable by the worker,
results (XComs) that do not survive serialization through the execution API, a setting one
component reads and another does not, callbacks that assume one process. This test starts each
component the way docker-compose.yml does, triggers every `ingest_<source>` DAG and then
`customer_segments` for one business date through the public REST API, as an operator would, and
checks that the sources' Assets were published and that every task instance ran on the Celery worker.

It creates its own databases and Redis db and drops / flushes them; every process it starts carries
a marker in its environment, so the teardown can prove nothing outlived the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psutil
import pytest
import sqlalchemy as sa

from tasks import settings
from tasks.config.models import AppConfig
from tasks.sample import generate, write
from tasks.settings import RunWindow

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

DAG_ID = "customer_segments"
RUN_DATE = date(2026, 11, 24)
SCALE = 0.2  # about 400 customers: small enough for 2 cores
# The shipped segments.yaml expands (packs, clusters) to about 60 segments, one `deliver` task per
# segment and destination; under Celery every task pays a fresh process and its imports, so that
# fan-out alone takes minutes on 2 cores. A few segments prove the topology; TOPOLOGY_ALL_SEGMENTS=1
# runs all of them.
SEGMENTS_KEPT = 5
ALL_SEGMENTS = os.environ.get("TOPOLOGY_ALL_SEGMENTS") == "1"
RUN_TIMEOUT_S = 1200.0 if ALL_SEGMENTS else 360.0
PG_SERVER = "127.0.0.1:5432"
PG_ADMIN_URL = f"postgresql+psycopg2://postgres@{PG_SERVER}/postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = 13  # dedicated to this test; flushed at the start
MARKER_ENV = "AUDIENCES_TOPOLOGY_TEST"
START_TIMEOUT_S = 120.0
TIMEZONE = AppConfig(settings.PROJECT_ROOT / "config").pipeline.business_timezone
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- services this test needs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[sa.Engine]:
    """Overrides the suite's: without PostgreSQL this module is skipped rather than failed."""
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL is not reachable on {PG_SERVER} (needed for the Airflow metadata DB): {exc.orig}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT} (needed as the Celery broker): {exc}")
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    client.flushdb()
    client.close()


# -- the processes --------------------------------------------------------------------------------


@dataclass
class Topology:
    env: dict[str, str]
    logs: Path
    api: str
    marker: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=settings.PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the teardown reaches its children
        )
        log.close()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def task_logs(self, tis: list[dict[str, Any]]) -> str:
        """The task log of every failed task instance (the reason a run failed is there)."""
        out = []
        for ti in tis:
            if ti["state"] != "failed":
                continue
            root = Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={ti['dag_id']}" / f"run_id={ti['dag_run_id']}"
            for log in sorted((root / f"task_id={ti['task_id']}").rglob("*.log")):
                errors = [line[:4000] for line in log.read_text(errors="replace").splitlines() if '"error"' in line]
                out.append(f"===== task {ti['task_id']}[{ti['map_index']}] {log.name} =====")
                out.extend(errors[:3])
        return "\n".join(out)

    def all_logs(self) -> str:
        return "\n".join(f"===== {name} =====\n{self.log_tail(name)}" for name in self.procs)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"`airflow {name}` exited with {proc.returncode}:\n{self.log_tail(name)}", pytrace=False)

    def ours(self) -> list[psutil.Process]:
        """Every live process started by this test, found by the marker in its environment."""
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARKER_ENV) == self.marker:
                    found.append(p)
        return found

    def stop(self) -> list[str]:
        """SIGTERM each component's process group and every descendant, then SIGKILL what is left.

        Task processes put themselves in their own process group (the task supervisor does), so
        killing the groups alone could leave orphans; the environment marker finds them all.
        """
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for p in self.ours():
            with contextlib.suppress(psutil.Error):
                p.terminate()
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(self.ours(), timeout=max(0.1, deadline - time.monotonic()))
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        psutil.wait_procs(self.ours(), timeout=10)
        return [f"{p.pid} {p.name()}" for p in self.ours()]


def trim_segments(path: Path) -> None:
    """Keep the first hand-written segments (they reference no others); no packs, no clusters."""
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    kept = config["segments"][:SEGMENTS_KEPT]
    assert not any("in_segment" in str(s["rule"]) for s in kept), "a kept segment depends on a dropped one"
    path.write_text(yaml.safe_dump({"segments": kept}, allow_unicode=True, sort_keys=False), encoding="utf-8")


def airflow_env(
    home: Path, airflow_home: Path, metadata_url: str, state_url: str, redis_url: str, port: int
) -> dict[str, str]:
    """The same settings docker-compose.yml gives its Airflow containers, pointed at loopback."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AUDIENCES_"))}
    pythonpath = [str(settings.PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": redis_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",  # two cores
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Only the runs this test triggers: no cron or Asset-triggered run competes for max_active_runs=1.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "GX_ANALYTICS_ENABLED": "false",
            "AUDIENCES_HOME": str(home),
            "AUDIENCES_CONFIG": str(home / "config"),
            "AUDIENCES_STATE_DB_URL": state_url,
            "AUDIENCES_TIMEZONE": TIMEZONE,
            "AUDIENCES_TASK_RETRIES": "0",  # a failure shows at once instead of after back-off
            "PYTHONPATH": os.pathsep.join(pythonpath),
        }
    )
    env.update(async_metadata_url())
    return env


def async_metadata_url() -> dict[str, str]:
    """Airflow 3 also opens an async engine on the metadata DB (postgresql+asyncpg by default).

    The official image ships asyncpg; this project's lock file does not (yet). Without it, the async
    engine is switched off — only the streaming "wait for a run" endpoint and multi-team lookups use it.
    """
    if importlib.util.find_spec("asyncpg") is not None:
        return {}
    return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": ""}


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory,
    fresh_database: Callable[[str], AbstractContextManager[str]],
    redis_url: str,
) -> Iterator[Topology]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("topology")
    home, airflow_home, logs = tmp / "home", tmp / "airflow", tmp / "logs"
    for d in (home, airflow_home, logs):
        d.mkdir()
    shutil.copytree(settings.PROJECT_ROOT / "config", home / "config")
    if not ALL_SEGMENTS:
        trim_segments(home / "config" / "segments.yaml")
    write(generate(end_date=RUN_DATE, scale=SCALE, seed=5), home / "sample")
    port = free_port()
    with (
        fresh_database("airflow_it") as metadata_url,
        fresh_database("audiences_state_it") as state_url,
    ):
        env = airflow_env(home, airflow_home, metadata_url, state_url, redis_url, port)
        marker = uuid.uuid4().hex
        env[MARKER_ENV] = marker
        topo = Topology(env=env, logs=logs, api=f"http://127.0.0.1:{port}", marker=marker)
        topo.timings["sample data"] = time.monotonic() - started
        t = time.monotonic()
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            cwd=settings.PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, f"`airflow db migrate` failed:\n{migrate.stderr[-3000:]}"
        # The platform pools, as docker-compose's airflow-init creates them.
        pools = tmp / "pools.json"
        cli = subprocess.run([sys.executable, "-m", "tasks.cli", "pools"], env=env, capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr[-2000:]
        pools.write_text(cli.stdout, encoding="utf-8")
        imported = subprocess.run(
            [sys.executable, "-m", "airflow", "pools", "import", str(pools)], env=env, capture_output=True, text=True
        )
        assert imported.returncode == 0, imported.stderr[-2000:]
        topo.timings["db migrate + pools"] = time.monotonic() - t
        try:
            t = time.monotonic()
            topo.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1", "--workers", "1")
            topo.start("scheduler", "scheduler")
            topo.start("dag-processor", "dag-processor")
            topo.start("celery-worker", "celery", "worker", "--concurrency", "2", "--without-mingle")
            wait_for_api(topo)
            topo.timings["components up"] = time.monotonic() - t
            yield topo
        finally:
            survivors = topo.stop()
            print("\n".join([*(f"  {k:<24}{v:7.1f} s" for k, v in topo.timings.items()), *topo.report]))
            assert not survivors, f"processes outlived the test: {survivors}"


# -- the REST API ---------------------------------------------------------------------------------


def wait_for_api(topo: Topology) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        topo.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{topo.api}/api/v2/monitor/health", timeout=5)
            if r.status_code == 200:
                return
        time.sleep(1)
    pytest.fail(f"API server not healthy after {START_TIMEOUT_S:.0f}s:\n{topo.all_logs()}", pytrace=False)


def client(topo: Topology) -> httpx.Client:
    """With all-admins the API server signs every request itself; a token is fetched all the same so
    the test keeps working against a deployment that turns all-admins off for real users."""
    r = httpx.get(f"{topo.api}/auth/token", timeout=10)
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"} if r.status_code in (200, 201) else {}
    return httpx.Client(base_url=f"{topo.api}/api/v2", headers=headers, timeout=30)


def expected_dags(config: Path) -> list[str]:
    """The DAGs the DAG file generates from this config: one ingest DAG per source, then segments."""
    from unittest import mock

    from tasks import topology

    with mock.patch.dict(os.environ, {"AUDIENCES_CONFIG": str(config)}):
        return [i.dag_id for i in topology.ingestions()] + [DAG_ID]


def wait_for_dags(topo: Topology, api: httpx.Client, dag_ids: list[str]) -> None:
    """The DAG processor must have parsed and serialized every DAG before it can be triggered."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        topo.check_alive()
        if all(api.get(f"/dags/{dag_id}").status_code == 200 for dag_id in dag_ids):
            errors = api.get("/importErrors").json()
            assert not errors.get("import_errors"), errors
            return
        time.sleep(2)
    pytest.fail(f"DAGs {dag_ids} not all parsed after {START_TIMEOUT_S:.0f}s:\n{topo.all_logs()}", pytrace=False)


def trigger(api: httpx.Client, dag_id: str, conf: dict[str, Any]) -> str:
    """Unpause the DAG and POST a run for the business date, as an operator (or a CI job) would."""
    r = api.patch(f"/dags/{dag_id}", json={"is_paused": False})
    assert r.status_code == 200 and r.json()["is_paused"] is False, r.text
    run_id = f"topology_test__{RUN_DATE}"
    as_of = RunWindow(RUN_DATE, ZoneInfo(TIMEZONE)).as_of  # business date D runs at D+1 00:00
    r = api.post(
        f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": as_of.isoformat(), "conf": conf}
    )
    assert r.status_code == 200, r.text
    assert r.json()["conf"] == conf
    return run_id


def wait_for_runs(topo: Topology, api: httpx.Client, runs: dict[str, str]) -> dict[str, str]:
    """Poll every (dag, run) until it finishes or the budget runs out; returns their states."""
    states = dict.fromkeys(runs, "queued")
    started = time.monotonic()
    while time.monotonic() - started < RUN_TIMEOUT_S:
        topo.check_alive()
        for dag_id, run_id in runs.items():
            if states[dag_id] not in ("success", "failed"):
                states[dag_id] = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        if all(state in ("success", "failed") for state in states.values()):
            break
        time.sleep(3)
    return states


def task_instances(api: httpx.Client, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    r.raise_for_status()
    return list(r.json()["task_instances"])


def task_durations(tis: list[dict[str, Any]]) -> list[str]:
    """Per task: how many instances and how long they ran on the worker (for the timing printout)."""
    groups: dict[str, list[float]] = {}
    for ti in tis:
        groups.setdefault(f"{ti['dag_id']}.{ti['task_id']}", []).append(ti["duration"] or 0.0)
    lines = [f"  {'task':<44}{'n':>4}{'sum s':>9}{'max s':>8}"]
    lines += [f"  {k:<44}{len(v):>4}{sum(v):>9.1f}{max(v):>8.1f}" for k, v in groups.items()]
    return lines


def check_run(topo: Topology, api: httpx.Client, dag_id: str, run_id: str, state: str) -> list[dict[str, Any]]:
    tis = task_instances(api, dag_id, run_id)
    topo.report.extend(task_durations(tis))
    states = {f"{ti['task_id']}[{ti['map_index']}]": ti["state"] for ti in tis}
    assert state == "success", f"{dag_id} run {state}; tasks: {states}\n{topo.task_logs(tis)}"
    return tis


def test_pipeline_runs_on_the_celery_worker(topology: Topology) -> None:
    import redis

    api = client(topology)
    config = Path(topology.env["AUDIENCES_CONFIG"])
    dag_ids = expected_dags(config)
    ingest_ids = dag_ids[:-1]
    assert ingest_ids, "sources.yaml enables no source"
    t = time.monotonic()
    wait_for_dags(topology, api, dag_ids)
    topology.timings["dags parsed"] = time.monotonic() - t

    # 1. Every source's ingestion DAG, in parallel on the worker. customer_segments is unpaused
    # first: Airflow queues Asset events only for consumers that are not paused.
    r = api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
    assert r.status_code == 200, r.text
    t = time.monotonic()
    ingest_runs = {dag_id: trigger(api, dag_id, {"triggered_by": "topology test"}) for dag_id in ingest_ids}
    states = wait_for_runs(topology, api, ingest_runs)
    topology.timings["ingest runs"] = time.monotonic() - t
    tis = [
        ti for dag_id, run_id in ingest_runs.items() for ti in check_run(topology, api, dag_id, run_id, states[dag_id])
    ]

    # Each quality gate published its source's Asset: customer_segments (scheduled on all of them)
    # has one queued event per source, which is what makes the scheduler start it in production.
    queued = api.get(f"/dags/{DAG_ID}/assets/queuedEvents").json()
    assert queued["total_entries"] == len(ingest_ids), queued

    # 2. The segments DAG for the same business date (the scheduler's Asset trigger is replaced by
    # a manual run here: this test switches cron and Asset scheduling off so no other run interferes).
    t = time.monotonic()
    run_id = trigger(api, DAG_ID, {"run_date": RUN_DATE.isoformat()})
    state = wait_for_runs(topology, api, {DAG_ID: run_id})[DAG_ID]
    topology.timings["segments run"] = time.monotonic() - t
    segment_tis = check_run(topology, api, DAG_ID, run_id, state)
    tis += segment_tis

    # What the run produced is what `audiences run` produces: one file per segment for the date.
    outbox = Path(topology.env["AUDIENCES_HOME"]) / "outbox" / RUN_DATE.isoformat()
    delivered = [ti for ti in segment_tis if ti["task_id"].startswith("deliver") and ti["state"] == "success"]
    assert len(delivered) >= SEGMENTS_KEPT
    assert len(list(outbox.glob("*.csv"))) == len(delivered), sorted(p.name for p in outbox.iterdir())

    # Every task instance that ran, ran through the Celery worker: the worker logged receiving it
    # (by the task instance's id) and the Celery result backend holds a result for each.
    ran = [ti for ti in tis if ti["state"] != "skipped"]
    assert all(ti["state"] == "success" for ti in ran), {ti["task_id"]: ti["state"] for ti in ran}
    assert {ti["queue"] for ti in ran} == {"default"}
    assert all(ti["hostname"] and ti["pid"] for ti in ran)
    worker_log = (topology.logs / "celery-worker.log").read_text(errors="replace")
    missing = [f"{ti['dag_id']}.{ti['task_id']}[{ti['map_index']}]" for ti in ran if ti["id"] not in worker_log]
    assert not missing, f"not executed by the Celery worker: {missing}\n{worker_log[-3000:]}"
    results = redis.Redis.from_url(topology.env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert len(results.keys("celery-task-meta-*")) >= len(ran)
    assert "CeleryExecutor" in (topology.logs / "scheduler.log").read_text(errors="replace")

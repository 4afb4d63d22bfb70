"""Shared fixtures: every test gets its own working area; sample data is generated, never stored."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tasks import settings
from tasks.sample import SampleData, generate, write

RUN_DATE = date(2026, 11, 24)
PG_SERVER = "127.0.0.1:5432"  # the machine's PostgreSQL (tests of real PostgreSQL behaviour use it)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes into the repository's var/: stages that default to AUDIENCES_HOME land in tmp."""
    monkeypatch.setenv("AUDIENCES_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("AUDIENCES_STATE_DB_URL", raising=False)


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on loopback (moto in server mode) for the whole session."""
    import os

    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket; AUDIENCES_S3_ENDPOINT_URL points the code at the loopback server."""
    import uuid

    import boto3

    monkeypatch.setenv("AUDIENCES_S3_ENDPOINT_URL", s3_endpoint)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def run_stages() -> Callable[..., dict[str, Any]]:
    """Run the stage functions the DAG calls, in DAG order, in-process (no Airflow) for one date.

    ``until`` stops after "features" or "segments"; the result holds what later stages need.
    """
    from tasks import pipeline

    def run(run_date: str, until: str = "segments") -> dict[str, Any]:
        extracts, reports = [], []
        for pair in pipeline.source_tables():
            extracts.append(pipeline.extract(pair["source"], pair["table"], run_date))
            reports.append(pipeline.validate(pair["source"], pair["table"], run_date))
        pipeline.gate(reports)
        pipeline.build_unified(run_date)
        pipeline.features(run_date)
        segments = pipeline.segments(run_date) if until == "segments" else []
        return {"extracts": extracts, "reports": reports, "segments": segments}

    return run


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[sa.Engine]:
    """AUTOCOMMIT engine on the local PostgreSQL's maintenance database; a test that needs PostgreSQL
    fails when it is not running (a module may override this fixture to skip instead)."""
    engine = sa.create_engine(
        f"postgresql+psycopg2://postgres@{PG_SERVER}/postgres",
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL not reachable on {PG_SERVER}: {exc.orig}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def fresh_database(pg_admin: sa.Engine) -> Callable[[str], AbstractContextManager[str]]:
    """``with fresh_database("prefix") as url:`` a new, empty database on ``pg_admin``'s server; on the
    way out its connections are terminated and it is dropped, also when the test failed."""

    @contextlib.contextmanager
    def make(prefix: str) -> Iterator[str]:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        quoted = pg_admin.dialect.identifier_preparer.quote(name)
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
        try:
            yield pg_admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with pg_admin.connect() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": name},
                )
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))

    return make

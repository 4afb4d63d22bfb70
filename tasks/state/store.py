"""The state database: SQLite by default, PostgreSQL in production (ARCHITECTURE decision 6).

Airflow's own metadata DB is never used for this: app state must survive an Airflow reinstall and
be readable by tools that know nothing about Airflow. Tables are created on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import sqlalchemy as sa

from tasks import settings

metadata = sa.MetaData()

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("source", sa.String(128), primary_key=True),
    sa.Column("table_name", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(64), nullable=False),  # ISO-8601 text: comparable across backends
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

processed_files = sa.Table(
    "processed_files",
    metadata,
    sa.Column("source", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
)


def state_url() -> str:
    """``AUDIENCES_STATE_DB_URL`` (e.g. postgresql://...) or a SQLite file in the working area."""
    return os.environ.get("AUDIENCES_STATE_DB_URL") or f"sqlite:///{settings.home() / 'state.db'}"


@dataclass(frozen=True)
class ProcessedFile:
    source: str
    path: str
    sha256: str
    size: int
    run_date: str


class StateStore:
    def __init__(self, url: str | None = None) -> None:
        self.engine = _engine(url or state_url())

    def get_watermark(self, source: str, table: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(watermarks.c.value).where(watermarks.c.source == source, watermarks.c.table_name == table)
            ).first()
        return None if row is None else str(row[0])

    def set_watermark(self, source: str, table: str, value: str) -> None:
        """Only ever moves forward, so a backfill of an old date cannot rewind incremental loads."""
        current = self.get_watermark(source, table)
        if current is not None and current >= value:
            return
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if current is None:
                conn.execute(watermarks.insert().values(source=source, table_name=table, value=value, updated_at=now))
            else:
                conn.execute(
                    watermarks.update()
                    .where(watermarks.c.source == source, watermarks.c.table_name == table)
                    .values(value=value, updated_at=now)
                )

    def reset_watermark(self, source: str, table: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(watermarks.delete().where(watermarks.c.source == source, watermarks.c.table_name == table))

    def files_seen(self, source: str, path: str) -> list[ProcessedFile]:
        """Every version (by content hash) of ``path`` already processed for ``source``."""
        return self._processed(source, processed_files.c.path == path)

    def hash_seen(self, source: str, sha256: str) -> list[ProcessedFile]:
        """Files with this exact content already processed, under any name (re-delivery detection)."""
        return self._processed(source, processed_files.c.sha256 == sha256)

    def _processed(self, source: str, condition: sa.ColumnElement[bool]) -> list[ProcessedFile]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(processed_files).where(processed_files.c.source == source, condition)).all()
        return [ProcessedFile(r.source, r.path, r.sha256, r.size, r.run_date) for r in rows]

    def record_file(self, f: ProcessedFile) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(processed_files.c.path).where(
                    processed_files.c.source == f.source,
                    processed_files.c.path == f.path,
                    processed_files.c.sha256 == f.sha256,
                )
            ).first()
            if exists is None:
                conn.execute(
                    processed_files.insert().values(
                        source=f.source,
                        path=f.path,
                        sha256=f.sha256,
                        size=f.size,
                        run_date=f.run_date,
                        processed_at=datetime.now(UTC),
                    )
                )

    def forget_files(self, source: str, run_date: str) -> None:
        """Re-running a date must re-read the files that date processed (idempotent re-runs)."""
        with self.engine.begin() as conn:
            conn.execute(
                processed_files.delete().where(
                    processed_files.c.source == source, processed_files.c.run_date == run_date
                )
            )


@lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One shared connection, or every checkout would see its own empty in-memory database.
        engine = sa.create_engine(url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine

"""The audience ledger: what each destination holds because this system put it there.

Everything a sync decides comes from here, never from asking the platform what it holds (most
platforms cannot say, and ad platforms hash what they hold). Four tables in the state database:

- ``audience_ledger``: one row per (destination, segment, customer) this system sent — ``member``
  (accepted; with the ``remote_ref`` a removal needs and the consent record used), ``failed``
  (retried next run) or ``suppressed`` (the platform said unsubscribed/cleaned: never sent again).
  Only ``member`` rows are ever removed, so nothing this system did not add is touched.
- ``sync_plans``: each plan (adds, removes, unchanged, expected size, status, hold reason) written
  before anything is sent, then the outcome (counts, duration, retries, a redacted error): it is
  the run history too.
- ``sync_plan_items``: the members of each plan operation, by batch number.
- ``sync_batches``: each batch the platform accepted, committed in the same transaction as the
  ledger rows it changed — a crash between batches loses nothing and resends nothing.

Suppressions (``suppressions``) hold SHA-256 hashes of normalized identifiers, never the
identifiers themselves, so the list can be kept for ever without keeping personal data.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from tasks.state.store import _engine, state_url

metadata = sa.MetaData()

ledger = sa.Table(
    "audience_ledger",
    metadata,
    sa.Column("destination", sa.String(128), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("customer_key", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # member | failed | suppressed
    sa.Column("remote_ref", sa.Text, nullable=True),
    sa.Column("plan_id", sa.String(40), nullable=False),
    sa.Column("reason", sa.String(300), nullable=True),
    sa.Column("consent_purpose", sa.String(32), nullable=True),
    sa.Column("consent_field", sa.String(64), nullable=True),
    sa.Column("consent_source", sa.String(128), nullable=True),
    sa.Column("consent_as_of", sa.String(32), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

plans = sa.Table(
    "sync_plans",
    metadata,
    sa.Column("plan_id", sa.String(40), primary_key=True),
    sa.Column("destination", sa.String(128), nullable=False, index=True),
    sa.Column("segment", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),  # diff | replace
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("audience_id", sa.String(256), nullable=True),
    sa.Column("current_size", sa.Integer, nullable=False),
    sa.Column("adds", sa.Integer, nullable=False),
    sa.Column("removes", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
    sa.Column("expected_size", sa.Integer, nullable=False),
    sa.Column("excluded_consent", sa.Integer, nullable=False),
    sa.Column("excluded_suppressed", sa.Integer, nullable=False),
    sa.Column("excluded_unreachable", sa.Integer, nullable=False),
    sa.Column("hold_reason", sa.String(500), nullable=True),
    sa.Column("decided_by", sa.String(128), nullable=True),
    sa.Column("added", sa.Integer, nullable=False, default=0),
    sa.Column("removed", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("suppressed", sa.Integer, nullable=False, default=0),
    sa.Column("unmatched", sa.Integer, nullable=False, default=0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.String(1000), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)

plan_items = sa.Table(
    "sync_plan_items",
    metadata,
    sa.Column("plan_id", sa.String(40), primary_key=True),
    sa.Column("operation", sa.String(8), primary_key=True),
    sa.Column("customer_key", sa.String(64), primary_key=True),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Index("ix_plan_items_batch", "plan_id", "operation", "batch"),
)

batches = sa.Table(
    "sync_batches",
    metadata,
    sa.Column("plan_id", sa.String(40), primary_key=True),
    sa.Column("operation", sa.String(8), primary_key=True),
    sa.Column("batch", sa.Integer, primary_key=True),
    sa.Column("members", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("suppressed", sa.Integer, nullable=False),
    sa.Column("unmatched", sa.Integer, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("identifier_sha256", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # email | phone
    sa.Column("reason", sa.String(64), nullable=False),  # unsubscribed | complaint | cleaned | compliance | manual
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Statuses a plan moves through. Terminal: applied, rejected, blocked, dry_run, superseded.
OPEN_STATUSES = ("planned", "held", "approved", "applying", "failed")


@dataclass(frozen=True)
class Consent:
    """The consent record an exported member was sent under (evidence for Vietnam's PDPL)."""

    purpose: str
    field: str
    source: str
    as_of: str


def _now() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=8)
def _ready(url: str) -> sa.Engine:
    engine = _engine(url)
    metadata.create_all(engine)
    return engine


def _chunks(values: Sequence[Any], size: int = 5000) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class Ledger:
    def __init__(self, url: str | None = None) -> None:
        self.engine = _ready(url or state_url())

    # --- what a destination holds --------------------------------------------------------------
    def holdings(self, destination: str, segment: str) -> pd.DataFrame:
        """Columns customer_key and state for one (destination, segment); remote refs are read per batch."""
        # The raw DBAPI cursor: SQLAlchemy's row objects cost ~15 s per million rows, the cursor ~1 s.
        sql = "SELECT customer_key, state FROM audience_ledger WHERE destination = {p} AND segment = {p}"
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            marker = "%s" if self.engine.dialect.paramstyle in ("format", "pyformat") else "?"
            cursor.execute(sql.format(p=marker), (destination, segment))
            rows = cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
        return pd.DataFrame(rows, columns=["customer_key", "state"]).astype({"customer_key": "str", "state": "str"})

    def refs(self, destination: str, segment: str, keys: Sequence[str]) -> pd.DataFrame:
        out: list[Any] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(keys)):
                out += conn.execute(
                    sa.select(ledger.c.customer_key, ledger.c.remote_ref).where(
                        ledger.c.destination == destination,
                        ledger.c.segment == segment,
                        ledger.c.customer_key.in_(chunk),
                    )
                ).all()
        return pd.DataFrame(out, columns=["customer_key", "remote_ref"])

    def consent_records(self, destination: str, segment: str) -> pd.DataFrame:
        cols = [ledger.c.customer_key, ledger.c.consent_purpose, ledger.c.consent_field, ledger.c.consent_source]
        cols += [ledger.c.consent_as_of, ledger.c.plan_id, ledger.c.updated_at]
        query = sa.select(*cols).where(
            ledger.c.destination == destination, ledger.c.segment == segment, ledger.c.state == "member"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(rows, columns=[c.name for c in cols])

    # --- plans ---------------------------------------------------------------------------------
    def insert_plan(self, row: dict[str, Any], items: dict[str, list[tuple[str, int]]]) -> None:
        """Write a plan and its members in one transaction, before anything is sent."""
        with self.engine.begin() as conn:
            conn.execute(plans.insert().values(**row, created_at=_now()))
            for operation, members in items.items():
                for chunk in _chunks(members, 20000):
                    conn.execute(
                        plan_items.insert(),
                        [
                            {"plan_id": row["plan_id"], "operation": operation, "customer_key": k, "batch": b}
                            for k, b in chunk
                        ],
                    )

    def plan(self, plan_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(plans).where(plans.c.plan_id == plan_id)).mappings().first()
        return None if row is None else dict(row)

    def plans(self, destination: str | None = None, segment: str | None = None) -> pd.DataFrame:
        query = sa.select(plans).order_by(plans.c.created_at)
        if destination is not None:
            query = query.where(plans.c.destination == destination)
        if segment is not None:
            query = query.where(plans.c.segment == segment)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in plans.columns])

    def open_plans(self, destination: str, segment: str) -> list[dict[str, Any]]:
        query = sa.select(plans).where(
            plans.c.destination == destination, plans.c.segment == segment, plans.c.status.in_(OPEN_STATUSES)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(plans.c.created_at)).mappings().all()]

    def update_plan(self, plan_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(plans.update().where(plans.c.plan_id == plan_id).values(**values))

    def audience_id(self, destination: str, segment: str) -> str | None:
        """The remote audience this (destination, segment) was last synced to."""
        query = (
            sa.select(plans.c.audience_id)
            .where(plans.c.destination == destination, plans.c.segment == segment, plans.c.audience_id.is_not(None))
            .order_by(plans.c.created_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else str(value)

    def batch_keys(self, plan_id: str, operation: str) -> dict[int, list[str]]:
        query = (
            sa.select(plan_items.c.batch, plan_items.c.customer_key)
            .where(plan_items.c.plan_id == plan_id, plan_items.c.operation == operation)
            .order_by(plan_items.c.batch, plan_items.c.customer_key)
        )
        out: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            for b, key in conn.execute(query):
                out.setdefault(int(b), []).append(str(key))
        return out

    def accepted_batches(self, plan_id: str, operation: str) -> set[int]:
        query = sa.select(batches.c.batch).where(batches.c.plan_id == plan_id, batches.c.operation == operation)
        with self.engine.connect() as conn:
            return {int(b) for (b,) in conn.execute(query)}

    def batch_totals(self, plan_id: str) -> dict[str, int]:
        cols = [batches.c.operation, batches.c.accepted, batches.c.failed, batches.c.suppressed, batches.c.unmatched]
        query = sa.select(*cols).where(batches.c.plan_id == plan_id)
        totals = {"added": 0, "removed": 0, "failed": 0, "suppressed": 0, "unmatched": 0}
        with self.engine.connect() as conn:
            for op, accepted, failed, suppressed, unmatched in conn.execute(query):
                totals["removed" if op == "remove" else "added"] += accepted
                totals["failed"] += failed
                totals["suppressed"] += suppressed
                totals["unmatched"] += unmatched
        return totals

    # --- one accepted batch ----------------------------------------------------------------------
    def commit_batch(
        self,
        plan: dict[str, Any],
        operation: str,
        batch: int,
        members: int,
        accepted: dict[str, str],
        failed: dict[str, str],
        suppressed: dict[str, str],
        unmatched: int,
        consent: Consent | None,
        suppress_hashes: list[tuple[str, str, str]] | None = None,
    ) -> None:
        """Record what the platform did with one batch, atomically with the batch itself."""
        dest, seg, plan_id = plan["destination"], plan["segment"], plan["plan_id"]
        now = _now()
        touched = list(accepted) + list(failed) + list(suppressed)
        with self.engine.begin() as conn:
            for chunk in _chunks(touched):
                conn.execute(
                    ledger.delete().where(
                        ledger.c.destination == dest, ledger.c.segment == seg, ledger.c.customer_key.in_(chunk)
                    )
                )
            no_evidence = dict.fromkeys(("consent_purpose", "consent_field", "consent_source", "consent_as_of"))
            base = {"destination": dest, "segment": seg, "plan_id": plan_id, "updated_at": now, **no_evidence}
            rows: list[dict[str, Any]] = []
            if operation != "remove":
                evidence = (
                    {
                        "consent_purpose": consent.purpose,
                        "consent_field": consent.field,
                        "consent_source": consent.source,
                        "consent_as_of": consent.as_of,
                    }
                    if consent
                    else {}
                )
                rows += [
                    {**base, **evidence, "customer_key": k, "state": "member", "remote_ref": ref, "reason": None}
                    for k, ref in accepted.items()
                ]
            rows += [
                {**base, "customer_key": k, "state": "failed", "remote_ref": None, "reason": why[:300]}
                for k, why in failed.items()
            ]
            rows += [
                {**base, "customer_key": k, "state": "suppressed", "remote_ref": None, "reason": why[:300]}
                for k, why in suppressed.items()
            ]
            for chunk in _chunks(rows):
                conn.execute(ledger.insert(), list(chunk))
            conn.execute(
                batches.insert().values(
                    plan_id=plan_id,
                    operation=operation,
                    batch=batch,
                    members=members,
                    accepted=len(accepted),
                    failed=len(failed),
                    suppressed=len(suppressed),
                    unmatched=unmatched,
                    finished_at=now,
                )
            )
            if suppress_hashes:
                self._suppress(conn, suppress_hashes, now)

    def drop_outside(self, destination: str, segment: str, keep_plan_id: str) -> int:
        """After a full replace, the platform holds exactly the replace set: forget everything else."""
        with self.engine.begin() as conn:
            result = conn.execute(
                ledger.delete().where(
                    ledger.c.destination == destination,
                    ledger.c.segment == segment,
                    ledger.c.plan_id != keep_plan_id,
                )
            )
        return int(result.rowcount or 0)

    def forget(self, destination: str, segment: str, keys: Sequence[str]) -> None:
        """Failed rows of members no longer wanted: nothing to undo on the platform."""
        with self.engine.begin() as conn:
            for chunk in _chunks(list(keys)):
                conn.execute(
                    ledger.delete().where(
                        ledger.c.destination == destination,
                        ledger.c.segment == segment,
                        ledger.c.customer_key.in_(chunk),
                        ledger.c.state != "member",
                    )
                )

    # --- one sync per audience at a time ---------------------------------------------------------
    @contextmanager
    def audience_lock(self, destination: str, segment: str) -> Iterator[bool]:
        """Hold the audience for one sync; yields False when another process holds it.

        The lock dies with its holder, so a crashed sync never blocks the one that resumes it:
        a session-level advisory lock on PostgreSQL (released when the connection drops), an
        ``flock`` on a file next to the database on SQLite (released when the process exits).
        """
        key = hashlib.sha256(f"{destination}\x00{segment}".encode()).digest()
        if self.engine.dialect.name == "postgresql":
            number = int.from_bytes(key[:8], "big", signed=True)
            with self.engine.connect() as conn:
                got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(number))).scalar())
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(sa.select(sa.func.pg_advisory_unlock(number)))
                    conn.commit()
            return
        database = self.engine.url.database
        folder = Path(database).resolve().parent if database and database != ":memory:" else Path(tempfile.gettempdir())
        path = folder / ".sync-locks" / f"{key.hex()[:32]}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- suppressions ----------------------------------------------------------------------------
    def suppress(self, entries: list[tuple[str, str, str]], source: str) -> int:
        """entries: (identifier_sha256, kind, reason). Existing entries keep their first reason."""
        with self.engine.begin() as conn:
            return self._suppress(conn, [(h, k, f"{r}|{source}") for h, k, r in entries], _now())

    def _suppress(self, conn: sa.Connection, entries: list[tuple[str, str, str]], now: datetime) -> int:
        hashes = list({h for h, _, _ in entries})
        existing: set[str] = set()
        for chunk in _chunks(hashes):
            existing |= {
                str(h)
                for (h,) in conn.execute(
                    sa.select(suppressions.c.identifier_sha256).where(suppressions.c.identifier_sha256.in_(chunk))
                )
            }
        rows = []
        for h, kind, reason_source in entries:
            if h in existing:
                continue
            existing.add(h)
            reason, _, source = reason_source.partition("|")
            rows.append(
                {
                    "identifier_sha256": h,
                    "kind": kind,
                    "reason": reason,
                    "source": source or "platform",
                    "created_at": now,
                }
            )
        for chunk in _chunks(rows):
            conn.execute(suppressions.insert(), list(chunk))
        return len(rows)

    def suppressed_hashes(self) -> set[str]:
        with self.engine.connect() as conn:
            return {str(h) for (h,) in conn.execute(sa.select(suppressions.c.identifier_sha256))}

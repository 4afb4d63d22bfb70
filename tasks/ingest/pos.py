"""Point-of-sale database through SQLAlchemy: SQLite in the demo, PostgreSQL in production.

Tables are read whole (a snapshot per run) unless ``incremental`` names them. An incremental table
is read by a change-timestamp column (``updated_at`` by default). For run date D:

* upper bound ``column < as_of(D)`` always, so a backfill of a past date never loads later rows;
* first load (no watermark yet), ``full_refresh``, or no snapshot before D in the lake (re-running or
  backfilling the earliest date): no lower bound, the partition is a snapshot
  (rows whose column is NULL are kept too, so they are never silently lost);
* otherwise lower bound ``column >= min(watermark, day_start(D)) - lookback_hours`` and the
  partition is an increment. The lookback re-reads rows committed late (long transactions, clock
  skew); the pipeline drops those an earlier date already loaded, by primary key + column;
* the watermark (largest column value read, ISO-8601 UTC text) is stored only after the raw
  partition is written, and the state store never moves it back, so a backfill cannot rewind it.

Timestamps are compared in the database, always with bound parameters: PostgreSQL ``timestamptz``
columns get aware UTC datetimes, ``timestamp`` (without time zone) columns are taken to hold UTC
and get naive UTC datetimes; SQLite (and text columns anywhere) must hold ISO-8601 UTC text with a
``T`` separator such as ``2026-11-24T10:00:00Z`` (fractions allowed) and are compared as text.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tasks import settings
from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.lake import Mode
from tasks.state.store import StateStore
from tasks.tables import ROW_COL, SOURCE_COL, TABLES

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Fixed width, so watermarks compare as text in time order in the state store.
WATERMARK_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Bound for text columns: whole seconds and no suffix. A value of the same second ("...T10:00:00Z",
# "...T10:00:00.5Z") has the bound as a prefix and so sorts at or after it, every earlier second sorts
# before it: text order agrees with time order whatever fraction or UTC suffix the values carry.
TEXT_BOUND_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _check_column(name: str) -> str:
    if not _COLUMN.match(name):
        raise ValueError(f"column name {name!r} is not a plain identifier")
    return name


class IncrementalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field("updated_at", description="Change timestamp in the source table (source column name).")
    lookback_hours: float = Field(48, ge=0, description="Re-read this far before the watermark for late commits.")
    primary_key: list[str] | None = Field(
        None, min_length=1, description="Source column names; default: the canonical table's primary key."
    )

    @field_validator("column")
    @classmethod
    def _plain_column(cls, value: str) -> str:
        return _check_column(value)

    @field_validator("primary_key")
    @classmethod
    def _plain_key(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_column(v) for v in value]


class PosOptions(SourceOptions):
    url: str | None = None
    url_env: str | None = Field(None, description="Environment variable holding the URL (with credentials).")
    tables: dict[str, str] = Field(
        default_factory=lambda: {t: t for t in ("stores", "products", "orders", "order_lines")},
        description="canonical table -> table name in the source database",
    )
    row_id_column: str = "id"
    columns: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="canonical table -> {source column: canonical column}"
    )
    incremental: dict[str, IncrementalSpec] = Field(
        default_factory=dict, description="canonical table -> how to read only changed rows; others are snapshots"
    )
    full_refresh: bool = Field(False, description="Read incremental tables whole again (a snapshot).")

    @field_validator("columns")
    @classmethod
    def _known_renames(cls, value: dict[str, dict[str, str]], info: ValidationInfo) -> dict[str, dict[str, str]]:
        tables = info.data.get("tables", {})
        for table, renames in value.items():
            _known_table(table, tables)
            for src, dst in renames.items():
                _check_column(src)
                _check_column(dst)
                if src == info.data.get("row_id_column"):
                    raise ValueError(f"{table}: {src!r} is the row id column (it becomes _row) and cannot be renamed")
            targets = list(renames.values())
            dupes = sorted({t for t in targets if targets.count(t) > 1})
            if dupes:
                raise ValueError(f"{table}: several source columns renamed to {', '.join(dupes)}")
        return value

    @field_validator("incremental")
    @classmethod
    def _known_incremental(cls, value: dict[str, IncrementalSpec], info: ValidationInfo) -> dict[str, IncrementalSpec]:
        tables = info.data.get("tables", {})
        for table, spec in value.items():
            _known_table(table, tables)
            if spec.primary_key is None and not (table in TABLES and TABLES[table].primary_key):
                raise ValueError(f"{table}: no canonical primary key to default to; set primary_key")
        return value

    @model_validator(mode="after")
    def _one_url(self) -> PosOptions:
        if bool(self.url) == bool(self.url_env):
            raise ValueError("set exactly one of 'url' or 'url_env'")
        for name in self.tables.values():
            if not _IDENT.match(name):
                raise ValueError(f"table name {name!r} is not a plain identifier")
        return self


def _known_table(table: str, tables: dict[str, str]) -> None:
    if table not in tables:
        raise ValueError(f"{table!r} is not one of the tables in 'tables' ({', '.join(tables) or 'none'})")


@dataclass(frozen=True)
class _Plan:
    """How one incremental read is bounded, and what the pipeline needs to know about it."""

    column: str  # source column name
    where: list[sa.ColumnElement[bool]]
    mode: Mode
    dedupe_on: tuple[str, ...]  # canonical names
    note: str


@register("sql_database")
class PosDatabase:
    kind: ClassVar[str]
    Options = PosOptions

    def __init__(self, name: str, options: PosOptions) -> None:
        self.name = name
        self.options = options

    def _url(self) -> sa.URL:
        raw = self.options.url or os.environ.get(self.options.url_env or "", "")
        if not raw:
            raise RuntimeError(f"source {self.name!r}: environment variable {self.options.url_env} is not set")
        url = sa.make_url(raw)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_absolute():
            url = url.set(database=str(settings.resolve(url.database)))
        return url

    def _label(self, url: sa.URL) -> str:
        # Names the database in row lineage without its credentials.
        return Path(url.database or "").name if url.get_backend_name() == "sqlite" else str(url.database)

    def _key(self, path: str) -> str:
        """Where a problem lives in sources.yaml, so an error points at the line to fix."""
        return f"sources.{self.name}.options.{path}"

    def tables(self) -> list[str]:
        return list(self.options.tables)

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        url = self._url()
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            raise FileNotFoundError(
                f"source {self.name!r}: SQLite database {url.database} not found; "
                "run `audiences generate` or fix sources.yaml"
            )
        source_table = self.options.tables[table]
        label = f"{self._label(url)}:{source_table}"
        row_col = self.options.row_id_column
        spec = self.options.incremental.get(table)
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                schema, _, bare = source_table.rpartition(".")
                tbl = sa.Table(bare, sa.MetaData(), schema=schema or None, autoload_with=conn)
                self._check_renames(table, tbl, label)
                plan = None if spec is None else self._plan(table, spec, tbl, ctx, url.get_backend_name() == "sqlite")
                query = sa.select(tbl)
                if plan is not None:
                    query = query.where(*plan.where)
                if row_col in tbl.c:
                    query = query.order_by(tbl.c[row_col])
                frame = pd.read_sql(query, conn)
        except sa.exc.NoSuchTableError:
            raise LookupError(f"source {self.name!r}: table {source_table!r} not found in {self._label(url)}") from None
        except sa.exc.DBAPIError as exc:
            raise RuntimeError(f"source {self.name!r}: cannot read {label}: {_safe_reason(exc, url)}") from None
        finally:
            engine.dispose()
        watermark = None if plan is None else _max_utc(frame[plan.column])
        rows = frame.pop(row_col) if row_col in frame.columns else pd.Series(range(1, len(frame) + 1))
        renames = self.options.columns.get(table, {})
        frame = frame.rename(columns=renames)
        if frame.columns.duplicated().any():
            dupes = sorted(set(frame.columns[frame.columns.duplicated()]))
            raise ValueError(
                f"source {self.name!r}: {self._key('columns.' + table)} renames onto existing column(s) "
                f"{', '.join(dupes)} of {label}"
            )
        frame[SOURCE_COL] = label
        frame[ROW_COL] = rows.astype("int64").to_numpy()
        if plan is None:
            return Extract(frame)
        on_commit: list[Callable[[], None]] = []
        if watermark is not None:
            on_commit.append(functools.partial(_advance, ctx.state, self.name, table, watermark))
        return Extract(
            frame,
            mode=plan.mode,
            on_commit=on_commit,
            notes=[plan.note],
            dedupe_on=plan.dedupe_on,
        )

    def _check_renames(self, table: str, tbl: sa.Table, label: str) -> None:
        missing = [c for c in self.options.columns.get(table, {}) if c not in tbl.c]
        if missing:
            raise ValueError(
                f"source {self.name!r}: {self._key('columns.' + table)}: {', '.join(missing)} not in {label} "
                f"(columns: {', '.join(tbl.c.keys())})"
            )

    def _plan(self, table: str, spec: IncrementalSpec, tbl: sa.Table, ctx: ExtractContext, sqlite: bool) -> _Plan:
        renames = self.options.columns.get(table, {})
        if spec.primary_key is not None:
            key = list(spec.primary_key)
        else:
            to_source = {dst: src for src, dst in renames.items()}
            key = [to_source.get(c, c) for c in TABLES[table].primary_key]
        missing = [c for c in (spec.column, *key) if c not in tbl.c]
        if missing:
            raise ValueError(
                f"source {self.name!r}: {self._key('incremental.' + table)}: column(s) {', '.join(missing)} "
                f"not in {tbl.name} (columns: {', '.join(tbl.c.keys())}); set column / primary_key"
            )
        col = tbl.c[spec.column]
        if not (sqlite or isinstance(col.type, sa.DateTime | sa.String)):
            raise ValueError(
                f"source {self.name!r}: {self._key('incremental.' + table)}.column: {spec.column!r} is "
                f"{col.type}; it must be a timestamp or ISO-8601 UTC text column"
            )
        as_text = sqlite or not isinstance(col.type, sa.DateTime)
        aware = bool(getattr(col.type, "timezone", False))

        def bound(value: datetime) -> Any:
            utc = value.astimezone(UTC)
            if as_text:
                # Truncating only widens the lower bound (re-reads are deduplicated); as_of is whole seconds.
                return utc.replace(microsecond=0).strftime(TEXT_BOUND_FORMAT)
            return utc if aware else utc.replace(tzinfo=None)

        target: sa.ColumnElement[Any] = sa.type_coerce(col, sa.String) if as_text else col
        upper = target < bound(ctx.window.as_of)
        stored = ctx.state.get_watermark(self.name, table)
        dedupe_on = tuple(renames.get(c, c) for c in (*key, spec.column))
        if stored is None or self.options.full_refresh or ctx.needs_snapshot:
            why = (
                "full_refresh"
                if self.options.full_refresh
                else "first load"
                if stored is None
                else "no earlier snapshot in the lake"
            )
            return _Plan(
                spec.column,
                [sa.or_(upper, col.is_(None))],
                "snapshot",
                dedupe_on,
                f"{table}: snapshot ({why}) before {ctx.window.as_of.isoformat()}",
            )
        since = min(_parse_watermark(stored), ctx.window.day_start(ctx.window.run_date))
        lower = since - timedelta(hours=spec.lookback_hours)
        return _Plan(
            spec.column,
            [target >= bound(lower), upper],
            "increment",
            dedupe_on,
            f"{table}: increment on {spec.column} in [{lower.astimezone(UTC).isoformat()}, "
            f"{ctx.window.as_of.astimezone(UTC).isoformat()}) (watermark {stored})",
        )


def _advance(state: StateStore, source: str, table: str, value: str) -> None:
    state.set_watermark(source, table, value)


def _parse_watermark(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _max_utc(values: pd.Series) -> str | None:
    """Largest timestamp read, as watermark text; text columns are parsed, not compared as strings,
    so "10:00:00Z" and "10:00:00.5Z" order by time."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)  # naive timestamp columns hold UTC (module docstring)
    else:
        parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    top = parsed.max()
    if pd.isna(top):
        return None
    return str(pd.Timestamp(top).to_pydatetime().strftime(WATERMARK_FORMAT))


def _safe_reason(exc: sa.exc.DBAPIError, url: sa.URL) -> str:
    """The driver's own message without SQLAlchemy's statement dump; the password is masked in case
    a driver ever echoes its connection string."""
    reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return f"{reason} (database {url.render_as_string(hide_password=True)})"

"""CRM contacts from a REST API shaped like HubSpot's CRM v3 contacts API.

Two read paths, because HubSpot's list endpoint cannot filter by modification time:

* **Snapshot** (first load, or ``full_refresh``): ``GET /crm/v3/objects/contacts`` following the
  ``paging.next.after`` cursor. It returns every contact *as it is now*, including contacts modified
  after the run's ``as_of``; a snapshot is the whole table, so keeping them is the lesser evil
  (dropping them would make those contacts vanish until their next change).
* **Increment** (a watermark exists): ``POST /crm/v3/objects/contacts/search`` for
  ``watermark - lookback_hours <= lastmodifieddate < as_of``, sorted ascending. The lookback re-reads
  contacts the CRM's search index had not caught up with last time; ``dedupe_on`` lets the pipeline
  drop the ones an earlier date already loaded unchanged. The upper bound keeps a backfill of date D
  from seeing changes made after D.

The watermark (latest ``lastmodifieddate`` read, ISO UTC) advances in an ``on_commit`` callback, so
a crash between the API read and the raw write re-reads the data rather than skipping it.

Everything is kept as text (the raw zone stores what the source said; casting happens in validate).
The bearer token is read from the environment at extract time and never appears in messages or logs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pandas as pd
from pydantic import Field, field_validator

from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.lake import Mode
from tasks.tables import ROW_COL, SOURCE_COL, TABLES

log = logging.getLogger(__name__)

TABLE = "contacts"
LIST_PATH = "/crm/v3/objects/contacts"
SEARCH_PATH = "/crm/v3/objects/contacts/search"
MODIFIED = "lastmodifieddate"
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is better treated as an outage than waited on
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
# HubSpot's search endpoint refuses to page past 10,000 results of one query; larger increments are
# read as several queries, each starting at the last modification time already read.
SEARCH_RESULT_LIMIT = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

DEFAULT_PROPERTIES: dict[str, str] = {
    "hs_object_id": "contact_id",
    "loyalty_id": "customer_id",
    "firstname": "full_name",
    "lastname": "full_name",
    "email": "email",
    "phone": "phone",
    "gender": "gender",
    "date_of_birth": "birthday",
    "state": "province",
    "email_opt_in": "email_opt_in",
    "sms_opt_in": "sms_opt_in",
    "ads_opt_in": "ads_opt_in",
    "member_since": "member_since",
    "nps_score": "nps_score",
    "csat_score": "csat_score",
    MODIFIED: "updated_at",
}


class CrmApiError(RuntimeError):
    """The CRM API could not be read; the message names the endpoint path and status, never the token."""


class CrmApiOptions(SourceOptions):
    base_url: str = Field(description="e.g. https://api.hubapi.com (no trailing path needed)")
    token_env: str = Field(
        "CRM_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable with the bearer token"
    )
    properties: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PROPERTIES),
        description="CRM property -> canonical contacts column; several properties mapped to one column are "
        "joined with a space in this order (firstname + lastname -> full_name)",
    )
    page_size: int = Field(100, ge=1, le=100)
    lookback_hours: float = Field(24, ge=0, le=24 * 31)
    max_retries: int = Field(5, ge=0, le=20)
    timeout_s: float = Field(30, gt=0, le=600)
    full_refresh: bool = False

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.hubapi.com")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError("must use https: the bearer token would otherwise travel in clear text")
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query or fragment")
        return value.rstrip("/")

    @field_validator("properties")
    @classmethod
    def _canonical_targets(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map at least one CRM property to a contacts column")
        columns = TABLES[TABLE].columns
        unknown = sorted({col for col in value.values() if col not in columns})
        if unknown:
            raise ValueError(f"unknown contacts column(s) {', '.join(unknown)}; columns are {', '.join(columns)}")
        return value


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _parse_time(value: str) -> datetime | None:
    """HubSpot sends ISO text for timestamps; older payloads and some properties use epoch milliseconds."""
    text = value.strip()
    try:
        if text.isdigit():
            return _EPOCH + timedelta(milliseconds=int(text))
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """One fixed-width format, so watermarks compare as text and ``dedupe_on`` matches across runs."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if text.strip() else None


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _next_cursor(page: dict[str, Any]) -> str | None:
    paging = page.get("paging") or {}
    after = (paging.get("next") or {}).get("after") if isinstance(paging, dict) else None
    return None if after in (None, "") else str(after)


@register("crm_api")
class CrmApi:
    kind: ClassVar[str]
    Options = CrmApiOptions
    search_result_limit: ClassVar[int] = SEARCH_RESULT_LIMIT

    def __init__(self, name: str, options: CrmApiOptions, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.options = options
        self._sleep = sleep  # injectable so retry tests do not actually wait

    def tables(self) -> list[str]:
        return [TABLE]

    # -- HTTP ---------------------------------------------------------------------------------------

    def _token(self) -> str:
        token = os.environ.get(self.options.token_env, "").strip()
        if not token:
            raise CrmApiError(
                f"source {self.name!r}: environment variable {self.options.token_env} is not set; "
                "put the CRM private-app token there (sources.yaml names only the variable)"
            )
        return token

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.options.base_url,
            headers={"Authorization": f"Bearer {self._token()}", "Accept": "application/json"},
            timeout=self.options.timeout_s,
            follow_redirects=False,  # a redirect could carry the Authorization header to another host
        )

    def _send(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call with retries; messages name ``method path`` only (no query, body or token)."""
        label = f"{method} {path}"
        attempt = 0
        while True:
            wait: float | None = None
            try:
                response = client.request(method, path, params=params, json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, protocol errors
                failure = type(exc).__name__
            else:
                status = response.status_code
                if status in (401, 403):
                    raise CrmApiError(
                        f"source {self.name!r}: token in ${self.options.token_env} rejected by {label} "
                        f"(HTTP {status}); rotate it (and check the app has the crm.objects.contacts.read scope)"
                    )
                if status == 429:
                    failure, wait = "HTTP 429 (rate limited)", _retry_after(response)
                elif status >= 500:
                    failure = f"HTTP {status}"
                elif status >= 300:  # redirects are not followed (token), other 4xx are our request's fault
                    raise CrmApiError(
                        f"source {self.name!r}: {label} returned HTTP {status}{self._category(response)}; "
                        "check base_url, properties and page_size in sources.yaml"
                    )
                else:
                    try:
                        doc = response.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        doc = None
                    if isinstance(doc, dict):
                        return doc
                    failure = f"HTTP {status} with a body that is not a JSON object"
            if attempt >= self.options.max_retries:
                raise CrmApiError(
                    f"source {self.name!r}: {label} failed after {attempt + 1} attempt(s): {failure}; "
                    "the CRM API is unavailable, re-run the date later"
                )
            delay = wait if wait is not None else min(BACKOFF_BASE_S * 2**attempt, BACKOFF_CAP_S)
            log.warning(
                "source %s: %s: %s; retry %d of %d in %.1f s",
                self.name,
                label,
                failure,
                attempt + 1,
                self.options.max_retries,
                delay,
            )
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _category(response: httpx.Response) -> str:
        """HubSpot's error category (e.g. VALIDATION_ERROR): its free-text message may echo request values."""
        try:
            doc = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return ""
        category = doc.get("category") if isinstance(doc, dict) else None
        return f" ({category})" if isinstance(category, str) and category.isidentifier() else ""

    # -- paging -------------------------------------------------------------------------------------

    def _requested(self) -> list[str]:
        return list(dict.fromkeys([*self.options.properties, MODIFIED]))

    def _pages(
        self,
        fetch: Callable[[str | None], dict[str, Any]],
        what: str,
        notes: list[str],
        cursor_limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Follow cursors until none is left; a cursor or page served twice stops the loop with a note.

        Returns the records and, when a numeric cursor reached ``cursor_limit``, that cursor (the
        caller narrows the query instead of asking for a page the API would refuse).
        """
        records: list[dict[str, Any]] = []
        seen_ids: set[str] = set()
        cursors: set[str] = set()
        after: str | None = None
        pages = 0
        while True:
            page = fetch(after)
            pages += 1
            results = [r for r in page.get("results") or [] if isinstance(r, dict)]
            ids = {str(r.get("id")) for r in results}
            if results and ids <= seen_ids:
                return self._stop(records, what, f"page {pages} repeated contacts already read", notes)
            records.extend(results)
            seen_ids |= ids
            cursor = _next_cursor(page)
            if cursor is None:
                return records, None
            if cursor in cursors or cursor == after:
                return self._stop(records, what, f"the API repeated paging cursor after page {pages}", notes)
            cursors.add(cursor)
            if cursor_limit is not None and cursor.isdigit() and int(cursor) >= cursor_limit:
                return records, cursor
            after = cursor

    @staticmethod
    def _stop(
        records: list[dict[str, Any]], what: str, problem: str, notes: list[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """An increment may stop early (the watermark resumes from what was read); a snapshot may not:
        it replaces the whole table, so a partial one would make the missing contacts disappear."""
        if what == "list":
            raise CrmApiError(f"snapshot of contacts aborted: {problem}; nothing was written, retry the run later")
        notes.append(f"{what}: {problem}; stopped paging there")
        return records, None

    def _list_all(self, client: httpx.Client, notes: list[str]) -> list[dict[str, Any]]:
        def fetch(after: str | None) -> dict[str, Any]:
            params = {
                "limit": str(self.options.page_size),
                "properties": ",".join(self._requested()),
                "archived": "false",
            }
            if after is not None:
                params["after"] = after
            return self._send(client, "GET", LIST_PATH, params=params)

        records, _ = self._pages(fetch, "list", notes)
        return records

    def _search_all(
        self, client: httpx.Client, since: datetime, until: datetime, notes: list[str]
    ) -> list[dict[str, Any]]:
        lower = _to_ms(since)
        upper = _to_ms(until)
        records: list[dict[str, Any]] = []
        while True:

            def fetch(after: str | None, lower: int = lower) -> dict[str, Any]:
                body: dict[str, Any] = {
                    "filterGroups": [
                        {
                            "filters": [
                                {"propertyName": MODIFIED, "operator": "GTE", "value": str(lower)},
                                {"propertyName": MODIFIED, "operator": "LT", "value": str(upper)},
                            ]
                        }
                    ],
                    "sorts": [{"propertyName": MODIFIED, "direction": "ASCENDING"}],
                    "properties": self._requested(),
                    "limit": self.options.page_size,
                }
                if after is not None:
                    body["after"] = after
                return self._send(client, "POST", SEARCH_PATH, body=body)

            batch, stopped_at = self._pages(fetch, "search", notes, self.search_result_limit)
            records.extend(batch)
            if stopped_at is None:
                return records
            times = [t for t in (_parse_time(self._modified(r) or "") for r in batch) if t is not None]
            next_lower = _to_ms(max(times)) if times else lower
            if next_lower <= lower:
                notes.append(
                    f"search: more than {self.search_result_limit} contacts share one modification time; "
                    "the rest of this increment was not read: run with full_refresh"
                )
                return records
            lower = next_lower  # sorted ascending: continue from the last time read (overlap is deduplicated)

    # -- rows ---------------------------------------------------------------------------------------

    @staticmethod
    def _modified(record: dict[str, Any]) -> str | None:
        props = record.get("properties") or {}
        return _text(props.get(MODIFIED)) or _text(record.get("updatedAt"))

    def _row(self, record: dict[str, Any]) -> dict[str, Any]:
        props = record.get("properties") or {}
        row: dict[str, Any] = {}
        for prop, column in self.options.properties.items():
            value = _text(props.get(prop))
            if prop == "hs_object_id" and value is None:
                value = _text(record.get("id"))
            if prop == MODIFIED:
                value = self._modified(record)
            if value is None:
                row.setdefault(column, None)
            elif row.get(column) is None:
                row[column] = value
            else:
                row[column] = f"{row[column]} {value}"
        if row.get("contact_id") is None:
            row["contact_id"] = _text(record.get("id"))
        if row.get("updated_at") is None:
            row["updated_at"] = self._modified(record)
        moment = _parse_time(row["updated_at"]) if row["updated_at"] else None
        if moment is not None:
            row["updated_at"] = _iso(moment)
        return row

    def _latest_per_id(self, records: list[tuple[int, dict[str, Any]]]) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """One record per contact id, the most recently modified; position kept for ``_row`` lineage."""
        best: dict[str, tuple[datetime, int, dict[str, Any]]] = {}
        for position, record in records:
            key = str(record.get("id"))
            moment = _parse_time(self._modified(record) or "") or _EPOCH
            if key not in best or moment >= best[key][0]:
                best[key] = (moment, position, record)
        kept = sorted(((pos, rec) for _, pos, rec in best.values()), key=lambda item: item[0])
        return kept, len(records) - len(kept)

    def _frame(self, kept: list[tuple[int, dict[str, Any]]]) -> pd.DataFrame:
        columns = list(dict.fromkeys([*self.options.properties.values(), "contact_id", "updated_at"]))
        rows = [self._row(rec) for _, rec in kept]
        frame = pd.DataFrame(rows, columns=columns, dtype=object)
        frame[SOURCE_COL] = f"{self.kind}:{TABLE}"  # the endpoint, not the configured name: lineage
        frame[ROW_COL] = pd.Series([pos for pos, _ in kept], dtype="int64")
        return frame

    # -- extract ------------------------------------------------------------------------------------

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        if table != TABLE:
            raise ValueError(f"source {self.name!r} provides only {TABLE!r}, not {table!r}")
        notes: list[str] = []
        # No earlier snapshot in the lake (first load, or re-running the earliest date): read it whole.
        whole = self.options.full_refresh or ctx.needs_snapshot
        watermark = None if whole else ctx.state.get_watermark(self.name, table)
        since = _parse_time(watermark) if watermark else None
        if watermark and since is None:
            notes.append("stored watermark is not a timestamp; read a full snapshot instead")
        mode: Mode
        with self._client() as client:
            if since is None:
                records = self._list_all(client, notes)
                mode = "snapshot"
            else:
                day_start = ctx.window.day_start(ctx.window.run_date).astimezone(UTC)
                if since > day_start:
                    # A re-run or backfill of this date (or the first increment after a snapshot): the
                    # single watermark is already past the day, so read the whole day again instead of
                    # replacing its partition with only the last few hours.
                    notes.append("watermark is past the start of the run date: read the whole day's changes")
                    since = day_start
                since -= timedelta(hours=self.options.lookback_hours)
                records = self._search_all(client, since, ctx.window.as_of.astimezone(UTC), notes)
                mode = "increment"
        label = f"{self.kind}:{TABLE}"
        rejects = [
            {SOURCE_COL: label, ROW_COL: pos, "_raw": json.dumps(rec, default=str), "_reason": "contact without id"}
            for pos, rec in enumerate(records, start=1)
            if _text(rec.get("id")) is None
        ]
        kept, duplicates = self._latest_per_id(
            [(pos, rec) for pos, rec in enumerate(records, start=1) if _text(rec.get("id")) is not None]
        )
        if duplicates:
            notes.append(f"{duplicates} duplicate contact record(s) from the API dropped (kept the latest)")
        frame = self._frame(kept)
        times = [t for t in (_parse_time(v) for v in frame["updated_at"].dropna()) if t is not None]
        on_commit: list[Callable[[], None]] = []
        if times:
            latest = _iso(max(times))
            on_commit.append(lambda: ctx.state.set_watermark(self.name, table, latest))
        log.info("source %s: read %d contacts (%s) from the CRM API", self.name, len(frame), mode)
        return Extract(
            frame,
            rejects,
            mode=mode,
            on_commit=on_commit,
            notes=notes,
            dedupe_on=("contact_id", "updated_at") if mode == "increment" else (),
        )

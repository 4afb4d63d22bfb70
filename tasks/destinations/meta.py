"""Meta Custom Audiences (customer file) through the Graph API.

Why it looks like this:
- Meta only ever receives SHA-256 hashes of Meta-normalized values (destinations.md), never raw PII.
  Normalization is Meta's own (phones without '+', no Gmail dot rule, names keep Vietnamese letters),
  which is why it is not shared with Google or TikTok.
- Meta never says *which* rows it could not use, only how many (``num_invalid_entries``). So every
  sent member is reported as accepted and the count goes to ``BatchResult.unmatched``.
- Removing a person later needs exactly the hashes that were sent, not today's CRM row (it may have
  changed or been deleted), so ``remote_ref`` is the compact JSON of the hashed row.
- Every request carries a ``session`` (session_id stable per plan and operation, batch_seq, last flag)
  so a resumed apply continues the same session, and ``usersreplace`` gets Meta's replace semantics.
  Session errors (code 2650) are handled where they can be: a session Meta already finished means the
  batch was applied before a crash (accepted); a timed-out or unknown add/remove session is restarted
  under a derived id (sessions only group batches there); a replace that cannot continue stops the sync
  with a message saying what to do, because half a replacement cannot be resumed.
- Graph throttling (codes 17/613/4, plus the Business-Use-Case codes 80000-80014) arrives in an HTTP 400
  body with no Retry-After. The wait is Meta's ``estimated_time_to_regain_access`` from the
  ``X-Business-Use-Case-Usage`` header when present, otherwise ``retry.base_delay`` doubled for each
  consecutive throttle (no jitter: one ad account is one rate-limit bucket, and tests can assert it).
  HttpClient caps it at ``retry.max_delay`` and gives up after ``retry.max_attempts``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
import pandas as pd
from pydantic import ConfigDict, Field, field_validator

from tasks.destinations.audience import (
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationAuthError,
    DestinationError,
    DestinationUnavailable,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import AdPlatformClient, DoublingThrottle, PlatformOptions, split_refs
from tasks.normalize import hashing

log = logging.getLogger(__name__)

MetaKey = Literal["EMAIL", "PHONE", "FN", "LN", "CT", "ZIP", "COUNTRY", "GEN", "DOBY", "DOBM", "DOBD"]
ALL_KEYS: tuple[MetaKey, ...] = ("EMAIL", "PHONE", "FN", "LN", "CT", "ZIP", "COUNTRY", "GEN", "DOBY", "DOBM", "DOBD")
DEFAULT_SCHEMA: list[MetaKey] = ["EMAIL", "PHONE", "FN", "LN", "CT", "COUNTRY"]
STRONG_KEYS = ("EMAIL", "PHONE")  # a row without one of these matches nobody reliably
MAX_ROWS = 10_000

THROTTLE_CODES = frozenset({4, 17, 613, *range(80000, 80015)})
AUTH_CODES = frozenset({102, 190, 10, *range(200, 300)})
MISSING_OBJECT = (100, 33)  # "Object with ID ... does not exist, cannot be loaded due to missing permissions"
SESSION_ERROR = 2650
UPDATE_IN_PROGRESS = 1870145
SESSION_TIMED_OUT = 1870158
FIRST_BATCH_MISSING = 1870147
SESSION_FINISHED = 1870159


class MetaOptions(PlatformOptions):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    connection: str = "meta_default"  # Airflow connection; the access token is its password
    ad_account_id: str
    audience_id: str | None = None  # pin an existing audience; otherwise one is created per segment
    api_version: str = Field("v23.0", pattern=r"^v\d+\.\d+$")
    base_url: str = "https://graph.facebook.com"
    keys: list[MetaKey] = Field(default_factory=lambda: list(DEFAULT_SCHEMA), alias="schema", min_length=1)
    replace: bool = False  # the sync engine sends the whole segment through usersreplace instead of diffs

    @field_validator("ad_account_id")
    @classmethod
    def _strip_act(cls, value: str) -> str:
        value = value.strip().removeprefix("act_")
        if not value.isdigit():
            raise ValueError("ad_account_id must be the numeric ad account id (with or without 'act_')")
        return value

    @field_validator("keys")
    @classmethod
    def _schema(cls, keys: list[MetaKey]) -> list[MetaKey]:
        if len(set(keys)) != len(keys):
            raise ValueError("schema lists a key twice")
        if not set(keys) & set(STRONG_KEYS):
            raise ValueError("schema needs EMAIL or PHONE: names and places alone match almost nobody")
        return keys


@dataclass(frozen=True)
class GraphError:
    code: int
    subcode: int | None
    message: str
    type: str


def graph_error(response: httpx.Response) -> GraphError | None:
    """The ``{"error": {...}}`` body of a failed Graph call, or None when it is not one."""
    if response.is_success:
        return None
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(err, dict):
        return None
    try:
        code = int(err.get("code", 0))
        sub = err.get("error_subcode")
        subcode = int(sub) if sub is not None else None
    except (TypeError, ValueError):
        return None
    return GraphError(code, subcode, str(err.get("message", "")), str(err.get("type", "")))


def _regain_seconds(headers: Mapping[str, str]) -> float | None:
    """Meta's own hint: ``estimated_time_to_regain_access`` (minutes) in X-Business-Use-Case-Usage."""
    raw = headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = json.loads(raw)
        minutes = [
            float(entry.get("estimated_time_to_regain_access") or 0)
            for entries in usage.values()
            for entry in entries
            if isinstance(entry, dict)
        ]
    except (ValueError, AttributeError, TypeError):
        return None
    longest = max(minutes, default=0.0)
    return longest * 60 if longest > 0 else None


def graph_throttled(response: httpx.Response) -> bool:
    """A Graph throttle code (in an HTTP 400 body: HttpClient's ``throttle`` hook cannot rely on 429)."""
    err = graph_error(response)
    return err is not None and err.code in THROTTLE_CODES


# --- normalization ----------------------------------------------------------------------------


def _zip(members: pd.DataFrame) -> pd.Series:
    """Meta ZIP: lowercase, no spaces or dashes; US codes keep their first 5 digits."""
    raw = members["postal_code"].astype("string").str.lower().str.replace(r"[\s\-]", "", regex=True)
    us = members["country"].astype("string").str.upper().eq("US").fillna(False)
    raw = raw.where(~us, raw.str.slice(0, 5))
    return raw.where(raw.str.len() > 0)


def _birthday_part(fmt: str) -> Callable[[pd.DataFrame], pd.Series]:
    def part(members: pd.DataFrame) -> pd.Series:
        days = pd.to_datetime(members["birthday"], errors="coerce")
        return days.dt.strftime(fmt).astype("string")

    return part


NORMALIZERS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "EMAIL": lambda m: hashing.meta_email(m["email"]),
    "PHONE": lambda m: hashing.meta_phone(m["phone"]),
    "FN": lambda m: hashing.meta_name(m["first_name"]),
    "LN": lambda m: hashing.meta_name(m["last_name"]),
    "CT": lambda m: hashing.meta_city(m["city"]),
    "ZIP": _zip,
    "COUNTRY": lambda m: hashing.meta_country(m["country"]),
    "GEN": lambda m: hashing.meta_gender(m["gender"]),
    "DOBY": _birthday_part("%Y"),
    "DOBM": _birthday_part("%m"),
    "DOBD": _birthday_part("%d"),
}


def hashed_rows(members: pd.DataFrame, keys: list[MetaKey]) -> list[dict[str, str]]:
    """One ``{key: sha256}`` per member, in schema order, without the keys that had no usable value."""
    columns = {key: hashing.hash_once(NORMALIZERS[key](members)).tolist() for key in keys}
    rows: list[dict[str, str]] = []
    for i in range(len(members)):
        row: dict[str, str] = {}
        for key in keys:
            value = columns[key][i]
            if isinstance(value, str) and value:
                row[key] = value
        rows.append(row)
    return rows


def compact(row: Mapping[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":"))


# --- the client -------------------------------------------------------------------------------


@register("meta_custom_audience")
class MetaCustomAudience(AdPlatformClient):
    Options = MetaOptions
    capabilities: ClassVar[Capabilities] = Capabilities(
        purpose="ad_personalization", max_batch=MAX_ROWS, supports_replace=True, needs=("email", "phone")
    )

    platform = "meta"
    secret = "Meta access token"
    options: MetaOptions

    def __init__(self, name: str, options: MetaOptions) -> None:
        super().__init__(name, options)
        # plan session id -> (session id used at Meta, batch_seq offset) after a restarted add/remove session
        self._sessions: dict[int, tuple[int, int]] = {}

    def _connect(self, token: str) -> HttpClient:
        throttle = DoublingThrottle(self.options.retry.policy(), graph_throttled, lambda r: _regain_seconds(r.headers))
        return self._http_client(self.options.base_url, throttle=throttle)

    @property
    def wants_replace(self) -> bool:
        return self.options.replace

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if self.options.audience_id:
            return self.options.audience_id
        if known_id:
            return known_id
        response = self.http.request(
            "POST",
            self._path(f"act_{self.options.ad_account_id}/customaudiences"),
            data={
                "name": title,
                "subtype": "CUSTOM",
                "customer_file_source": "USER_PROVIDED_ONLY",
                "description": f"Segment {segment}, kept in sync by the audiences pipeline",
                "access_token": self.token,
            },
        )
        self._raise_for(response, f"creating the audience for segment {segment!r}")
        audience_id = str(response.json()["id"])
        log.info("%s: created custom audience %s for segment %s", self.name, audience_id, segment)
        return audience_id

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        return self._send_members("POST", f"{audience_id}/users", members, batch)

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        return self._send_members("POST", f"{audience_id}/usersreplace", members, batch)

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(refs))
        rows, failed = split_refs(refs, _parse_ref, "remote_ref is not the hashed Meta row this destination recorded")
        if not rows:
            return BatchResult(failed=failed)
        schema = [k for k in ALL_KEYS if any(k in row for row in rows.values())]
        result = self._post_rows("DELETE", f"{audience_id}/users", schema, rows, batch)
        result.failed.update(failed)
        return result

    # --- internals -----------------------------------------------------------------------------
    def _path(self, tail: str) -> str:
        return f"/{self.options.api_version}/{tail}"

    def _check_size(self, n: int) -> None:
        if n > MAX_ROWS:
            raise ValueError(f"{self.name}: {n} rows in one batch; Meta takes at most {MAX_ROWS} (capabilities)")

    def _send_members(self, method: str, tail: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(members))
        keys = list(self.options.keys)
        failed: dict[str, str] = {}
        rows: dict[str, dict[str, str]] = {}
        for key, row in zip(members["customer_key"].astype(str), hashed_rows(members, keys), strict=True):
            if any(k in row for k in STRONG_KEYS):
                rows[key] = row
            else:
                failed[key] = "no usable email or phone after Meta normalization"
        if not rows:
            if tail.endswith("usersreplace"):
                raise BatchRejected(
                    f"{self.name}: no member of replace batch {batch.seq}/{batch.batches} has a usable email "
                    "or phone; Meta cannot take an empty batch and the replace session needs every batch_seq"
                )
            return BatchResult(failed=failed)
        result = self._post_rows(method, tail, keys, rows, batch)
        result.failed.update(failed)
        return result

    def _session(self, batch: BatchRef) -> dict[str, Any]:
        session_id, offset = self._sessions.get(batch.session_id, (batch.session_id, 0))
        return {
            "session_id": session_id,
            "batch_seq": batch.seq - offset,
            "last_batch_flag": batch.is_last,
            "estimated_num_total": batch.estimated_total,
        }

    def _restart_session(self, batch: BatchRef) -> None:
        """A fresh session (stable for this plan and batch) starting at this batch as batch_seq 1."""
        digest = hashlib.sha256(f"{batch.session_id}:restart:{batch.seq}".encode()).digest()
        new_id = int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1
        self._sessions[batch.session_id] = (new_id, batch.seq - 1)

    def _post_rows(
        self, method: str, tail: str, schema: Sequence[str], rows: dict[str, dict[str, str]], batch: BatchRef
    ) -> BatchResult:
        payload = compact({"schema": schema, "data": [[row.get(k, "") for k in schema] for row in rows.values()]})
        accepted = {key: compact(row) for key, row in rows.items()}
        replacing = tail.endswith("usersreplace")
        for attempt in (1, 2):
            response = self.http.request(
                method,
                self._path(tail),
                data={"payload": payload, "session": compact(self._session(batch)), "access_token": self.token},
            )
            if response.is_success:
                body = response.json()
                return BatchResult(accepted=accepted, unmatched=int(body.get("num_invalid_entries") or 0))
            err = graph_error(response)
            if err is None or err.code != SESSION_ERROR:
                self._raise_for(response, f"{method} {tail} batch {batch.seq}/{batch.batches}")
            assert err is not None
            where = f"{self.name}: {'replace' if replacing else batch.operation} session of plan {batch.plan_id}"
            if err.subcode == SESSION_FINISHED:
                # Meta closed this session after its last batch: the batch was applied before a crash or a
                # lost response, so resuming it must not send it again.
                log.info("%s already finished at Meta; batch %d counted as applied", where, batch.seq)
                return BatchResult(accepted=accepted)
            if err.subcode == UPDATE_IN_PROGRESS:
                raise DestinationUnavailable(
                    f"{where}: Meta is still applying another replace of audience {tail.split('/')[0]} "
                    "(error 2650/1870145); the next run retries"
                )
            if err.subcode in (SESSION_TIMED_OUT, FIRST_BATCH_MISSING) and not replacing and attempt == 1:
                log.warning("%s: Meta lost the session (2650/%s); continuing under a new session", where, err.subcode)
                self._restart_session(batch)
                continue
            if err.subcode in (SESSION_TIMED_OUT, FIRST_BATCH_MISSING):
                raise DestinationUnavailable(
                    f"{where}: Meta can no longer continue this session (error 2650/{err.subcode}: "
                    f"{redact(err.message)}). A replacement cannot be resumed half way: plan the sync again so "
                    "the replace starts over from batch 1 under a new session"
                )
            self._raise_for(response, f"{method} {tail} batch {batch.seq}/{batch.batches}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        err = graph_error(response)
        message = redact(err.message if err else response.text).replace(self.token, "<token>")
        codes = f"{err.code}/{err.subcode}" if err else f"HTTP {response.status_code}"
        if err is not None and err.code in AUTH_CODES:
            raise DestinationAuthError(
                f"{self.name}: Meta refused the access token while {what} (Graph error {codes}: {message}). "
                f"Update the password of connection {self.options.connection!r} and re-run; nothing was sent."
            )
        if err is not None and (err.code, err.subcode) == MISSING_OBJECT:
            raise DestinationError(
                f"{self.name}: Meta has no audience or ad account this token can use while {what} ({codes}: "
                f"{message}); check audience_id / ad_account_id in destinations.yaml"
            )
        if response.status_code == 400:
            raise BatchRejected(f"{self.name}: Meta rejected {what} (Graph error {codes}: {message})")
        raise DestinationError(f"{self.name}: Meta answered HTTP {response.status_code} to {what} ({codes}: {message})")


def _parse_ref(ref: object) -> dict[str, str] | None:
    if not isinstance(ref, str):
        return None
    try:
        row = json.loads(ref)
    except ValueError:
        return None
    if not isinstance(row, dict) or not row:
        return None
    if not all(k in ALL_KEYS and isinstance(v, str) and len(v) == 64 for k, v in row.items()):
        return None
    return row

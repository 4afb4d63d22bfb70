"""A local Graph API that enforces Meta's Custom Audience contract (destinations.md), for tests and the demo.

Why a server and not a mock: the client's form encoding, session bookkeeping, error parsing and retries
only prove themselves against real HTTP answers in Meta's shapes. This server enforces what Meta
enforces — the access token (OAuthException 190), the ``payload``/``session`` form fields, at most
10,000 rows, SHA-256 lowercase hex for every hashed key, the session rules of ``/users`` and
``/usersreplace`` (batch_seq from 1, one replace at a time, the last batch closes the session, error
2650 with its subcodes) — and keeps each audience as a set of hashed rows so tests assert what Meta
would hold. Throttles are injected in Graph's exact shape (``throttle``), and ``invalid_hashes`` makes
rows count in ``num_invalid_entries`` the way Meta reports unmatchable rows (counted, never itemised).

Counters: ``added``/``removed`` count, per hashed row (its sorted compact JSON), every row a request
got accepted into / out of an audience; a replace counts the net change when its session finishes.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tasks.sandbox.server import ContractServer, Request, Response

KEYS = ("EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY", "DOBM", "DOBD", "FI")
UNHASHED = ("EXTERN_ID", "MADID")
SINGLE_KEY = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE"}
MAX_ROWS = 10_000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = r"/v\d+\.\d+"
THROTTLES = {
    17: ("(#17) User request limit reached", 2446079),
    613: ("(#613) Calls to this api have exceeded the rate limit.", None),
    4: ("(#4) Application request limit reached", None),
}


@dataclass
class Session:
    audience: str
    replace: bool
    last_seen: float
    seqs: set[int] = field(default_factory=set)  # batch_seq values received
    staged: set[str] = field(default_factory=set)  # rows of a replace, swapped in when it finishes
    finished: bool = False
    timed_out: bool = False


class GraphFailure(Exception):
    def __init__(self, status: int, code: int, message: str, subcode: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.subcode = status, code, message, subcode


def graph_error_body(code: int, message: str, subcode: int | None = None, kind: str = "OAuthException") -> dict:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": secrets.token_urlsafe(8)}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def row_key(row: dict[str, str]) -> str:
    """A member's identity at this server: its non-empty hashed keys as sorted compact JSON."""
    return json.dumps({k: v for k, v in sorted(row.items()) if v}, separators=(",", ":"))


class MetaServer(ContractServer):
    platform = "meta"

    def __init__(self, access_token: str = "meta-test-token", session_timeout: float = 90 * 60) -> None:
        super().__init__()
        self._defaults = (access_token, session_timeout)
        self.reset()
        self.route("POST", rf"{_VERSION}/act_(?P<account>\d+)/customaudiences", self._create)
        self.route("POST", rf"{_VERSION}/(?P<audience>\d+)/users", self._users)
        self.route("DELETE", rf"{_VERSION}/(?P<audience>\d+)/users", self._users)
        self.route("POST", rf"{_VERSION}/(?P<audience>\d+)/usersreplace", self._users)

    def reset_state(self) -> None:
        self.access_token, self.session_timeout = self._defaults
        self.auth_status = 400  # Graph answers a bad token with HTTP 400 (sometimes 401) and code 190
        self.audiences: dict[str, set[str]] = {}
        self.names: dict[str, str] = {}
        self.sessions: dict[tuple[str, int], Session] = {}
        self.invalid_hashes: set[str] = set()  # rows holding one of these count as num_invalid_entries
        self._next_id = 23850000000000001

    # --- test helpers -----------------------------------------------------------------------
    def create_audience(self, name: str = "seeded", rows: list[dict[str, str]] | None = None) -> str:
        with self.lock:
            audience_id = str(self._next_id)
            self._next_id += 1
            self.audiences[audience_id] = {row_key(r) for r in rows or []}
            self.names[audience_id] = name
            return audience_id

    def members(self, audience_id: str) -> set[str]:
        return set(self.audiences.get(audience_id, set()))

    def hashes(self, audience_id: str, key: str = "EMAIL") -> set[str]:
        """The hashes of one key (EMAIL, PHONE, FN...) held in an audience."""
        out = set()
        for member in self.audiences.get(audience_id, set()):
            value = json.loads(member).get(key)
            if value:
                out.add(value)
        return out

    def throttle(self, times: int = 1, code: int = 17, path: str = "", regain_minutes: int = 0) -> None:
        """The next ``times`` matching requests get Graph's throttle error (HTTP 400, code 17/613/4)."""
        message, subcode = THROTTLES[code]
        usage = {
            "1": [{"type": "ads_management", "call_count": 100, "estimated_time_to_regain_access": regain_minutes}]
        }
        body = graph_error_body(code, message, subcode)
        body["error"]["is_transient"] = True
        self.fail_next(Response(400, body), times, path, {"X-Business-Use-Case-Usage": json.dumps(usage)})

    def server_errors(self, times: int = 1, status: int = 500, path: str = "") -> None:
        body = graph_error_body(2, "An unexpected error has occurred. Please retry your request later.")
        self.fail_next(Response(status, body), times, path)

    def expire_sessions(self) -> None:
        """Every open session times out (Meta: error 2650 / 1870158 on its next batch)."""
        with self.lock:
            for session in self.sessions.values():
                if not session.finished:
                    session.timed_out = True

    def form_bodies(self) -> list[dict[str, str]]:
        """The decoded form fields of every recorded request (for 'what did Meta receive' assertions)."""
        out = []
        for rec in self.recorded:
            fields = {k: v[-1] for k, v in parse_qs(rec.request.body.decode(errors="replace")).items()}
            out.append(fields)
        return out

    # --- handlers ---------------------------------------------------------------------------
    def _fields(self, req: Request) -> dict[str, str]:
        fields = {k: v[-1] for k, v in req.query.items()}
        if req.body:
            ctype = req.header("content-type") or ""
            if "application/json" in ctype:
                try:
                    data = req.json()
                except ValueError:
                    raise GraphFailure(400, 100, "(#100) The request body is not valid JSON") from None
                if isinstance(data, dict):
                    fields.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()})
            else:
                fields.update({k: v[-1] for k, v in parse_qs(req.body.decode(errors="replace")).items()})
        return fields

    def _auth(self, req: Request, fields: dict[str, str]) -> None:
        token = fields.get("access_token")
        bearer = req.header("authorization") or ""
        if not token and bearer.lower().startswith(("bearer ", "oauth ")):
            token = bearer.split(" ", 1)[1].strip()
        if not token:
            raise GraphFailure(self.auth_status, 190, "An active access token must be used to query information.")
        if token != self.access_token:
            raise GraphFailure(self.auth_status, 190, "Invalid OAuth access token - Cannot parse access token")

    def _handle(self, req: Request, work: Any) -> Response:
        try:
            fields = self._fields(req)
            self._auth(req, fields)
            return Response(200, work(fields))
        except GraphFailure as exc:
            return Response(exc.status, graph_error_body(exc.code, exc.message, exc.subcode))

    def _create(self, req: Request, m: re.Match[str]) -> Response:
        def work(fields: dict[str, str]) -> dict[str, Any]:
            if not fields.get("name"):
                raise GraphFailure(400, 100, "(#100) The parameter name is required")
            if fields.get("subtype") != "CUSTOM":
                raise GraphFailure(400, 100, "(#100) subtype must be CUSTOM for a customer file audience")
            if fields.get("customer_file_source") not in (
                "USER_PROVIDED_ONLY",
                "PARTNER_PROVIDED_ONLY",
                "BOTH_USER_AND_PARTNER_PROVIDED",
            ):
                raise GraphFailure(400, 100, "(#100) customer_file_source is required for customer file audiences")
            return {"id": self.create_audience(fields["name"])}

        return self._handle(req, work)

    def _users(self, req: Request, m: re.Match[str]) -> Response:
        audience = m.group("audience")
        replacing = req.path.endswith("/usersreplace")
        removing = req.method == "DELETE"

        def work(fields: dict[str, str]) -> dict[str, Any]:
            if audience not in self.audiences:
                raise GraphFailure(
                    400,
                    100,
                    f"Unsupported post request. Object with ID '{audience}' does not exist, cannot be loaded due "
                    "to missing permissions, or does not support this operation.",
                    33,
                )
            rows = self._rows(fields.get("payload"))
            session = self._session_fields(fields.get("session"), replacing)
            return self._apply(audience, rows, session, replacing, removing)

        return self._handle(req, work)

    def _rows(self, raw: str | None) -> list[dict[str, str]]:
        if not raw:
            raise GraphFailure(400, 100, "(#100) The parameter payload is required")
        try:
            payload = json.loads(raw)
        except ValueError:
            raise GraphFailure(400, 100, "(#100) param payload must be a JSON object") from None
        if not isinstance(payload, dict) or "schema" not in payload or "data" not in payload:
            raise GraphFailure(400, 100, "(#100) payload must have schema and data")
        schema, data = payload["schema"], payload["data"]
        if isinstance(schema, str):
            if schema not in SINGLE_KEY:
                raise GraphFailure(400, 100, f"(#100) Unsupported schema {schema}")
            schema = [SINGLE_KEY[schema]]
            data = [[v] for v in data] if isinstance(data, list) else data
        if not isinstance(schema, list) or not schema or len(set(schema)) != len(schema):
            raise GraphFailure(400, 100, "(#100) schema must be a non-empty list of distinct keys")
        unknown = [k for k in schema if k not in KEYS + UNHASHED]
        if unknown:
            raise GraphFailure(400, 100, f"(#100) Invalid schema key(s): {', '.join(map(str, unknown))}")
        if not isinstance(data, list) or not data:
            raise GraphFailure(400, 100, "(#100) payload data must be a non-empty array")
        if len(data) > MAX_ROWS:
            raise GraphFailure(400, 100, f"(#100) Too many entries in one request: {len(data)} > {MAX_ROWS}")
        rows = []
        for i, values in enumerate(data):
            if not isinstance(values, list) or len(values) != len(schema):
                raise GraphFailure(400, 100, f"(#100) Row {i} does not have one value per schema key")
            row: dict[str, str] = {}
            for key, value in zip(schema, values, strict=True):
                if not isinstance(value, str):
                    raise GraphFailure(400, 100, f"(#100) Row {i}: every value must be a string")
                if value and key not in UNHASHED and not _HEX64.match(value):
                    # never echo the value: it may be raw PII
                    raise GraphFailure(
                        400, 100, f"(#100) Row {i}: {key} must be SHA256-hashed (64 lowercase hex characters)"
                    )
                if value:
                    row[key] = value
            rows.append(row)
        return rows

    def _session_fields(self, raw: str | None, replacing: bool) -> dict[str, Any] | None:
        if not raw:
            if replacing:
                raise GraphFailure(400, 100, "(#100) The parameter session is required for usersreplace")
            return None
        try:
            session = json.loads(raw)
        except ValueError:
            raise GraphFailure(400, 100, "(#100) param session must be a JSON object") from None

        def whole(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        ok = (
            isinstance(session, dict)
            and whole(session.get("session_id"))
            and 0 < session["session_id"] < 2**63
            and whole(session.get("batch_seq"))
            and session["batch_seq"] >= 1
            and isinstance(session.get("last_batch_flag"), bool)
            and whole(session.get("estimated_num_total", 0))
        )
        if not ok:
            raise GraphFailure(
                400, 100, "(#100) session needs session_id (positive int64), batch_seq (>= 1) and last_batch_flag"
            )
        return dict(session)

    def _apply(
        self,
        audience: str,
        rows: list[dict[str, str]],
        fields: dict[str, Any] | None,
        replacing: bool,
        removing: bool,
    ) -> dict[str, Any]:
        session = self._open_session(audience, fields, replacing) if fields else None
        invalid = [r for r in rows if set(r.values()) & self.invalid_hashes]
        valid = [row_key(r) for r in rows if not set(r.values()) & self.invalid_hashes]
        members = self.audiences[audience]
        if replacing:
            assert session is not None
            session.staged.update(valid)
        elif removing:
            for key in valid:
                members.discard(key)
                self.removed[key] += 1
        else:
            for key in valid:
                members.add(key)
                self.added[key] += 1
        body = {
            "audience_id": audience,
            "session_id": fields["session_id"] if fields else None,
            "num_received": len(rows),
            "num_invalid_entries": len(invalid),
            "invalid_entry_samples": {str(i): "invalid hashed row" for i in range(min(len(invalid), 10))},
        }
        if session is not None:
            session.seqs.add(fields["batch_seq"] if fields else 0)
            session.last_seen = time.monotonic()
            if fields and fields["last_batch_flag"]:
                session.finished = True
                if replacing:
                    for key in session.staged - members:
                        self.added[key] += 1
                    for key in members - session.staged:
                        self.removed[key] += 1
                    self.audiences[audience] = set(session.staged)
        return body

    def _open_session(self, audience: str, fields: dict[str, Any], replacing: bool) -> Session:
        sid, seq = fields["session_id"], fields["batch_seq"]
        session = self.sessions.get((audience, sid))
        now = time.monotonic()
        if session is not None:
            if session.finished:
                raise GraphFailure(400, 2650, "The session has already finished.", 1870159)
            if session.timed_out or now - session.last_seen > self.session_timeout:
                session.timed_out = True
                raise GraphFailure(400, 2650, "The session has timed out; start a new session.", 1870158)
            return session
        if seq != 1:
            raise GraphFailure(400, 2650, "The first batch (batch_seq 1) of this session was never received.", 1870147)
        if replacing:
            for (aud, _), other in self.sessions.items():
                open_ = not other.finished and not other.timed_out and now - other.last_seen <= self.session_timeout
                if aud == audience and other.replace and open_:
                    raise GraphFailure(
                        400, 2650, "Another replace is in progress on this audience; retry later.", 1870145
                    )
        session = Session(audience, replacing, now)
        self.sessions[(audience, sid)] = session
        return session

"""A local TikTok API for Business (v1.3) that enforces the customer file audience contract (destinations.md).

Why a server and not a mock: TikTok's contract lives in details a mock would wave through — the
``Access-Token`` header, the multipart upload whose ``file_signature`` must be the MD5 of the exact
bytes sent, one SHA-256 lowercase hex per line (anything else is code 40062, PII not hashed), the
envelope ``{code, message, request_id, data}`` that reports every error (even throttling, 40100/40132)
inside HTTP 200, and the rule that no APPEND/REMOVE/REPLACE may leave an audience under 1,000 members.
Audiences are kept as sets of hashes so tests assert what TikTok would hold.

``added``/``removed`` count, per hash, every identifier an update got into / out of an audience.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import HTTP
from typing import Any

from tasks.sandbox.server import ContractServer, Request, Response

PREFIX = r"/open_api/v1\.3"
CALCULATE_TYPES = ("EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256", "FIRST_SHA256")
ACTIONS = ("APPEND", "REMOVE", "REPLACE")
MIN_AUDIENCE = 1_000
OK = 0
PARAM_ERROR = 40002
NOT_HASHED = 40062
RATE_LIMITED = 40100
TOKEN_EXPIRED = 40102
TOKEN_INVALID = 40105
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TikTokFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def envelope(code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data or {}}


@dataclass
class UploadedFile:
    advertiser_id: str
    calculate_type: str
    hashes: set[str]


@dataclass
class Audience:
    name: str
    advertiser_id: str
    calculate_type: str
    members: set[str] = field(default_factory=set)


class TikTokServer(ContractServer):
    platform = "tiktok"
    base_path = "/open_api/v1.3"  # PREFIX, as a path

    def __init__(self, access_token: str = "tiktok-test-token", min_audience_size: int = MIN_AUDIENCE) -> None:
        super().__init__()
        self._defaults = (access_token, min_audience_size)
        self.reset()
        self.route("POST", rf"{PREFIX}/dmp/custom_audience/file/upload/", self._upload)
        self.route("POST", rf"{PREFIX}/dmp/custom_audience/create/", self._create)
        self.route("POST", rf"{PREFIX}/dmp/custom_audience/update/", self._update)

    def reset_state(self) -> None:
        self.access_token, self.min_audience_size = self._defaults
        self.expired_tokens: set[str] = set()
        self.files: dict[str, UploadedFile] = {}
        self.audiences: dict[str, Audience] = {}
        self._next_id = 7_000_000_001

    # --- test helpers -----------------------------------------------------------------------
    def seed_audience(
        self, hashes: set[str], advertiser_id: str = "7000", calculate_type: str = "EMAIL_SHA256", name: str = "seeded"
    ) -> str:
        with self.lock:
            audience_id = str(self._next_id)
            self._next_id += 1
            self.audiences[audience_id] = Audience(name, advertiser_id, calculate_type, set(hashes))
            return audience_id

    def members(self, audience_id: str) -> set[str]:
        audience = self.audiences.get(audience_id)
        return set(audience.members) if audience else set()

    def throttle(self, times: int = 1, code: int = RATE_LIMITED, path: str = "") -> None:
        """The next ``times`` matching requests get TikTok's throttle: HTTP 200 with body code 40100/40132."""
        message = "Too many requests. Please retry in some time." if code == RATE_LIMITED else "QPS limit reached"
        self.fail_next(Response(200, envelope(code, message)), times, path)

    def server_errors(self, times: int = 1, status: int = 500, path: str = "") -> None:
        self.fail_next(Response(status, envelope(50000, "System error")), times, path)

    def expire_token(self) -> None:
        self.expired_tokens.add(self.access_token)

    def uploads(self) -> list[bytes]:
        """The raw bytes of every file part received (for 'no raw PII was sent' assertions)."""
        out = []
        for rec in self.recorded:
            if rec.request.path.endswith("/file/upload/"):
                parts = _multipart(rec.request)
                if "file" in parts:
                    out.append(parts["file"])
        return out

    # --- handlers ---------------------------------------------------------------------------
    def _handle(self, req: Request, work: Any) -> Response:
        try:
            self._auth(req)
            return Response(200, envelope(OK, "OK", work()))
        except TikTokFailure as exc:
            return Response(200, envelope(exc.code, exc.message))

    def _auth(self, req: Request) -> None:
        token = req.header("access-token")
        if not token or token not in (self.access_token, *self.expired_tokens):
            raise TikTokFailure(TOKEN_INVALID, "Access token is incorrect or has been revoked.")
        if token in self.expired_tokens:
            raise TikTokFailure(TOKEN_EXPIRED, "Access token has expired.")

    def _upload(self, req: Request, m: re.Match[str]) -> Response:
        def work() -> dict[str, Any]:
            parts = _multipart(req)
            for name in ("advertiser_id", "calculate_type", "file", "file_signature"):
                if name not in parts:
                    raise TikTokFailure(PARAM_ERROR, f"{name}: Missing data for required field.")
            calculate_type = parts["calculate_type"].decode()
            if calculate_type not in CALCULATE_TYPES:
                raise TikTokFailure(PARAM_ERROR, "calculate_type: Not a valid choice.")
            content = parts["file"]
            if hashlib.md5(content).hexdigest() != parts["file_signature"].decode().strip().lower():
                raise TikTokFailure(PARAM_ERROR, "file_signature does not match the MD5 of the uploaded file.")
            lines = [line.strip() for line in content.decode("utf-8", errors="replace").splitlines()]
            hashes = [line for line in lines if line]
            if any(not _HEX64.match(h) for h in hashes):  # never echo the line: it may be raw PII
                raise TikTokFailure(NOT_HASHED, "The file contains data that is not SHA256 hashed.")
            path = f"dmp/{uuid.uuid4().hex}.txt"
            self.files[path] = UploadedFile(parts["advertiser_id"].decode(), calculate_type, set(hashes))
            return {"file_path": path}

        return self._handle(req, work)

    def _json(self, req: Request) -> dict[str, Any]:
        try:
            body = req.json()
        except ValueError:
            raise TikTokFailure(PARAM_ERROR, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise TikTokFailure(PARAM_ERROR, "The request body must be a JSON object.")
        return body

    def _files(self, body: dict[str, Any], advertiser_id: str, calculate_type: str) -> set[str]:
        paths = body.get("file_paths")
        if not isinstance(paths, list) or not paths:
            raise TikTokFailure(PARAM_ERROR, "file_paths: Missing data for required field.")
        out: set[str] = set()
        for path in paths:
            uploaded = self.files.get(path) if isinstance(path, str) else None
            if uploaded is None or uploaded.advertiser_id != advertiser_id:
                raise TikTokFailure(PARAM_ERROR, "file_paths: file not found for this advertiser.")
            if uploaded.calculate_type != calculate_type:
                raise TikTokFailure(PARAM_ERROR, "The files must use the audience's calculate_type.")
            out |= uploaded.hashes
        return out

    def _create(self, req: Request, m: re.Match[str]) -> Response:
        def work() -> dict[str, Any]:
            body = self._json(req)
            advertiser_id = str(body.get("advertiser_id") or "")
            name = body.get("custom_audience_name")
            calculate_type = body.get("calculate_type")
            if not advertiser_id or not isinstance(name, str) or not name or len(name) > 128:
                raise TikTokFailure(PARAM_ERROR, "advertiser_id and custom_audience_name (<= 128 chars) are required.")
            if calculate_type not in CALCULATE_TYPES:
                raise TikTokFailure(PARAM_ERROR, "calculate_type: Not a valid choice.")
            retention = body.get("retention_in_days")
            if retention is not None and not (isinstance(retention, int) and 1 <= retention <= 365):
                raise TikTokFailure(PARAM_ERROR, "retention_in_days must be in [1, 365].")
            hashes = self._files(body, advertiser_id, calculate_type)
            audience_id = self.seed_audience(hashes, advertiser_id, calculate_type, name)
            for h in hashes:
                self.added[h] += 1
            return {"custom_audience_id": audience_id}

        return self._handle(req, work)

    def _update(self, req: Request, m: re.Match[str]) -> Response:
        def work() -> dict[str, Any]:
            body = self._json(req)
            advertiser_id = str(body.get("advertiser_id") or "")
            audience = self.audiences.get(str(body.get("custom_audience_id") or ""))
            if audience is None or audience.advertiser_id != advertiser_id:
                raise TikTokFailure(PARAM_ERROR, "custom_audience_id: audience not found for this advertiser.")
            action = body.get("action", "REPLACE")  # TikTok's default
            if action not in ACTIONS:
                raise TikTokFailure(PARAM_ERROR, "action: Not a valid choice.")
            hashes = self._files(body, advertiser_id, audience.calculate_type)
            if action == "APPEND":
                after = audience.members | hashes
            elif action == "REMOVE":
                after = audience.members - hashes
            else:
                after = set(hashes)
            if len(after) < self.min_audience_size:
                raise TikTokFailure(
                    PARAM_ERROR,
                    f"The audience size is less than {self.min_audience_size:,} after the operation "
                    f"({len(after)}); the operation was not applied.",
                )
            gone = audience.members - after
            if action == "APPEND":
                for h in hashes:
                    self.added[h] += 1
            elif action == "REMOVE":
                for h in hashes:
                    self.removed[h] += 1
            else:
                for h in hashes:
                    self.added[h] += 1
                for h in gone:
                    self.removed[h] += 1
            audience.members = after
            return {"custom_audience_id": body["custom_audience_id"]}

        return self._handle(req, work)


def _multipart(req: Request) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (name -> raw bytes)."""
    ctype = req.header("content-type") or ""
    if not ctype.startswith("multipart/form-data"):
        raise TikTokFailure(PARAM_ERROR, "Content-Type must be multipart/form-data for file upload.")
    msg = message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + req.body, policy=HTTP)
    assert isinstance(msg, EmailMessage)
    out: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            out[name] = payload
    return out

"""TikTok customer file audiences through the TikTok API for Business (v1.3).

Why it looks like this:
- TikTok takes identifiers only as an uploaded file of SHA-256 hashes (one per line, one identifier
  type per audience), so every add or remove is two calls: upload the file (with ``file_signature`` =
  MD5 of its bytes, which TikTok checks) and then ``custom_audience/update`` with APPEND or REMOVE.
  The action is always sent explicitly: TikTok's default is REPLACE.
- One identifier type per destination (``identifier``): email (trim + lowercase) or phone (digits with
  country code, no '+', TikTok's 2025 rule). ``remote_ref`` is the hash sent, which is all a removal needs.
- Batches are up to 50,000 lines per file (~3.3 MB): far below upload limits, and few enough files that
  a large segment is not thousands of update calls.
- TikTok answers HTTP 200 with a body ``code`` for everything: 40100/40132 are throttles (retried by
  HttpClient with ``retry.base_delay`` doubling per consecutive throttle, since no delay is given),
  40102/40105 are a dead token (DestinationAuthError), 40062 is unhashed PII (BatchRejected).
- Any action fails if the audience would be under 1,000 members afterwards: the sync engine must hold
  those (``capabilities.min_audience_size``); if TikTok still refuses, the error stops the sync
  (DestinationError) instead of being split and retried, since no split can fix it.
- TikTok creates an audience from files, so a new audience is created from an empty customer file and
  filled by the first APPEND (unconfirmed that the live API accepts an empty file; pin ``audience_id``
  to avoid relying on it).
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, ClassVar, Literal

import httpx
import pandas as pd
from pydantic import Field

from tasks.destinations.audience import (
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationAuthError,
    DestinationError,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import AdPlatformClient, DoublingThrottle, PlatformOptions, split_refs
from tasks.normalize import hashing

log = logging.getLogger(__name__)

Identifier = Literal["EMAIL_SHA256", "PHONE_SHA256"]
MAX_LINES = 50_000
MIN_AUDIENCE = 1_000
THROTTLE_CODES = frozenset({40100, 40132})
AUTH_CODES = frozenset({40102, 40105})
NOT_HASHED = 40062
UPLOAD = "/dmp/custom_audience/file/upload/"
CREATE = "/dmp/custom_audience/create/"
UPDATE = "/dmp/custom_audience/update/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TikTokOptions(PlatformOptions):
    connection: str = "tiktok_default"  # Airflow connection; the Access-Token is its password
    advertiser_id: str
    audience_id: str | None = None  # pin an existing audience; otherwise one is created per segment
    identifier: Identifier = "EMAIL_SHA256"
    base_url: str = "https://business-api.tiktok.com/open_api/v1.3"
    retention_in_days: int | None = Field(None, ge=1, le=365)  # None: TikTok's rolling 365 days


def body_code(response: httpx.Response) -> int | None:
    """The envelope ``code`` of a TikTok answer, or None when the body is not an envelope."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def throttled(response: httpx.Response) -> bool:
    """A 429, or body code 40100/40132 inside an HTTP 200."""
    return response.status_code == 429 or body_code(response) in THROTTLE_CODES


def _sha256(ref: object) -> str | None:
    return ref if isinstance(ref, str) and _SHA256.match(ref) else None


def file_bytes(hashes: list[str]) -> bytes:
    return ("\n".join(hashes) + "\n").encode() if hashes else b""


@register("tiktok_customer_file")
class TikTokCustomerFile(AdPlatformClient):
    Options = TikTokOptions
    # A member needs the configured identifier; the engine cannot see options, so both are listed and
    # a member without the configured one is reported as failed (see the final report).
    capabilities: ClassVar[Capabilities] = Capabilities(
        purpose="ad_personalization", max_batch=MAX_LINES, min_audience_size=MIN_AUDIENCE, needs=("email", "phone")
    )

    platform = "tiktok"
    secret = "TikTok Access-Token"
    options: TikTokOptions

    def _connect(self, token: str) -> HttpClient:
        return self._http_client(
            self.options.base_url,
            headers={"Access-Token": token},
            throttle=DoublingThrottle(self.options.retry.policy(), throttled),
        )

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if self.options.audience_id:
            return self.options.audience_id
        if known_id:
            return known_id
        path = self._upload([], f"creating the audience for segment {segment!r}")
        body: dict[str, Any] = {
            "advertiser_id": self.options.advertiser_id,
            "custom_audience_name": title[:128],
            "file_paths": [path],
            "calculate_type": self.options.identifier,
        }
        if self.options.retention_in_days:
            body["retention_in_days"] = self.options.retention_in_days
        data = self._call("POST", CREATE, f"creating the audience for segment {segment!r}", json=body)
        audience_id = str(data["custom_audience_id"])
        log.info("%s: created custom audience %s for segment %s", self.name, audience_id, segment)
        return audience_id

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(members))
        if self.options.identifier == "EMAIL_SHA256":
            hashed = hashing.hash_once(hashing.tiktok_email(members["email"])).tolist()
            missing = "no usable email (this TikTok audience matches on EMAIL_SHA256)"
        else:
            hashed = hashing.hash_once(hashing.tiktok_phone(members["phone"])).tolist()
            missing = "no usable phone (this TikTok audience matches on PHONE_SHA256)"
        accepted: dict[str, str] = {}
        failed: dict[str, str] = {}
        for key, value in zip(members["customer_key"].astype(str), hashed, strict=True):
            if isinstance(value, str) and value:
                accepted[key] = value
            else:
                failed[key] = missing
        if accepted:
            self._apply(audience_id, "APPEND", accepted, batch)
        return BatchResult(accepted=accepted, failed=failed)

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(refs))
        accepted, failed = split_refs(refs, _sha256, "remote_ref is not the SHA-256 this destination recorded")
        if accepted:
            self._apply(audience_id, "REMOVE", accepted, batch)
        return BatchResult(accepted=accepted, failed=failed)

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("TikTok replace is not used: the sync engine sends APPEND and REMOVE batches")

    # --- internals -----------------------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n > MAX_LINES:
            raise ValueError(f"{self.name}: {n} members in one batch; this client sends at most {MAX_LINES} per file")

    def _apply(self, audience_id: str, action: str, hashes: dict[str, str], batch: BatchRef) -> None:
        what = f"{action} batch {batch.seq}/{batch.batches} of audience {audience_id}"
        path = self._upload(sorted(set(hashes.values())), what)
        self._call(
            "POST",
            UPDATE,
            what,
            json={
                "advertiser_id": self.options.advertiser_id,
                "custom_audience_id": audience_id,
                "action": action,
                "file_paths": [path],
            },
        )

    def _upload(self, hashes: list[str], what: str) -> str:
        content = file_bytes(hashes)
        data = self._call(
            "POST",
            UPLOAD,
            f"uploading the file for {what}",
            data={
                "advertiser_id": self.options.advertiser_id,
                "calculate_type": self.options.identifier,
                "file_signature": hashlib.md5(content).hexdigest(),
            },
            files={"file": ("audience.txt", content, "text/plain")},
        )
        return str(data["file_path"])

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        code = body_code(response)
        try:
            message = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            message = response.text
        message = redact(message).replace(self.token, "<token>")
        if response.is_success and code == 0:
            data = response.json().get("data")
            return data if isinstance(data, dict) else {}
        if code in AUTH_CODES:
            raise DestinationAuthError(
                f"{self.name}: TikTok refused the Access-Token while {what} (code {code}: {message}). "
                f"Update the password of connection {self.options.connection!r} and re-run."
            )
        if code == NOT_HASHED:
            raise BatchRejected(f"{self.name}: TikTok says the file for {what} holds unhashed PII (code {code})")
        if response.status_code == 400 and code is None:
            raise BatchRejected(f"{self.name}: TikTok rejected {what} (HTTP 400: {message})")
        raise DestinationError(
            f"{self.name}: TikTok refused {what} (HTTP {response.status_code}, code {code}: {message}); not retried "
            f"(TikTok also refuses any action that leaves an audience under {MIN_AUDIENCE} members)"
        )

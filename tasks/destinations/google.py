"""Google Customer Match through the Data Manager API (``audienceMembers:ingest`` / ``:remove``).

Why it looks like this:
- From 2026-04-01 the Google Ads API takes no new Customer Match adopters (destinations.md), so this
  client speaks the Data Manager API: JSON over HTTPS with an OAuth bearer token, no developer token.
- Email, phone and names are SHA-256 hex of Google-normalized values (Gmail dot and +suffix rules,
  E.164 phone *with* '+'); region and postal code go unhashed. The normalizers are Google's own and
  are checked against the official vectors in the tests.
- Consent is sent per request, so it is computed from the members' own consent records
  (``ads_opt_in``) and never written as a constant: a batch in which any member lacks ads consent is a
  bug upstream and raises before anything is sent. Removal needs no consent (withdrawing it is the
  main reason to remove someone), so ``:remove`` carries none.
- An address identifier is only sent when given name, family name, region *and* postal code are all
  known: the Data Manager reference marks all four as required.
- ``remote_ref`` is the JSON of the hashed identifiers sent, because a later removal must send the same
  identifiers even after the CRM row changed or was deleted.
- Google processes uploads asynchronously and only reports aggregate counts, so after an ingest the
  client polls ``requestStatus:retrieve`` for at most ``poll_timeout`` seconds: FAILED fails the batch,
  PARTIAL_SUCCESS counts the failed records as ``unmatched``, anything still PROCESSING is accepted.
- Throttling is HTTP 429 / RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` ``retryDelay``: that delay
  is used as is; without one, ``retry.base_delay`` doubles per consecutive throttle.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, ClassVar, Literal

import httpx
import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from tasks.destinations.audience import (
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationError,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import AdPlatformClient, DoublingThrottle, PlatformOptions, split_refs
from tasks.normalize import hashing

log = logging.getLogger(__name__)

AccountType = Literal["GOOGLE_ADS", "DISPLAY_VIDEO_ADVERTISER", "DISPLAY_VIDEO_PARTNER", "DATA_PARTNER"]
MAX_MEMBERS = 10_000
INGEST = "/v1/audienceMembers:ingest"
REMOVE = "/v1/audienceMembers:remove"
STATUS = "/v1/requestStatus:retrieve"
FINAL_STATUSES = frozenset({"SUCCESS", "PARTIAL_SUCCESS", "FAILED"})
# 400 reasons that no split of the batch can fix: the destination itself is misconfigured
CONFIG_REASONS = frozenset(
    {
        "INVALID_USER_LIST_ID",
        "INVALID_USER_LIST_TYPE",
        "INVALID_DESTINATION",
        "TERMS_AND_CONDITIONS_NOT_SIGNED",
        "DATA_PARTNER_USER_LIST_MUTATE_NOT_ALLOWED",
        "PERMISSION_DENIED",
    }
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_REGION = re.compile(r"^[A-Z]{2}$")


class GoogleOptions(PlatformOptions):
    connection: str = "google_ads_default"  # Airflow connection; the OAuth access token is its password
    operating_account_id: str
    account_type: AccountType = "GOOGLE_ADS"
    user_list_id: str | None = None  # the Customer Match list (productDestinationId)
    base_url: str = "https://datamanager.googleapis.com"
    validate_only: bool = False  # Google validates but applies nothing; members are reported as failed
    poll_interval: float = Field(2.0, gt=0)  # seconds between requestStatus:retrieve calls
    poll_timeout: float = Field(10.0, ge=0)  # stop polling after this long (0 = do not poll)

    @field_validator("operating_account_id")
    @classmethod
    def _digits(cls, value: str) -> str:
        digits = value.replace("-", "").strip()
        if not digits.isdigit():
            raise ValueError("operating_account_id must be the account number ('123-456-7890' or '1234567890')")
        return digits


def google_error(response: httpx.Response) -> tuple[str, str, list[str]]:
    """(status, message, reasons) of a google.rpc.Status error body; empty strings when there is none."""
    try:
        err = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", response.text, []
    if not isinstance(err, dict):
        return "", response.text, []
    reasons: list[str] = []
    for detail in err.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("reason"):
            reasons.append(str(detail["reason"]))
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("reason"):
                reasons.append(str(violation["reason"]))
    return str(err.get("status", "")), str(err.get("message", "")), reasons


def retry_delay(response: httpx.Response) -> float | None:
    """``retryDelay`` of a google.rpc.RetryInfo detail ("2s", "0.5s"), else a Retry-After header."""
    try:
        details = (response.json().get("error") or {}).get("details") or []
    except (ValueError, AttributeError):
        details = []
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def throttled(response: httpx.Response) -> bool:
    """429, or RESOURCE_EXHAUSTED in a google.rpc.Status body."""
    return response.status_code == 429 or (
        response.status_code >= 400 and google_error(response)[0] == "RESOURCE_EXHAUSTED"
    )


def _granted(value: object) -> bool:
    """Only a real boolean true is consent: NA, None, "yes" or 1 are not a consent record."""
    return value is True or (isinstance(value, np.bool_) and bool(value))


def consent_from(members: pd.DataFrame) -> dict[str, str]:
    """Request-level consent from the members' records: granted only if every member granted ads consent."""
    refused = sum(not _granted(v) for v in members["ads_opt_in"].tolist())
    if refused:
        raise ValueError(
            f"{refused} of {len(members)} members in this Google batch have no recorded ads consent "
            "(ads_opt_in is not true); Customer Match consent is per request, so nothing was sent"
        )
    return {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}


def identifiers(members: pd.DataFrame) -> list[dict[str, Any]]:
    """Per member, the hashed identifiers Google takes (empty dict when none is usable)."""
    email = hashing.hash_once(hashing.google_email(members["email"])).tolist()
    phone = hashing.hash_once(hashing.google_phone(members["phone"])).tolist()
    given = hashing.hash_once(hashing.google_name(members["first_name"])).tolist()
    family = hashing.hash_once(hashing.google_name(members["last_name"])).tolist()
    region = members["country"].astype("string").str.strip().str.upper().tolist()
    postal = members["postal_code"].astype("string").str.strip().tolist()
    out: list[dict[str, Any]] = []
    for i in range(len(members)):
        ids: dict[str, Any] = {}
        if _text(email[i]):
            ids["emailAddress"] = email[i]
        if _text(phone[i]):
            ids["phoneNumber"] = phone[i]
        if _text(given[i]) and _text(family[i]) and _text(postal[i]) and _REGION.match(_text(region[i])):
            ids["address"] = {
                "givenName": given[i],
                "familyName": family[i],
                "regionCode": region[i],
                "postalCode": postal[i],
            }
        out.append(ids)
    return out


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def as_member(ids: dict[str, Any]) -> dict[str, Any]:
    return {"userData": {"userIdentifiers": [{k: v} for k, v in ids.items()]}}


@register("google_customer_match")
class GoogleCustomerMatch(AdPlatformClient):
    Options = GoogleOptions
    capabilities: ClassVar[Capabilities] = Capabilities(
        purpose="ad_personalization", max_batch=MAX_MEMBERS, needs=("email", "phone")
    )

    platform = "google"
    secret = "OAuth access token"
    options: GoogleOptions

    def __init__(self, name: str, options: GoogleOptions) -> None:
        super().__init__(name, options)  # self.sleep: retry waits and the waits between status polls
        self.last_request_id: str | None = None

    def _connect(self, token: str) -> HttpClient:
        return self._http_client(
            self.options.base_url,
            headers={"Authorization": f"Bearer {token}"},
            throttle=DoublingThrottle(self.options.retry.policy(), throttled, retry_delay),
        )

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        audience = self.options.user_list_id or known_id
        if not audience:
            raise DestinationError(
                f"{self.name}: the Data Manager API cannot create Customer Match lists; create a customer list "
                f"for segment {segment!r} in Google Ads and set user_list_id in destinations.yaml"
            )
        return audience

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(members))
        consent = consent_from(members)  # raises before anything is sent
        accepted, failed = self._split(members)
        if not accepted:
            return BatchResult(failed=failed)
        body = {
            **self._envelope(audience_id, accepted),
            "consent": consent,
            "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
        }
        return self._send(INGEST, body, accepted, failed, batch)

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        self._check_size(len(refs))
        invalid = "remote_ref is not the hashed identifiers this destination recorded"
        accepted, failed = split_refs(refs, _parse_ref, invalid)
        if not accepted:
            return BatchResult(failed=failed)
        return self._send(REMOVE, self._envelope(audience_id, accepted), accepted, failed, batch)

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("Google Customer Match has no replace; the sync engine sends adds and removes")

    # --- internals -----------------------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n > MAX_MEMBERS:
            raise ValueError(f"{self.name}: {n} members in one batch; Data Manager takes at most {MAX_MEMBERS}")

    def _split(self, members: pd.DataFrame) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        accepted: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}
        for key, ids in zip(members["customer_key"].astype(str), identifiers(members), strict=True):
            if ids:
                accepted[key] = ids
            else:
                failed[key] = "no usable email, phone or full address after Google normalization"
        return accepted, failed

    def _envelope(self, audience_id: str, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "destinations": [
                {
                    "operatingAccount": {
                        "accountType": self.options.account_type,
                        "accountId": self.options.operating_account_id,
                    },
                    "productDestinationId": audience_id,
                }
            ],
            "audienceMembers": [as_member(ids) for ids in members.values()],
            "encoding": "HEX",
            "validateOnly": self.options.validate_only,
        }

    def _send(
        self,
        path: str,
        body: dict[str, Any],
        members: dict[str, dict[str, Any]],
        failed: dict[str, str],
        batch: BatchRef,
    ) -> BatchResult:
        what = f"{path.rsplit(':', 1)[-1]} batch {batch.seq}/{batch.batches}"
        response = self.http.request("POST", path, json=body)
        self._raise_for(response, what)
        if self.options.validate_only:
            reason = "validate_only: Google validated the request and applied nothing"
            return BatchResult(failed={**failed, **dict.fromkeys(members, reason)})
        request_id = response.json().get("requestId")
        self.last_request_id = str(request_id) if request_id else None
        refs = {key: json.dumps(ids, separators=(",", ":")) for key, ids in members.items()}
        status, errors = self._poll(self.last_request_id)
        if status == "FAILED":
            reason = "Google failed the request: " + (", ".join(sorted(errors)) or "no reason given")
            return BatchResult(failed={**failed, **dict.fromkeys(members, reason)})
        return BatchResult(accepted=refs, failed=failed, unmatched=sum(errors.values()))

    def _poll(self, request_id: str | None) -> tuple[str, dict[str, int]]:
        """(final or last seen status, error reason -> records) from requestStatus:retrieve."""
        if not request_id or self.options.poll_timeout <= 0:
            return "NOT_POLLED", {}
        deadline = time.monotonic() + self.options.poll_timeout
        status = "PROCESSING"
        while True:
            response = self.http.request("GET", STATUS, params={"requestId": request_id})
            if response.is_success:
                per_destination = (response.json().get("requestStatusPerDestination") or [{}])[0]
                status = str(per_destination.get("requestStatus") or "REQUEST_STATUS_UNKNOWN")
                if status in FINAL_STATUSES:
                    errors: dict[str, int] = {}
                    for count in (per_destination.get("errorInfo") or {}).get("errorCounts") or []:
                        reason = str(count.get("reason", "PROCESSING_ERROR_REASON_UNSPECIFIED"))
                        errors[reason] = errors.get(reason, 0) + int(count.get("recordCount") or 0)
                    return status, errors
            elif response.status_code != 404:  # 404 right after ingest: not visible yet, keep polling
                log.warning("%s: request status unavailable (HTTP %d)", self.name, response.status_code)
                return status, {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info(
                    "%s: request %s still %s after %.1f s", self.name, request_id, status, self.options.poll_timeout
                )
                return status, {}
            self.sleep(min(self.options.poll_interval, remaining))

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        status, message, reasons = google_error(response)
        detail = f"HTTP {response.status_code} {status} {'/'.join(reasons)}: {redact(message)}".strip()
        if response.status_code == 400 and not set(reasons) & CONFIG_REASONS:
            raise BatchRejected(f"{self.name}: Google rejected {what} ({detail})")
        raise DestinationError(
            f"{self.name}: Google refused {what} ({detail}); check operating_account_id, account_type and "
            "user_list_id in destinations.yaml and that the Customer Match terms are accepted"
        )


def _parse_ref(ref: object) -> dict[str, Any] | None:
    if not isinstance(ref, str):
        return None
    try:
        ids = json.loads(ref)
    except ValueError:
        return None
    if not isinstance(ids, dict) or not ids or not set(ids) <= {"emailAddress", "phoneNumber", "address"}:
        return None
    return ids

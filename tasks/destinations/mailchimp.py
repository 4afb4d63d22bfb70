"""Mailchimp audiences: one configured list (audience), one tag (static segment) per segment.

Contract facts that shaped this client (destinations.md, "Mailchimp"):
- The API root carries the data centre: ``https://<dc>.api.mailchimp.com/3.0`` where ``<dc>`` is the API
  key's suffix after ``-``; auth is HTTP Basic with any user name and the key as password.
- A member's key is the subscriber hash, MD5 of the lower-cased address; addresses in answers are
  matched back to customers through that hash, never by raw string comparison.
- Batch subscribe ``POST /lists/{id}`` and tag updates take at most 500 members (``max_batch``) and
  report failures per address inside a 200 (``errors[]``), so one bad address never fails a batch.
- Never resubscribe: the batch subscribe is sent with ``update_existing: false`` so no existing
  member's status can change (an existing address answers ``ERROR_CONTACT_EXISTS`` and is then only
  tagged). Addresses the list holds as unsubscribed or cleaned are read once per run
  (``GET /lists/{id}/members?status=...``) and reported ``suppressed`` without being sent at all;
  answers in "compliance state" / "permanently deleted" wording are ``suppressed`` too, not ``failed``.
  Consequence of ``update_existing: false``: names of existing members are not refreshed.
- Mailchimp throttles with a plain 429 (10 concurrent connections per key) and no rate header, so the
  client backs off exponentially over consecutive 429s (HttpClient's BACKOFF) instead of trusting a header.
- Merge fields are per list: only FNAME/LNAME/PHONE exist by default, an unknown tag fails the address,
  and the default ADDRESS field is all-or-nothing (street, city, state, zip), so city/country are sent
  only when mapped to merge fields the list has (``merge_fields`` option).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pandas as pd
from pydantic import Field, field_validator

from tasks.destinations.audience import (
    MEMBER_COLUMNS,
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationAuthError,
    DestinationError,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import PlatformClient, PlatformOptions, error_detail, header_wait, text
from tasks.normalize.hashing import mailchimp_subscriber_hash

log = logging.getLogger(__name__)

DEFAULT_MERGE_FIELDS = {"first_name": "FNAME", "last_name": "LNAME", "phone": "PHONE"}
SUPPRESSED_STATUSES = ("unsubscribed", "cleaned")
PAGE = 1000  # Mailchimp's maximum ``count``
# Wording of per-address errors that mean "this person must not be (re)subscribed".
_SUPPRESSION_WORDS = ("compliance state", "unsubscribe", "cleaned", "permanently deleted", "forgotten")
# Wording of per-address errors on tag removal that mean "nothing to remove".
_ABSENT_WORDS = ("not a list member", "not belong", "not found", "does not exist", "not subscribed")


class MailchimpOptions(PlatformOptions):
    connection: str = "mailchimp_default"  # Airflow connection: password = API key (``<key>-<dc>``)
    list_id: str = Field(min_length=1)  # the audience holding the tags
    base_url: str | None = None  # default https://<dc>.api.mailchimp.com/3.0 from the key's suffix
    merge_fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MERGE_FIELDS))  # column -> tag
    prefetch_suppressions: bool = True  # read unsubscribed/cleaned addresses once per run

    @field_validator("merge_fields")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        for column in value:
            if column not in MEMBER_COLUMNS or column in ("customer_key", "email"):
                raise ValueError(f"merge_fields: {column!r} is not a member column ({', '.join(MEMBER_COLUMNS[2:])})")
        return value


@dataclass
class _Address:
    email: str
    keys: list[str] = field(default_factory=list)
    merge_fields: dict[str, str] = field(default_factory=dict)


def _hashes(emails: list[str]) -> list[str | None]:
    """Subscriber hashes (MD5 of the trimmed, lower-cased address); None where the value is not an email."""
    if not emails:
        return []
    return [text(h) for h in mailchimp_subscriber_hash(pd.Series(emails, dtype="object")).tolist()]


@register("mailchimp")
class Mailchimp(PlatformClient):
    capabilities: ClassVar[Capabilities] = Capabilities(purpose="email_marketing", max_batch=500)
    Options = MailchimpOptions

    secret = "Mailchimp API key"
    options: MailchimpOptions

    def __init__(self, name: str, options: MailchimpOptions) -> None:
        super().__init__(name, options)
        self._suppressed: dict[str, str] | None = None  # subscriber hash -> Mailchimp status

    # --- plumbing ------------------------------------------------------------------------------
    def _connect(self, key: str) -> HttpClient:
        return self._http_client(
            self.options.base_url or self._default_base_url(key),
            headers={"Accept": "application/json"},
            auth=("audiences", key),
            throttle=header_wait(None),  # a plain 429 without a wait: exponential backoff
        )

    def _default_base_url(self, key: str) -> str:
        _, sep, dc = key.rpartition("-")
        if not sep or not dc.isalnum():
            raise DestinationAuthError(
                f"{self.label}: the API key has no data-centre suffix (it should end in '-us21' or similar); "
                "set options.base_url or fix the key in the connection"
            )
        return f"https://{dc}.api.mailchimp.com/3.0"

    def _call(self, method: str, path: str, *, batch: bool = False, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else {}
        detail = _problem(response)
        if response.status_code == 400 and batch:
            raise BatchRejected(f"{self.label}: Mailchimp refused the batch (HTTP 400 on {method} {path}): {detail}")
        hint = " (check options.list_id, or whether the tag was deleted)" if response.status_code == 404 else ""
        raise DestinationError(f"{self.label}: HTTP {response.status_code} on {method} {path}{hint}: {detail}")

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if known_id:
            return known_id
        path = f"/lists/{self.options.list_id}/segments"
        offset = 0
        while True:
            page = self._call("GET", path, params={"type": "static", "count": PAGE, "offset": offset})
            rows = page.get("segments") or []
            for row in rows:
                if row.get("name") == segment:
                    return str(row["id"])
            offset += len(rows)
            if not rows or offset >= int(page.get("total_items") or 0):
                break
        created = self._call("POST", path, json={"name": segment, "static_segment": []})
        log.info("%s: created tag for segment %s (id %s)", self.label, segment, created.get("id"))
        return str(created["id"])

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        addresses = self._addresses(members, "email", result)
        suppressed = self._suppressions()
        for key in [h for h in addresses if h in suppressed]:
            for customer in addresses.pop(key).keys:
                result.suppressed[customer] = f"Mailchimp holds this address as {suppressed[key]}; never resubscribed"
        if not addresses:
            return result
        payload = {
            "members": [
                {"email_address": a.email, "status": "subscribed", "merge_fields": a.merge_fields}
                for a in addresses.values()
            ],
            "update_existing": False,  # never changes an existing member's status: cannot resubscribe anyone
            "sync_tags": False,
        }
        answer = self._call("POST", f"/lists/{self.options.list_id}", json=payload, batch=True)
        errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
        for hashed, error in zip(_hashes([str(e.get("email_address", "")) for e in errors]), errors, strict=True):
            key = hashed or ""
            address = addresses.get(key)
            if address is None or error.get("error_code") == "ERROR_CONTACT_EXISTS":
                continue  # an existing member keeps its status and is only tagged below
            del addresses[key]
            message = str(error.get("error", ""))
            reason = f"Mailchimp: {redact(message)}"
            if any(word in message.lower() for word in _SUPPRESSION_WORDS):
                suppressed[key] = "compliance state"
                result.suppressed.update(dict.fromkeys(address.keys, reason))
            else:
                result.failed.update(dict.fromkeys(address.keys, reason))
        if not addresses:
            return result
        answer = self._call(
            "POST",
            f"/lists/{self.options.list_id}/segments/{audience_id}",
            json={"members_to_add": [a.email for a in addresses.values()]},
            batch=True,
        )
        for error in answer.get("errors") or []:
            emails = [str(e) for e in error.get("email_addresses") or []]
            for hashed in _hashes(emails):
                address = addresses.pop(hashed or "", None)
                if address is not None:
                    reason = f"Mailchimp did not tag the address: {redact(str(error.get('error', '')))}"
                    result.failed.update(dict.fromkeys(address.keys, reason))
        for address in addresses.values():
            result.accepted.update(dict.fromkeys(address.keys, address.email))
        return result

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        addresses = self._addresses(refs, "remote_ref", result)
        if not addresses:
            return result
        answer = self._call(
            "POST",
            f"/lists/{self.options.list_id}/segments/{audience_id}",
            json={"members_to_remove": [a.email for a in addresses.values()]},
            batch=True,
        )
        for error in answer.get("errors") or []:
            message = str(error.get("error", ""))
            absent = any(word in message.lower() for word in _ABSENT_WORDS)
            for hashed in _hashes([str(e) for e in error.get("email_addresses") or []]):
                address = addresses.pop(hashed or "", None)
                if address is None:
                    continue
                if absent:  # not in the list at all: nothing left to remove
                    result.accepted.update(dict.fromkeys(address.keys, address.email))
                else:
                    result.failed.update(dict.fromkeys(address.keys, f"Mailchimp: {redact(message)}"))
        for address in addresses.values():
            result.accepted.update(dict.fromkeys(address.keys, address.email))
        return result

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("mailchimp has no replace; the sync engine sends adds and removes")

    # --- helpers -------------------------------------------------------------------------------
    def _addresses(self, frame: pd.DataFrame, column: str, result: BatchResult) -> dict[str, _Address]:
        """Rows grouped by subscriber hash (two customers may share an address: sent once, reported for both)."""
        rows: list[tuple[str, str, dict[str, str]]] = []
        for record in frame.to_dict("records"):
            customer = str(record["customer_key"])
            email = text(record.get(column))
            if email is None:
                result.failed[customer] = f"no {'email address' if column == 'email' else 'remote_ref'} to send"
                continue
            merge = {}
            if column == "email":
                for source, tag in self.options.merge_fields.items():
                    value = text(record.get(source))
                    if value is not None:
                        merge[tag] = value
            rows.append((customer, email, merge))
        grouped: dict[str, _Address] = {}
        for key, (customer, email, merge) in zip(_hashes([r[1] for r in rows]), rows, strict=True):
            if key is None:
                result.failed[customer] = "not a valid email address; not sent"
                continue
            address = grouped.setdefault(key, _Address(email, merge_fields=merge))
            address.keys.append(customer)
        return grouped

    def _suppressions(self) -> dict[str, str]:
        if self._suppressed is None:
            found: dict[str, str] = {}
            if self.options.prefetch_suppressions:
                path = f"/lists/{self.options.list_id}/members"
                for status in SUPPRESSED_STATUSES:
                    offset = 0
                    while True:
                        page = self._call(
                            "GET",
                            path,
                            params={
                                "status": status,
                                "count": PAGE,
                                "offset": offset,
                                "fields": "members.email_address,members.status,total_items",
                            },
                        )
                        rows = page.get("members") or []
                        emails = [str(r.get("email_address", "")) for r in rows]
                        found.update({h: status for h in _hashes(emails) if h is not None})
                        offset += len(rows)
                        if not rows or offset >= int(page.get("total_items") or 0):
                            break
            self._suppressed = found
        return self._suppressed


def _problem(response: httpx.Response) -> str:
    """Mailchimp errors are problem documents; keep title/detail/field errors, redacted."""

    def describe(body: Any) -> str:
        if not isinstance(body, dict):
            return str(body)
        parts = [str(body.get("title", "")), str(body.get("detail", ""))]
        for error in body.get("errors") or []:
            if isinstance(error, dict):
                parts.append(f"{error.get('field', '')}: {error.get('message', '')}")
        return "; ".join(p for p in parts if p)

    return error_detail(response, describe)

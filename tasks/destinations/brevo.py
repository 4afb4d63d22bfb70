"""Brevo (ex-Sendinblue) audiences: one contact list per segment, or one configured list.

Contract facts that shaped this client (destinations.md, "Brevo"):
- Auth is an ``api-key`` header; errors are ``{code, message}``; list ids are integers.
- Adding to / removing from a list takes at most 150 emails per call (``max_batch``) and answers per
  address (``success`` / ``failure``) inside a 201, so one bad address never fails the batch.
- Adding to a list needs an existing contact, so each batch is first upserted with the asynchronous
  import (``POST /contacts/import`` with ``jsonBody`` and the list in ``listIds``, which is mandatory;
  ``emptyContactsAttributes: false`` so a missing value never erases one Brevo holds), polled
  (``GET /processes/{id}``) until ``completed``; then the list add itemises the outcome. The import
  never sends ``emailBlacklist``, so it cannot change anyone's opt-out.
- Opt-out is ``emailBlacklisted: true`` on the contact. Addresses the list add reports under ``failure``
  are looked up one by one (``GET /contacts/{email}``, only for failures): blacklisted -> ``suppressed``;
  already on the list -> accepted; unknown (the import skipped an invalid address) -> ``failed``.
  Those lookups carry an address in the URL path, so errors and retry logs from this client are redacted.
- On removal, ``failure`` means Brevo has nothing to remove (not on the list, or no such contact).
- Throttling is 429 with ``x-sib-ratelimit-reset`` in seconds. The SMS attribute needs the country code:
  phones are sent E.164 (``e164_phone``), and attribute names are configurable (``attributes``) because
  Brevo ignores attributes an account does not define.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

import httpx
import pandas as pd
from pydantic import Field, field_validator, model_validator

from tasks.destinations.audience import (
    MEMBER_COLUMNS,
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
from tasks.destinations.platform import PlatformClient, PollingOptions, error_detail, header_wait, text, unique_emails
from tasks.normalize.hashing import e164_phone

log = logging.getLogger(__name__)

LIST_CALL = 150
LIST_PAGE = 50
DEFAULT_ATTRIBUTES = {"first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS"}


class BrevoOptions(PollingOptions):
    connection: str = "brevo_default"  # Airflow connection: password = API key (xkeysib-...)
    list_id: int | None = None  # one fixed list for every segment
    folder_id: int | None = None  # else a list per segment, created in this folder when missing
    base_url: str | None = None  # default https://api.brevo.com/v3
    attributes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))  # column -> attribute

    @field_validator("attributes")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        for column in value:
            if column not in MEMBER_COLUMNS or column in ("customer_key", "email"):
                raise ValueError(f"attributes: {column!r} is not a member column ({', '.join(MEMBER_COLUMNS[2:])})")
        return value

    @model_validator(mode="after")
    def _where_lists_live(self) -> BrevoOptions:
        if self.list_id is None and self.folder_id is None:
            raise ValueError("set list_id (one list for every segment) or folder_id (a list per segment)")
        return self


class _RedactingHttpClient(HttpClient):
    """HttpClient whose retry log lines are redacted: a contact lookup has the address in its path."""

    def _backoff(self, attempt: int, platform_wait: float | None, reason: str) -> None:
        super()._backoff(attempt, platform_wait, redact(reason, limit=1000))


@dataclass
class _Contact:
    email: str
    keys: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)


def _errors(response: httpx.Response) -> str:
    def describe(body: Any) -> str:
        if isinstance(body, dict) and ("code" in body or "message" in body):
            return f"{body.get('code', '')}: {body.get('message', '')}"
        return str(body)

    return error_detail(response, describe)


@register("brevo")
class Brevo(PlatformClient):
    capabilities: ClassVar[Capabilities] = Capabilities(purpose="email_marketing", max_batch=LIST_CALL)
    Options = BrevoOptions

    secret = "Brevo API key"
    options: BrevoOptions

    # --- plumbing ------------------------------------------------------------------------------
    def _connect(self, key: str) -> HttpClient:
        return self._http_client(
            self.options.base_url or "https://api.brevo.com/v3",
            headers={"api-key": key, "Accept": "application/json"},
            throttle=header_wait("x-sib-ratelimit-reset"),
            client=_RedactingHttpClient,
        )

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except (DestinationAuthError, DestinationUnavailable) as exc:
            raise type(exc)(redact(str(exc), limit=2000)) from None

    def _call(self, method: str, path: str, *, batch: bool = False, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else {}
        self._fail(response, f"{method} {path}", batch)

    def _fail(self, response: httpx.Response, where: str, batch: bool) -> NoReturn:
        detail, where = _errors(response), redact(where)
        if batch and response.status_code == 400:
            raise BatchRejected(f"{self.label}: Brevo refused the batch (HTTP 400 on {where}): {detail}")
        raise DestinationError(f"{self.label}: HTTP {response.status_code} on {where}: {detail}")

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if known_id:
            return known_id
        if self.options.list_id is not None:
            return str(self.options.list_id)
        offset = 0
        while True:
            page = self._call("GET", "/contacts/lists", params={"limit": LIST_PAGE, "offset": offset})
            rows = page.get("lists") or []
            for row in rows:
                if row.get("name") == segment:
                    return str(row["id"])
            offset += len(rows)
            if not rows or offset >= int(page.get("count") or 0):
                break
        created = self._call("POST", "/contacts/lists", json={"name": segment, "folderId": self.options.folder_id})
        log.info("%s: created list for segment %s (id %s)", self.label, segment, created.get("id"))
        return str(created["id"])

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        list_id = self._list_id(audience_id)
        contacts = self._contacts(members, result)
        if not contacts:
            return result
        process = self._call(
            "POST",
            "/contacts/import",
            batch=True,
            json={
                "jsonBody": [{"email": c.email, "attributes": c.attributes} for c in contacts.values()],
                "listIds": [list_id],
                "updateExistingContacts": True,
                "emptyContactsAttributes": False,
                "disableNotification": True,
            },
        )
        status = self._wait(int(process["processId"]))
        if status != "completed":
            for contact in contacts.values():
                result.failed.update(dict.fromkeys(contact.keys, f"Brevo import ended {status!r}; retried next run"))
            return result
        answer = self._call(
            "POST", f"/contacts/lists/{list_id}/contacts/add", batch=True, json={"emails": list(contacts)}
        )
        outcome = answer.get("contacts") or {}
        for email in (str(e).strip().lower() for e in outcome.get("failure") or []):
            refused = contacts.pop(email, None)
            if refused is None:
                continue
            state, reason = self._explain(email, list_id)
            if state == "accepted":
                result.accepted.update(dict.fromkeys(refused.keys, refused.email))
            elif state == "suppressed":
                result.suppressed.update(dict.fromkeys(refused.keys, reason))
            else:
                result.failed.update(dict.fromkeys(refused.keys, reason))
        for contact in contacts.values():  # in success (or absent from both: Brevo listed it in the import)
            result.accepted.update(dict.fromkeys(contact.keys, contact.email))
        return result

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        list_id = self._list_id(audience_id)
        by_email: dict[str, list[str]] = {}
        for record in refs.to_dict("records"):
            customer, ref = str(record["customer_key"]), text(record.get("remote_ref"))
            if ref is None:
                result.failed[customer] = "no remote_ref (email) to remove"
            else:
                by_email.setdefault(ref.lower(), []).append(customer)
        if by_email:
            self._call(
                "POST", f"/contacts/lists/{list_id}/contacts/remove", batch=True, json={"emails": list(by_email)}
            )
            for email, customers in by_email.items():  # success, or failure = nothing left to remove
                result.accepted.update(dict.fromkeys(customers, email))
        return result

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("brevo has no replace; the sync engine sends adds and removes")

    # --- helpers -------------------------------------------------------------------------------
    def _list_id(self, audience_id: str) -> int:
        try:
            return int(audience_id)
        except ValueError:
            raise DestinationError(f"{self.label}: Brevo list ids are integers, got {audience_id!r}") from None

    def _contacts(self, members: pd.DataFrame, result: BatchResult) -> dict[str, _Contact]:
        phones = e164_phone(members["phone"]).tolist() if "phone" in members and len(members) else []
        contacts: dict[str, _Contact] = {}
        for i, record, key, customers in unique_emails(members, result):
            attributes = {}
            for column, attribute in self.options.attributes.items():
                value = text(phones[i]) if column == "phone" and phones else text(record.get(column))
                if value is not None:
                    attributes[attribute] = value
            contacts[key] = _Contact(key, customers, attributes)
        return contacts

    def _wait(self, process_id: int) -> str:
        """Poll the import process until it is no longer queued / in process; too long -> unavailable."""
        return self._poll_job(
            lambda: str(self._call("GET", f"/processes/{process_id}").get("status", "")),
            lambda status: status in ("queued", "in_process"),
            lambda status: (
                f"import process {process_id} still {status!r} after {self.options.poll_timeout:.0f} s; "
                "the next run sends the batch again (imports are upserts)"
            ),
        )

    def _explain(self, email: str, list_id: int) -> tuple[str, str]:
        """Why the list add failed for one address: ('suppressed'|'failed'|'accepted', reason)."""
        response = self._send("GET", f"/contacts/{quote(email, safe='@')}")
        if response.status_code == 404:
            return "failed", "Brevo has no contact for this address (the import skipped it as invalid)"
        if not response.is_success:
            self._fail(response, "GET /contacts/<email>", batch=False)
        contact = response.json()
        if contact.get("emailBlacklisted"):
            return "suppressed", "Brevo: blacklisted for email (opted out)"
        if list_id in (contact.get("listIds") or []):
            return "accepted", ""
        return "failed", "Brevo did not add the contact to the list"

"""SendGrid Marketing Campaigns audiences: one contact list per segment, found or created by name.

Contract facts that shaped this client (destinations.md, "SendGrid"):
- ``Authorization: Bearer <key>``; errors are ``{"errors": [{"field", "message"}]}``.
- The upsert ``PUT /v3/marketing/contacts`` takes up to 30,000 contacts / 6 MB (``max_batch``) with the
  list id, and answers 202 with a ``job_id``; the import is polled (``GET /v3/marketing/contacts/imports/{id}``)
  until it leaves ``pending``. A ``failed`` job fails the batch's members; an ``errored`` job (counts only,
  no itemisation) makes the client look the batch up by email to find which contacts did not land.
- The upsert validates first and refuses the whole request (400) over one bad address, naming it as
  ``contacts[i].email``. When every error names a contact, those members are ``failed`` and the rest are
  sent again once; any other 400 is ``BatchRejected`` for the engine to split.
- Removing needs contact ids: look emails up 100 at a time (``POST /v3/marketing/contacts/search/emails``;
  a 404 there means "none of these exist"), then ``DELETE /v3/marketing/lists/{id}/contacts?contact_ids=``.
  So ``remote_ref`` is the email. An address SendGrid no longer holds counts as removed.
- The upsert never reports suppressions: SendGrid applies them at send time from its suppression lists
  (global unsubscribes, bounces, spam reports). Those lists are read once per run and their addresses are
  ``suppressed`` and not sent, so an unsubscribed person is not put back on a list by this system.
- Throttling is 429 with ``X-RateLimit-Reset`` as a unix time: the wait is that time minus now.
- Contact fields sent: first_name, last_name, city, country, postal_code. The phone is not sent: in the
  current API ``phone_number_id`` is a contact *identifier* that merges contacts, not a plain field.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NoReturn

import httpx
import pandas as pd

from tasks.destinations.audience import (
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationError,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import PlatformClient, PollingOptions, chunks, header_wait, text, unique_emails

log = logging.getLogger(__name__)

SEARCH = 100  # emails per contact search
SUPPRESSION_PAGE = 500
FIELDS = ("first_name", "last_name", "city", "country", "postal_code")  # member column = SendGrid field
_CONTACT_INDEX = re.compile(r"^contacts\[(\d+)\]")
SuppressionList = Literal["unsubscribes", "bounces", "spam_reports"]


class SendGridOptions(PollingOptions):
    connection: str = "sendgrid_default"  # Airflow connection: password = API key (SG....)
    base_url: str | None = None  # default https://api.sendgrid.com
    suppression_lists: tuple[SuppressionList, ...] = ("unsubscribes", "bounces", "spam_reports")  # read once a run


@dataclass
class _Contact:
    email: str
    keys: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _error_items(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    items = body.get("errors") if isinstance(body, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _errors(response: httpx.Response) -> str:
    items = _error_items(response)
    if not items:
        return redact(response.text)
    return redact("; ".join(f"{i.get('field') or '-'}: {i.get('message', '')}" for i in items))


@register("sendgrid")
class SendGrid(PlatformClient):
    capabilities: ClassVar[Capabilities] = Capabilities(purpose="email_marketing", max_batch=30_000)
    Options = SendGridOptions

    secret = "SendGrid API key"
    options: SendGridOptions

    def __init__(self, name: str, options: SendGridOptions) -> None:
        super().__init__(name, options)
        self._suppressed: dict[str, str] | None = None  # lower-cased email -> suppression list

    # --- plumbing ------------------------------------------------------------------------------
    def _connect(self, key: str) -> HttpClient:
        return self._http_client(
            self.options.base_url or "https://api.sendgrid.com",
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            throttle=header_wait("X-RateLimit-Reset", clock=time.time),  # a unix time: the wait is reset - now
        )

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def _call(self, method: str, path: str, *, batch: bool = False, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else {}
        self._fail(response, f"{method} {path}", batch)

    def _fail(self, response: httpx.Response, where: str, batch: bool) -> NoReturn:
        detail = _errors(response)
        if batch and response.status_code in (400, 413):
            raise BatchRejected(
                f"{self.label}: SendGrid refused the batch (HTTP {response.status_code} on {where}): {detail}"
            )
        raise DestinationError(f"{self.label}: HTTP {response.status_code} on {where}: {detail}")

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if known_id:
            return known_id
        token: str | None = None
        while True:
            params = {"page_size": "1000"} | ({"page_token": token} if token else {})
            page = self._call("GET", "/v3/marketing/lists", params=params)
            for row in page.get("result") or []:
                if row.get("name") == segment:
                    return str(row["id"])
            link = (page.get("_metadata") or {}).get("next")
            token = httpx.URL(link).params.get("page_token") if link else None
            if not token:
                break
        created = self._call("POST", "/v3/marketing/lists", json={"name": segment})
        log.info("%s: created list for segment %s (id %s)", self.label, segment, created.get("id"))
        return str(created["id"])

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        contacts = self._contacts(members, result)
        suppressed = self._suppressions()
        for email in [e for e in contacts if e in suppressed]:
            reason = f"SendGrid suppression list: {suppressed[email]}"
            result.suppressed.update(dict.fromkeys(contacts.pop(email).keys, reason))
        if not contacts:
            return result
        job_id = self._upsert(audience_id, contacts, result)
        if job_id is None:
            return result
        status = self._wait(job_id)
        if status.get("status") == "failed":
            reason = "SendGrid import job failed; retried next run"
            for contact in contacts.values():
                result.failed.update(dict.fromkeys(contact.keys, reason))
            return result
        errored = int((status.get("results") or {}).get("errored_count") or 0)
        if errored or status.get("status") == "errored":
            landed = self._search(list(contacts))
            for email in list(contacts):
                if audience_id not in (landed.get(email) or {}).get("list_ids", []):
                    reason = (
                        f"SendGrid import job reported {errored} errored contact(s) and this one is not on the list"
                    )
                    result.failed.update(dict.fromkeys(contacts.pop(email).keys, reason))
        for contact in contacts.values():
            result.accepted.update(dict.fromkeys(contact.keys, contact.email))
        return result

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        by_email: dict[str, list[str]] = {}
        for record in refs.to_dict("records"):
            customer, ref = str(record["customer_key"]), text(record.get("remote_ref"))
            if ref is None:
                result.failed[customer] = "no remote_ref (email) to remove"
            else:
                by_email.setdefault(ref.lower(), []).append(customer)
        for emails in chunks(list(by_email), SEARCH):
            found = self._search(emails)
            ids = [str(c["id"]) for c in found.values() if audience_id in (c.get("list_ids") or [])]
            if ids:
                self._call(
                    "DELETE", f"/v3/marketing/lists/{audience_id}/contacts", params={"contact_ids": ",".join(ids)}
                )
            for email in emails:  # removed now, or SendGrid no longer has it on the list at all
                result.accepted.update(dict.fromkeys(by_email[email], email))
        return result

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("sendgrid has no replace; the sync engine sends adds and removes")

    # --- helpers -------------------------------------------------------------------------------
    def _contacts(self, members: pd.DataFrame, result: BatchResult) -> dict[str, _Contact]:
        contacts: dict[str, _Contact] = {}
        for _, record, key, customers in unique_emails(members, result):
            values = {name: v for name in FIELDS if (v := text(record.get(name))) is not None}
            contacts[key] = _Contact(key, customers, values)
        return contacts

    def _upsert(self, audience_id: str, contacts: dict[str, _Contact], result: BatchResult) -> str | None:
        """PUT the contacts; a 400 naming contacts drops those (failed) and sends the rest once more."""
        for attempt in (1, 2):
            order = list(contacts.values())
            body = {"list_ids": [audience_id], "contacts": [{"email": c.email, **c.fields} for c in order]}
            response = self._send("PUT", "/v3/marketing/contacts", json=body)
            if response.is_success:
                return str(response.json()["job_id"])
            items = _error_items(response)
            indexes = [_CONTACT_INDEX.match(str(i.get("field") or "")) for i in items]
            if attempt == 2 or response.status_code != 400 or not items or not all(indexes):
                self._fail(response, "PUT /v3/marketing/contacts", batch=True)
            for item, match in zip(items, indexes, strict=True):
                assert match is not None
                index = int(match.group(1))
                if index < len(order) and order[index].email in contacts:
                    reason = f"SendGrid refused the contact: {redact(str(item.get('message', '')))}"
                    result.failed.update(dict.fromkeys(contacts.pop(order[index].email).keys, reason))
            if not contacts:
                return None
        return None

    def _wait(self, job_id: str) -> dict[str, Any]:
        """Poll the import until it leaves ``pending``; too long -> DestinationUnavailable."""
        status: dict[str, Any] = self._poll_job(
            lambda: self._call("GET", f"/v3/marketing/contacts/imports/{job_id}"),
            lambda state: state.get("status") == "pending",
            lambda state: (
                f"import job {job_id} still pending after {self.options.poll_timeout:.0f} s; "
                "the next run sends the batch again (the upsert is idempotent)"
            ),
        )
        return status

    def _search(self, emails: list[str]) -> dict[str, dict[str, Any]]:
        """Lower-cased email -> contact (id, list_ids, ...) for those SendGrid holds; 100 per request."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(emails, SEARCH):
            response = self._send("POST", "/v3/marketing/contacts/search/emails", json={"emails": chunk})
            if response.status_code == 404:  # none of these addresses exists
                continue
            if not response.is_success:
                self._fail(response, "POST /v3/marketing/contacts/search/emails", batch=False)
            for email, entry in (response.json().get("result") or {}).items():
                contact = entry.get("contact") if isinstance(entry, dict) else None
                if isinstance(contact, dict):
                    found[str(email).strip().lower()] = contact
        return found

    def _suppressions(self) -> dict[str, str]:
        """Addresses on SendGrid's suppression lists, read once per client (one sync run)."""
        if self._suppressed is None:
            found: dict[str, str] = {}
            for kind in self.options.suppression_lists:
                offset = 0
                while True:
                    rows = self._call(
                        "GET", f"/v3/suppression/{kind}", params={"limit": SUPPRESSION_PAGE, "offset": offset}
                    )
                    if not isinstance(rows, list):
                        break
                    for row in rows:
                        email = text(row.get("email")) if isinstance(row, dict) else None
                        if email is not None:
                            found.setdefault(email.lower(), kind)
                    if len(rows) < SUPPRESSION_PAGE:
                        break
                    offset += len(rows)
            self._suppressed = found
        return self._suppressed

"""SendGrid Marketing Contacts v3 as a local contract server (destinations.md, "SendGrid").

What it enforces, because the client must cope with each on the real platform:
- ``Authorization: Bearer <key>``; anything else is a 401 with SendGrid's error shape
  ``{"errors": [{"field": ..., "message": ...}]}`` (every error here uses it).
- Upsert ``PUT /v3/marketing/contacts`` takes at most 30,000 contacts and 6 MB. It validates the
  request first: a contact whose email is invalid (syntax, or in ``invalid_emails``) fails the whole
  request with a 400 naming ``contacts[i].email``. Otherwise it answers 202 ``{job_id}``; the job is
  ``pending`` for ``poll_steps`` polls of ``GET /v3/marketing/contacts/imports/{id}``, then ``completed``
  or, when some contacts failed while processing (``job_errors``), ``errored`` with counts only.
- Removing from a list needs contact ids: ``POST /v3/marketing/contacts/search/emails`` (at most 100
  emails; a 404 when none is found, per-address ``error`` entries otherwise), then
  ``DELETE /v3/marketing/lists/{id}/contacts?contact_ids=a,b`` -> 202 ``{job_id}``.
- Suppressions live outside the contact lists: ``GET /v3/suppression/{unsubscribes|bounces|spam_reports}``
  (``limit``/``offset`` pages of ``[{email, created}]``) list the addresses SendGrid will not email;
  the server fills them from ``unsubscribes``, ``bounces`` and ``spam_reports``.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tasks.sandbox.server import ContractServer, Request, Response

MAX_CONTACTS = 30_000
MAX_BYTES = 6 * 1024 * 1024
MAX_SEARCH = 100
MAX_LIST_PAGE = 1000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
FIELDS = ("first_name", "last_name", "city", "country", "postal_code", "address_line_1", "state_province_region")


def errors(status: int, *items: tuple[str | None, str]) -> Response:
    return Response(status, {"errors": [{"field": f, "message": m} for f, m in items]})


@dataclass
class ContactList:
    id: str
    name: str
    contacts: set[str] = field(default_factory=set)  # contact ids


@dataclass
class Job:
    id: str
    kind: str  # upsert | delete
    contacts: list[dict[str, Any]]
    list_ids: list[str]
    polls: int = 0
    status: str = "pending"
    created: int = 0
    updated: int = 0
    errored: int = 0


class SendGridServer(ContractServer):
    platform = "sendgrid"
    # a client's base_url is the server's url (the real one is https://api.sendgrid.com)

    def __init__(
        self, api_key: str = "SG.sandbox-key.0123456789abcdefghijklmnopqrstuvwxyz", poll_steps: int = 2
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.poll_steps = poll_steps  # polls an upsert job stays pending
        self.stuck = False  # jobs never finish (poll-timeout tests)
        self.lists: dict[str, ContactList] = {}
        self.contacts: dict[str, dict[str, Any]] = {}  # contact id -> contact (email lower-cased)
        self.jobs: dict[str, Job] = {}
        self.invalid_emails: set[str] = set()  # upsert rejects the whole request (400 contacts[i].email)
        self.job_errors: set[str] = set()  # the async job fails these contacts (counted, not itemised)
        self.unsubscribes: set[str] = set()  # global unsubscribes
        self.bounces: set[str] = set()
        self.spam_reports: set[str] = set()
        self._ids = itertools.count(1)
        self.route("GET", r"/v3/marketing/lists", self._get_lists)
        self.route("POST", r"/v3/marketing/lists", self._create_list)
        self.route("PUT", r"/v3/marketing/contacts", self._upsert)
        self.route("GET", r"/v3/marketing/contacts/imports/(?P<job>[^/]+)", self._get_job)
        self.route("POST", r"/v3/marketing/contacts/search/emails", self._search)
        self.route("DELETE", r"/v3/marketing/lists/(?P<list>[^/]+)/contacts", self._remove)
        self.route("GET", r"/v3/suppression/(?P<kind>unsubscribes|bounces|spam_reports)", self._suppressions)

    # --- helpers for tests -------------------------------------------------------------------
    def list_emails(self, list_id: str) -> set[str]:
        return {self.contacts[c]["email"] for c in self.lists[list_id].contacts}

    def list_named(self, name: str) -> ContactList | None:
        return next((lst for lst in self.lists.values() if lst.name == name), None)

    def contact(self, email: str) -> dict[str, Any] | None:
        cid = self._by_email(email)
        return self.contacts[cid] if cid else None

    def throttle(self, times: int = 1, reset_in: int = 1, path: str = "") -> None:
        """SendGrid's 429: ``too many requests`` and ``X-RateLimit-Reset`` as a unix time."""
        resp = errors(429, (None, "too many requests"))
        reset = str(int(time.time()) + reset_in)
        limits = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
        self.fail_next(resp, times, path, limits)

    # --- contract ----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Any) -> None:
        def guarded(req: Request, m: re.Match[str]) -> Response:
            header = req.header("Authorization") or ""
            if not header:
                return errors(401, (None, "authorization required"))
            if header != f"Bearer {self.api_key}":
                return errors(401, (None, "The provided authorization grant is invalid, expired, or revoked"))
            body: Any = None
            if req.method in ("POST", "PUT"):
                if len(req.body) > MAX_BYTES:
                    return errors(413, (None, "request body is larger than 6MB"))
                try:
                    body = req.json()
                except ValueError:
                    return errors(400, (None, "invalid JSON"))
                if not isinstance(body, dict):
                    return errors(400, (None, "request body must be an object"))
            result: Response = handler(req, m, body)
            return result

        super().route(method, pattern, guarded)

    def _get_lists(self, req: Request, m: re.Match[str], body: None) -> Response:
        size, offset = int(_param(req, "page_size") or 100), int(_param(req, "page_token") or 0)
        if not 1 <= size <= MAX_LIST_PAGE:
            return errors(400, ("page_size", f"page_size must be between 1 and {MAX_LIST_PAGE}"))
        rows = list(self.lists.values())
        page = rows[offset : offset + size]
        meta: dict[str, Any] = {"self": f"{self.url}/v3/marketing/lists?page_size={size}", "count": len(rows)}
        if offset + size < len(rows):
            meta["next"] = f"{self.url}/v3/marketing/lists?page_size={size}&page_token={offset + size}"
        result = [{"id": r.id, "name": r.name, "contact_count": len(r.contacts)} for r in page]
        return Response(200, {"result": result, "_metadata": meta})

    def _create_list(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return errors(400, ("name", "name is required"))
        if self.list_named(name) is not None:
            return errors(400, ("name", "list name already exists"))
        lst = ContactList(str(uuid.uuid4()), name)
        self.lists[lst.id] = lst
        return Response(201, {"id": lst.id, "name": lst.name, "contact_count": 0})

    def _upsert(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            return errors(400, ("contacts", "contacts is required and must contain at least one contact"))
        if len(contacts) > MAX_CONTACTS:
            return errors(400, ("contacts", f"contacts may contain at most {MAX_CONTACTS} items"))
        list_ids = body.get("list_ids") or []
        if not isinstance(list_ids, list):
            return errors(400, ("list_ids", "list_ids must be an array of list ids"))
        missing = [(f"list_ids[{i}]", "list does not exist") for i, lid in enumerate(list_ids) if lid not in self.lists]
        if missing:
            return errors(404, *missing)
        invalid = {e.lower() for e in self.invalid_emails}
        problems: list[tuple[str | None, str]] = []
        for i, contact in enumerate(contacts):
            email = contact.get("email") if isinstance(contact, dict) else None
            if not isinstance(email, str) or not _EMAIL.match(email.strip()) or email.strip().lower() in invalid:
                problems.append((f"contacts[{i}].email", "Email address is invalid"))
            elif set(contact) - {"email", *FIELDS, "custom_fields"}:
                problems.append((f"contacts[{i}]", f"unknown fields {sorted(set(contact) - {'email', *FIELDS})}"))
        if problems:
            return errors(400, *problems)
        job = Job(str(uuid.uuid4()), "upsert", contacts, list_ids)
        self.jobs[job.id] = job
        return Response(202, {"job_id": job.id})

    def _get_job(self, req: Request, m: re.Match[str], body: None) -> Response:
        job = self.jobs.get(m["job"])
        if job is None:
            return errors(404, (None, "job not found"))
        if job.status == "pending" and not self.stuck:
            job.polls += 1
            if job.polls >= self.poll_steps:
                self._run(job)
        results: dict[str, Any] = {
            "requested_count": len(job.contacts),
            "created_count": job.created,
            "updated_count": job.updated,
            "deleted_count": 0,
            "errored_count": job.errored,
        }
        if job.errored:
            results["errors_url"] = f"{self.url}/v3/marketing/contacts/imports/{job.id}/errors"
        return Response(200, {"id": job.id, "status": job.status, "job_type": job.kind, "results": results})

    def _search(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        emails = body.get("emails")
        if not isinstance(emails, list) or not emails or not all(isinstance(e, str) for e in emails):
            return errors(400, ("emails", "emails must be a non-empty array of strings"))
        if len(emails) > MAX_SEARCH:
            return errors(400, ("emails", f"emails may contain at most {MAX_SEARCH} items"))
        result: dict[str, Any] = {}
        found = 0
        for email in emails:
            cid = self._by_email(email)
            if cid is None:
                result[email] = {"error": "contact not found"}
            else:
                found += 1
                result[email] = {"contact": dict(self.contacts[cid])}
        if not found:
            return errors(404, (None, "No contacts found"))
        return Response(200, {"result": result})

    def _remove(self, req: Request, m: re.Match[str], body: None) -> Response:
        lst = self.lists.get(m["list"])
        if lst is None:
            return errors(404, (None, "list not found"))
        ids = [i for i in (_param(req, "contact_ids") or "").split(",") if i]
        if not ids:
            return errors(400, ("contact_ids", "contact_ids is required"))
        for cid in ids:
            if cid in lst.contacts:
                lst.contacts.discard(cid)
                self.contacts[cid]["list_ids"].remove(lst.id)
                self.removed[self.contacts[cid]["email"]] += 1
        job = Job(str(uuid.uuid4()), "delete", [], [lst.id], status="completed")
        self.jobs[job.id] = job
        return Response(202, {"job_id": job.id})

    def _suppressions(self, req: Request, m: re.Match[str], body: None) -> Response:
        limit, offset = int(_param(req, "limit") or 500), int(_param(req, "offset") or 0)
        if limit > 500:
            return errors(400, ("limit", "limit must be at most 500"))
        kind = {"unsubscribes": self.unsubscribes, "bounces": self.bounces, "spam_reports": self.spam_reports}
        rows = sorted(kind[m["kind"]])[offset : offset + limit]
        return Response(200, [{"email": e, "created": 1767225600} for e in rows])

    # --- state ---------------------------------------------------------------------------------
    def _by_email(self, email: str) -> str | None:
        email = email.strip().lower()
        return next((cid for cid, c in self.contacts.items() if c["email"] == email), None)

    def _run(self, job: Job) -> None:
        failing = {e.lower() for e in self.job_errors}
        for contact in job.contacts:
            email = contact["email"].strip().lower()
            if email in failing:
                job.errored += 1
                continue
            cid = self._by_email(email)
            if cid is None:
                cid = str(uuid.uuid4())
                self.contacts[cid] = {"id": cid, "email": email, "list_ids": []}
                job.created += 1
            else:
                job.updated += 1
            stored = self.contacts[cid]
            stored.update({k: v for k, v in contact.items() if k != "email"})
            for lid in job.list_ids:
                if cid not in self.lists[lid].contacts:
                    self.lists[lid].contacts.add(cid)
                    stored["list_ids"].append(lid)
                    self.added[email] += 1
        job.status = "errored" if job.errored else "completed"
        if job.errored == len(job.contacts):
            job.status = "failed"


def _param(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    return values[0] if values else None

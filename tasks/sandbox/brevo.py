"""Brevo (ex-Sendinblue) v3 contacts API as a local contract server (destinations.md, "Brevo").

What it enforces, because the client must cope with each on the real platform:
- An ``api-key: <key>`` header; a missing or wrong key is a 401 ``{code: "unauthorized", message}``,
  and every other error uses the same ``{code, message}`` shape.
- ``POST /v3/contacts/lists/{id}/contacts/add`` and ``.../remove`` take at most 150 emails and answer
  201 ``{contacts: {success: [...], failure: [...]}}`` (partial failure is per address inside a 2xx).
- ``POST /v3/contacts/import`` (``jsonBody`` and ``listIds``, which is mandatory) answers 202
  ``{processId}``; ``GET /v3/processes/{id}`` moves ``queued -> in_process -> completed`` as it is polled
  (``poll_steps``). Addresses in ``invalid_emails`` (or not an email) are skipped by the import.
- Opt-out is ``emailBlacklisted: true`` on the contact (``blacklisted``). Modelling choice (the docs
  do not say): an import updates a blacklisted contact's attributes but never lists it or clears the
  flag, and adding it to a list reports it under ``failure``. ``GET /v3/contacts/{email}`` shows the
  flag and ``listIds`` (404 ``document_not_found`` for an unknown address).
- Lists are created in a folder (``folderId`` is required and must exist); list ids are integers.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tasks.sandbox.server import ContractServer, Request, Response

MAX_LIST_CALL = 150
MAX_LIST_PAGE = 50
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_SMS = re.compile(r"^(\+|00)[1-9]\d{6,14}$")


def error(status: int, code: str, message: str) -> Response:
    return Response(status, {"code": code, "message": message})


@dataclass
class Contact:
    id: int
    email: str
    attributes: dict[str, Any] = field(default_factory=dict)
    email_blacklisted: bool = False
    list_ids: set[int] = field(default_factory=set)

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "emailBlacklisted": self.email_blacklisted,
            "smsBlacklisted": False,
            "listIds": sorted(self.list_ids),
            "attributes": dict(self.attributes),
        }


@dataclass
class ContactList:
    id: int
    name: str
    folder_id: int
    contacts: set[str] = field(default_factory=set)  # emails


@dataclass
class Process:
    id: int
    rows: list[dict[str, Any]]
    list_ids: list[int]
    update_existing: bool
    blacklist: bool
    polls: int = 0
    status: str = "queued"


class BrevoServer(ContractServer):
    platform = "brevo"
    base_path = "/v3"  # a client's base_url: {url}/v3 (the real one is https://api.brevo.com/v3)

    def __init__(
        self, api_key: str = "xkeysib-0123456789abcdef-sandbox", poll_steps: int = 2, folder_ids: tuple[int, ...] = (1,)
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.poll_steps = poll_steps  # polls an import needs before it is completed
        self.stuck = False  # imports never finish (poll-timeout tests)
        self.folders = set(folder_ids)
        self.contacts: dict[str, Contact] = {}  # lower-cased email -> contact
        self.lists: dict[int, ContactList] = {}
        self.processes: dict[int, Process] = {}
        self.invalid_emails: set[str] = set()  # the import skips these
        self._ids = itertools.count(1)
        self.route("GET", r"/v3/contacts/lists", self._get_lists)
        self.route("POST", r"/v3/contacts/lists", self._create_list)
        self.route("POST", r"/v3/contacts/import", self._import)
        self.route("GET", r"/v3/processes/(?P<pid>\d+)", self._get_process)
        self.route("POST", r"/v3/contacts/lists/(?P<list>\d+)/contacts/add", self._add)
        self.route("POST", r"/v3/contacts/lists/(?P<list>\d+)/contacts/remove", self._remove)
        self.route("GET", r"/v3/contacts/(?P<identifier>[^/]+)", self._get_contact)

    # --- helpers for tests -------------------------------------------------------------------
    def create_list(self, name: str, folder_id: int = 1) -> int:
        lst = ContactList(next(self._ids), name, folder_id)
        self.lists[lst.id] = lst
        return lst.id

    def seed(self, email: str, *, blacklisted: bool = False, list_id: int | str | None = None) -> None:
        """An existing contact, e.g. one who opted out (``blacklisted``) or is already on a list."""
        contact = self._upsert(email)
        contact.email_blacklisted = blacklisted
        if list_id is not None:
            self._join(self.lists[int(list_id)], contact)

    def list_emails(self, list_id: int | str) -> set[str]:
        return set(self.lists[int(list_id)].contacts)

    def throttle(self, times: int = 1, reset_in: int = 1, path: str = "") -> None:
        """Brevo's 429: ``too_many_requests`` and ``x-sib-ratelimit-reset`` in seconds."""
        resp = error(429, "too_many_requests", "The expected rate limit is exceeded.")
        limits = {
            "x-sib-ratelimit-limit": "10",
            "x-sib-ratelimit-remaining": "0",
            "x-sib-ratelimit-reset": str(reset_in),
        }
        self.fail_next(resp, times, path, limits)

    # --- contract ----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Any) -> None:
        def guarded(req: Request, m: re.Match[str]) -> Response:
            if (req.header("api-key") or "") != self.api_key:
                return error(401, "unauthorized", "Key not found")
            body: Any = None
            if req.method in ("POST", "PUT"):
                try:
                    body = req.json()
                except ValueError:
                    return error(400, "bad_request", "Input must be a valid JSON object")
                if not isinstance(body, dict):
                    return error(400, "bad_request", "Input must be a valid JSON object")
            result: Response = handler(req, m, body)
            return result

        super().route(method, pattern, guarded)

    def _get_lists(self, req: Request, m: re.Match[str], body: None) -> Response:
        limit, offset = int(_param(req, "limit") or 10), int(_param(req, "offset") or 0)
        if not 0 < limit <= MAX_LIST_PAGE:
            return error(400, "out_of_range", f"limit should be between 1 and {MAX_LIST_PAGE}")
        rows = list(self.lists.values())
        page = [
            {"id": r.id, "name": r.name, "folderId": r.folder_id, "uniqueSubscribers": len(r.contacts)}
            for r in rows[offset : offset + limit]
        ]
        return Response(200, {"lists": page, "count": len(rows)})

    def _create_list(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        name, folder = body.get("name"), body.get("folderId")
        if not isinstance(name, str) or not name:
            return error(400, "missing_parameter", "name is missing")
        if not isinstance(folder, int):
            return error(400, "missing_parameter", "folderId is missing")
        if folder not in self.folders:
            return error(404, "document_not_found", "Folder ID does not exist")
        return Response(201, {"id": self.create_list(name, folder)})

    def _import(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        rows = body.get("jsonBody")
        if not isinstance(rows, list) or not rows:
            return error(400, "missing_parameter", "fileUrl, fileBody or jsonBody is required")
        list_ids = body.get("listIds")
        if not isinstance(list_ids, list) or not list_ids:
            return error(400, "missing_parameter", "listIds is mandatory if newList is not defined")
        for lid in list_ids:
            if not isinstance(lid, int) or lid not in self.lists:
                return error(400, "invalid_parameter", f"List ID {lid} does not exist")
        for row in rows:
            if not isinstance(row, dict) or not (row.get("email") or (row.get("attributes") or {}).get("SMS")):
                return error(400, "invalid_parameter", "each jsonBody entry needs an email or an SMS attribute")
            if not isinstance(row.get("attributes", {}), dict):
                return error(400, "invalid_parameter", "attributes must be an object")
        process = Process(
            next(self._ids),
            rows,
            list_ids,
            bool(body.get("updateExistingContacts", True)),
            bool(body.get("emailBlacklist")),
        )
        self.processes[process.id] = process
        return Response(202, {"processId": process.id})

    def _get_process(self, req: Request, m: re.Match[str], body: None) -> Response:
        process = self.processes.get(int(m["pid"]))
        if process is None:
            return error(404, "document_not_found", "Process does not exist")
        if process.status != "completed" and not self.stuck:
            process.polls += 1
            if process.polls >= self.poll_steps:
                self._run(process)
            else:
                process.status = "in_process"
        return Response(200, {"id": process.id, "status": process.status, "name": "import_contacts"})

    def _emails(self, m: re.Match[str], body: dict[str, Any]) -> tuple[ContactList, list[str]] | Response:
        lst = self.lists.get(int(m["list"]))
        if lst is None:
            return error(404, "document_not_found", "List ID does not exist")
        emails = body.get("emails")
        if not isinstance(emails, list) or not emails or not all(isinstance(e, str) for e in emails):
            return error(400, "invalid_parameter", "emails must be a non-empty array of strings")
        if len(emails) > MAX_LIST_CALL:
            return error(400, "out_of_range", f"You can add or remove up to {MAX_LIST_CALL} contacts per request")
        return lst, emails

    def _add(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        parsed = self._emails(m, body)
        if isinstance(parsed, Response):
            return parsed
        lst, emails = parsed
        success, failure = [], []
        for email in emails:
            contact = self.contacts.get(email.strip().lower())
            if contact is None or contact.email_blacklisted:
                failure.append(email)
            else:
                self._join(lst, contact)
                success.append(email)
        return Response(201, {"contacts": {"success": success, "failure": failure}})

    def _remove(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        parsed = self._emails(m, body)
        if isinstance(parsed, Response):
            return parsed
        lst, emails = parsed
        success, failure = [], []
        for email in emails:
            contact = self.contacts.get(email.strip().lower())
            if contact is None or contact.email not in lst.contacts:
                failure.append(email)
            else:
                lst.contacts.discard(contact.email)
                contact.list_ids.discard(lst.id)
                self.removed[contact.email] += 1
                success.append(email)
        return Response(201, {"contacts": {"success": success, "failure": failure}})

    def _get_contact(self, req: Request, m: re.Match[str], body: None) -> Response:
        contact = self.contacts.get(unquote(m["identifier"]).strip().lower())
        if contact is None:
            return error(404, "document_not_found", "Contact does not exist")
        return Response(200, contact.doc())

    # --- state ---------------------------------------------------------------------------------
    def _upsert(self, email: str) -> Contact:
        key = email.strip().lower()
        if key not in self.contacts:
            self.contacts[key] = Contact(next(self._ids), key)
        return self.contacts[key]

    def _join(self, lst: ContactList, contact: Contact) -> None:
        if contact.email not in lst.contacts:
            lst.contacts.add(contact.email)
            contact.list_ids.add(lst.id)
            self.added[contact.email] += 1

    def _run(self, process: Process) -> None:
        invalid = {e.lower() for e in self.invalid_emails}
        for row in process.rows:
            email = str(row.get("email") or "").strip().lower()
            if not email or email in invalid or not _EMAIL.match(email):
                continue  # skipped: Brevo reports these only in the import's report
            existing = email in self.contacts
            contact = self._upsert(email)
            if not existing or process.update_existing:
                attributes = dict(row.get("attributes") or {})
                if "SMS" in attributes and not _SMS.match(str(attributes["SMS"])):
                    del attributes["SMS"]
                contact.attributes.update(attributes)
            if process.blacklist:
                contact.email_blacklisted = True
            if not contact.email_blacklisted:
                for lid in process.list_ids:
                    self._join(self.lists[lid], contact)
        process.status = "completed"


def _param(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    return values[0] if values else None

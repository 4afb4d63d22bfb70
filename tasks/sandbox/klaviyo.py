"""Klaviyo's JSON:API as a local contract server (destinations.md, "Klaviyo").

What it enforces, because the client must cope with each on the real platform:
- ``Authorization: Klaviyo-API-Key <private key>`` (401 ``not_authenticated`` otherwise) and a
  ``revision: YYYY-MM-DD`` header on every request (400 without it).
- Request bodies are JSON:API documents sent as ``application/vnd.api+json`` (415 otherwise), and
  every error is ``{errors: [{id, status, code, title, detail, source}]}``.
- Bulk import ``POST /api/profile-bulk-import-jobs`` takes at most 10,000 profiles and 5 MB; it answers
  202 with a job that moves ``queued -> processing -> complete`` as it is polled (``poll_steps``).
  Bad profiles (``invalid_emails``, a phone not in E.164) fail alone and are listed at
  ``.../import-errors`` with the profile as sent (``original_payload``); the rest are upserted by email.
- List membership ``POST|DELETE /api/lists/{id}/relationships/profiles`` takes Klaviyo profile ids, at
  most 1,000 per call, answers 204, and never changes consent.
- ``GET /api/profiles?filter=any(email,[...])`` (100 per page) with
  ``additional-fields[profile]=subscriptions`` reports email-marketing consent: addresses in
  ``unsubscribed`` read ``UNSUBSCRIBED``, in ``bounced`` carry a ``HARD_BOUNCE`` suppression,
  in ``subscribed`` read ``SUBSCRIBED``; everybody else ``NEVER_SUBSCRIBED`` (imports grant no consent).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tasks.sandbox.server import ContractServer, Request, Response

MAX_IMPORT = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_RELATIONSHIPS = 1_000
MAX_PAGE = 100
JSON_API = "application/vnd.api+json"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_FILTER = re.compile(r"^(?P<op>any|equals)\((?P<field>email|phone_number|name),(?P<value>.*)\)$")


def error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> Response:
    item: dict[str, Any] = {"id": str(uuid.uuid4()), "status": status, "code": code, "title": title, "detail": detail}
    if pointer is not None:
        item["source"] = {"pointer": pointer}
    return Response(status, {"errors": [item]}, content_type=JSON_API)


def ok(status: int, body: Any) -> Response:
    return Response(status, body, content_type=JSON_API)


@dataclass
class KlaviyoList:
    id: str
    name: str
    profiles: set[str] = field(default_factory=set)


@dataclass
class Job:
    id: str
    profiles: list[dict[str, Any]]
    list_ids: list[str]
    polls: int = 0
    status: str = "queued"
    errors: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0


class KlaviyoServer(ContractServer):
    platform = "klaviyo"
    # a client's base_url is the server's url (the real one is https://a.klaviyo.com)

    def __init__(self, api_key: str = "pk_0123456789abcdef0123456789abcdef01", poll_steps: int = 2) -> None:
        super().__init__()
        self.api_key = api_key
        self.poll_steps = poll_steps  # polls a job needs before it is complete
        self.stuck = False  # jobs never finish (poll-timeout tests)
        self.profiles: dict[str, dict[str, Any]] = {}  # profile id -> attributes
        self.lists: dict[str, KlaviyoList] = {}
        self.jobs: dict[str, Job] = {}
        self.invalid_emails: set[str] = set()  # the import fails these profiles ("Invalid email address")
        self.unsubscribed: set[str] = set()  # email marketing consent UNSUBSCRIBED
        self.bounced: set[str] = set()  # email marketing suppression HARD_BOUNCE
        self.subscribed: set[str] = set()  # email marketing consent SUBSCRIBED
        self._ids = itertools.count(1)
        self.route("GET", r"/api/lists/?", self._get_lists)
        self.route("POST", r"/api/lists/?", self._create_list)
        self.route("POST", r"/api/profile-bulk-import-jobs/?", self._create_job)
        self.route("GET", r"/api/profile-bulk-import-jobs/(?P<job>[^/]+)/?", self._get_job)
        self.route("GET", r"/api/profile-bulk-import-jobs/(?P<job>[^/]+)/import-errors/?", self._get_errors)
        self.route("GET", r"/api/profiles/?", self._get_profiles)
        self.route("POST", r"/api/lists/(?P<list>[^/]+)/relationships/profiles/?", self._add_to_list)
        self.route("DELETE", r"/api/lists/(?P<list>[^/]+)/relationships/profiles/?", self._remove_from_list)

    # --- helpers for tests -------------------------------------------------------------------
    def create_list(self, name: str) -> str:
        lst = KlaviyoList(self._new_id("L"), name)
        self.lists[lst.id] = lst
        return lst.id

    def list_emails(self, list_id: str) -> set[str]:
        return {self.profiles[p]["email"] for p in self.lists[list_id].profiles if self.profiles[p].get("email")}

    def profile_id(self, email: str) -> str | None:
        return self._by_email(email)

    def throttle(self, times: int = 1, retry_after: int = 1, path: str = "") -> None:
        """Klaviyo's 429: JSON:API ``throttled`` error and ``Retry-After`` in whole seconds."""
        resp = error(
            429,
            "throttled",
            "Request was throttled.",
            f"Request was throttled. Expected available in {retry_after} second.",
        )
        self.fail_next(resp, times, path, {"Retry-After": str(retry_after)})

    # --- contract ----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Any) -> None:
        def guarded(req: Request, m: re.Match[str]) -> Response:
            if (req.header("Authorization") or "") != f"Klaviyo-API-Key {self.api_key}":
                return error(
                    401,
                    "not_authenticated",
                    "Authentication credentials were not provided.",
                    "Missing or invalid private key.",
                )
            if not _REVISION.match(req.header("revision") or ""):
                return error(400, "invalid", "Invalid input.", "The 'revision' header is required (YYYY-MM-DD).")
            body: Any = None
            if req.method in ("POST", "PATCH", "DELETE"):
                content_type = (req.header("Content-Type") or "").split(";")[0].strip()
                if content_type != JSON_API:
                    return error(415, "unsupported_media_type", "Unsupported media type.", f"Use {JSON_API}.")
                try:
                    body = req.json()
                except ValueError:
                    return error(400, "parse_error", "Malformed request.", "JSON parse error")
                if not isinstance(body, dict) or "data" not in body:
                    return error(400, "invalid", "Invalid input.", "'data' is a required property", "/data")
            result: Response = handler(req, m, body)
            return result

        super().route(method, pattern, guarded)

    def _get_lists(self, req: Request, m: re.Match[str], body: None) -> Response:
        rows = list(self.lists.values())
        flt = _param(req, "filter")
        if flt:
            parsed = _FILTER.match(flt)
            if not parsed or parsed["field"] != "name" or parsed["op"] != "equals":
                return error(400, "invalid", "Invalid input.", f"Invalid filter: {flt}", None)
            wanted = json.loads(parsed["value"])
            rows = [r for r in rows if r.name == wanted]
        data = [{"type": "list", "id": r.id, "attributes": {"name": r.name}} for r in rows]
        return ok(200, {"data": data, "links": {"self": f"{self.url}/api/lists/", "next": None}})

    def _create_list(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        data = body["data"]
        name = (data.get("attributes") or {}).get("name") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("type") != "list" or not isinstance(name, str) or not name:
            return error(400, "invalid", "Invalid input.", "A list needs type 'list' and a name", "/data")
        list_id = self.create_list(name)
        return ok(201, {"data": {"type": "list", "id": list_id, "attributes": {"name": name}}})

    def _create_job(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        if len(req.body) > MAX_IMPORT_BYTES:
            return error(413, "payload_too_large", "Payload too large.", "Bulk import payloads are limited to 5 MB.")
        data = body["data"]
        if not isinstance(data, dict) or data.get("type") != "profile-bulk-import-job":
            return error(400, "invalid", "Invalid input.", "type must be 'profile-bulk-import-job'", "/data/type")
        profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data")
        if not isinstance(profiles, list) or not profiles:
            return error(
                400, "invalid", "Invalid input.", "profiles.data must be a non-empty array", "/data/attributes/profiles"
            )
        if len(profiles) > MAX_IMPORT:
            return error(
                400,
                "invalid",
                "Invalid input.",
                f"profiles.data may contain at most {MAX_IMPORT} profiles",
                "/data/attributes/profiles/data",
            )
        for i, profile in enumerate(profiles):
            attrs = profile.get("attributes") if isinstance(profile, dict) else None
            pointer = f"/data/attributes/profiles/data/{i}"
            if not isinstance(attrs, dict) or profile.get("type") != "profile":
                return error(
                    400, "invalid", "Invalid input.", "each profile needs type 'profile' and attributes", pointer
                )
            if not any(attrs.get(k) for k in ("email", "phone_number", "external_id")):
                return error(
                    400, "invalid", "Invalid input.", "a profile needs an email, phone_number or external_id", pointer
                )
        lists = (((data.get("relationships") or {}).get("lists") or {}).get("data")) or []
        list_ids = [str(item.get("id")) for item in lists if isinstance(item, dict)]
        for list_id in list_ids:
            if list_id not in self.lists:
                return error(
                    404, "not_found", "Not found.", f"List {list_id} does not exist.", "/data/relationships/lists"
                )
        job = Job(self._new_id("J"), profiles, list_ids)
        self.jobs[job.id] = job
        return ok(202, {"data": self._job_doc(job)})

    def _get_job(self, req: Request, m: re.Match[str], body: None) -> Response:
        job = self.jobs.get(m["job"])
        if job is None:
            return error(404, "not_found", "Not found.", "No such job.")
        if not self.stuck and job.status != "complete":
            job.polls += 1
            if job.polls >= self.poll_steps:
                self._run(job)
            else:
                job.status = "processing"
        return ok(200, {"data": self._job_doc(job)})

    def _get_errors(self, req: Request, m: re.Match[str], body: None) -> Response:
        job = self.jobs.get(m["job"])
        if job is None:
            return error(404, "not_found", "Not found.", "No such job.")
        size, offset = _page(req)
        if size > MAX_PAGE:
            return error(400, "invalid", "Invalid input.", f"page[size] must be at most {MAX_PAGE}")
        rows = job.errors[offset : offset + size]
        nxt = None
        if offset + size < len(job.errors):
            nxt = f"{self.url}/api/profile-bulk-import-jobs/{job.id}/import-errors/?" + urlencode(
                {"page[size]": size, "page[cursor]": offset + size}
            )
        return ok(200, {"data": rows, "links": {"next": nxt}})

    def _get_profiles(self, req: Request, m: re.Match[str], body: None) -> Response:
        size, offset = _page(req)
        if size > MAX_PAGE:
            return error(400, "invalid", "Invalid input.", f"page[size] must be at most {MAX_PAGE}")
        flt = _param(req, "filter") or ""
        parsed = _FILTER.match(flt)
        if flt and (not parsed or parsed["field"] == "name"):
            return error(400, "invalid", "Invalid input.", "Invalid filter")
        ids = list(self.profiles)
        if parsed:
            try:
                value = json.loads(parsed["value"])
            except ValueError:
                return error(400, "invalid", "Invalid input.", "Invalid filter value")
            wanted = {str(v).lower() for v in (value if parsed["op"] == "any" else [value])}
            if parsed["op"] == "any" and len(wanted) > MAX_PAGE:
                return error(400, "invalid", "Invalid input.", f"any() takes at most {MAX_PAGE} values")
            ids = [p for p in ids if str(self.profiles[p].get(parsed["field"]) or "").lower() in wanted]
        extra = "subscriptions" in (_param(req, "additional-fields[profile]") or "")
        rows = [self._profile_doc(p, extra) for p in ids[offset : offset + size]]
        nxt = None
        if offset + size < len(ids):
            query = {k: v[0] for k, v in req.query.items()}
            query.update({"page[size]": str(size), "page[cursor]": str(offset + size)})
            nxt = f"{self.url}/api/profiles/?" + urlencode(query)
        return ok(200, {"data": rows, "links": {"next": nxt}})

    def _relationship_ids(self, body: dict[str, Any]) -> list[str] | Response:
        data = body["data"]
        if not isinstance(data, list):
            return error(400, "invalid", "Invalid input.", "data must be an array", "/data")
        if len(data) > MAX_RELATIONSHIPS:
            return error(400, "invalid", "Invalid input.", f"At most {MAX_RELATIONSHIPS} profiles per request", "/data")
        ids = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or item.get("type") != "profile" or not isinstance(item.get("id"), str):
                return error(400, "invalid", "Invalid input.", "each item needs type 'profile' and an id", f"/data/{i}")
            if item["id"] not in self.profiles:
                return error(404, "not_found", "Not found.", f"Profile {item['id']} does not exist.", f"/data/{i}/id")
            ids.append(item["id"])
        return ids

    def _add_to_list(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        lst = self.lists.get(m["list"])
        if lst is None:
            return error(404, "not_found", "Not found.", "List does not exist.")
        ids = self._relationship_ids(body)
        if isinstance(ids, Response):
            return ids
        for pid in ids:
            self._join(lst, pid)
        return Response(204, None, content_type=JSON_API)

    def _remove_from_list(self, req: Request, m: re.Match[str], body: dict[str, Any]) -> Response:
        lst = self.lists.get(m["list"])
        if lst is None:
            return error(404, "not_found", "Not found.", "List does not exist.")
        ids = self._relationship_ids(body)
        if isinstance(ids, Response):
            return ids
        for pid in ids:
            if pid in lst.profiles:
                lst.profiles.discard(pid)
                self.removed[self.profiles[pid].get("email") or pid] += 1
        return Response(204, None, content_type=JSON_API)

    # --- state ---------------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):025d}"

    def _by_email(self, email: str) -> str | None:
        email = email.strip().lower()
        return next((pid for pid, a in self.profiles.items() if (a.get("email") or "").lower() == email), None)

    def _join(self, lst: KlaviyoList, pid: str) -> None:
        if pid not in lst.profiles:
            lst.profiles.add(pid)
            self.added[self.profiles[pid].get("email") or pid] += 1

    def _run(self, job: Job) -> None:
        invalid = {e.lower() for e in self.invalid_emails}
        for i, profile in enumerate(job.profiles):
            attrs = dict(profile["attributes"])
            email = str(attrs.get("email") or "").strip().lower()
            phone = attrs.get("phone_number")
            problem = None
            if email and (email in invalid or not _EMAIL.match(email)):
                problem = ("email", "Invalid email address")
            elif phone is not None and not _E164.match(str(phone)):
                problem = ("phone_number", "Invalid phone number format (Example of a valid format: +12345678901)")
            if problem is not None:
                job.errors.append(
                    {
                        "type": "import-error",
                        "id": str(uuid.uuid4()),
                        "attributes": {
                            "code": "invalid",
                            "title": "Invalid input.",
                            "detail": problem[1],
                            "source": {"pointer": f"/data/attributes/profiles/data/{i}/attributes/{problem[0]}"},
                            "original_payload": profile["attributes"],
                        },
                    }
                )
                continue
            pid = self._by_email(email) if email else None
            if pid is None:
                pid = self._new_id("P")
                self.profiles[pid] = {}
            current = self.profiles[pid]
            for key, value in attrs.items():
                if key in ("location", "properties") and isinstance(value, dict):
                    current.setdefault(key, {}).update(value)
                elif value is not None:
                    current[key] = value.lower() if key == "email" else value
            for list_id in job.list_ids:
                self._join(self.lists[list_id], pid)
            job.completed += 1
        job.status = "complete"

    def _job_doc(self, job: Job) -> dict[str, Any]:
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": job.status,
                "total_count": len(job.profiles),
                "completed_count": job.completed,
                "failed_count": len(job.errors),
                "created_at": "2026-11-24T00:00:00+00:00",
                "completed_at": "2026-11-24T00:00:01+00:00" if job.status == "complete" else None,
            },
            "relationships": {"lists": {"data": [{"type": "list", "id": i} for i in job.list_ids]}},
            "links": {"self": f"{self.url}/api/profile-bulk-import-jobs/{job.id}/"},
        }

    def _profile_doc(self, pid: str, subscriptions: bool) -> dict[str, Any]:
        attrs = {k: v for k, v in self.profiles[pid].items()}
        if subscriptions:
            email = str(attrs.get("email") or "")
            consent = "NEVER_SUBSCRIBED"
            if email in self.unsubscribed:
                consent = "UNSUBSCRIBED"
            elif email in self.subscribed:
                consent = "SUBSCRIBED"
            suppression = (
                [{"reason": "HARD_BOUNCE", "timestamp": "2026-01-01T00:00:00+00:00"}] if email in self.bounced else []
            )
            attrs["subscriptions"] = {
                "email": {
                    "marketing": {
                        "can_receive_email_marketing": consent == "SUBSCRIBED" and not suppression,
                        "consent": consent,
                        "suppression": suppression,
                        "list_suppressions": [],
                    }
                }
            }
        return {"type": "profile", "id": pid, "attributes": attrs}


def _param(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    return values[0] if values else None


def _page(req: Request) -> tuple[int, int]:
    try:
        return int(_param(req, "page[size]") or 20), int(_param(req, "page[cursor]") or 0)
    except ValueError:
        return 20, 0

"""Mailchimp Marketing API 3.0 as a local contract server (destinations.md, "Mailchimp").

What it enforces, because the client must cope with each on the real platform:
- HTTP Basic auth whose password is the API key (any user name); a missing or wrong key is a 401
  problem document ``{type, title, status, detail, instance}``, like every other Mailchimp error.
- Batch subscribe ``POST /3.0/lists/{id}`` and static-segment (tag) updates
  ``POST /3.0/lists/{id}/segments/{seg}`` take at most 500 members: more is a 400
  "Maximum allowed member items exceeded". A malformed body is a 400 "Invalid Resource".
- Partial failure is per address inside a 200 (``errors[]`` with ``error_code``), never a 4xx.
- Mailchimp never lets an API call resubscribe an address that unsubscribed, was cleaned, or was
  deleted after unsubscribing ("... is in a compliance state ... and cannot be subscribed"). The server
  answers that way and also records the attempt in ``resubscribe_attempts`` so a test can prove the
  client never even asked. With ``update_existing: false`` an existing member's status is untouched
  and the address comes back as ``ERROR_CONTACT_EXISTS``.
- Members are keyed by the subscriber hash, MD5 of the lower-cased address (computed here with
  hashlib, independently of the client's normalizer, so a wrong client hash cannot agree with itself).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from tasks.sandbox.server import ContractServer, Request, Response

MAX_MEMBERS = 500
MAX_PAGE = 1000
STATUSES = {"subscribed", "unsubscribed", "cleaned", "pending", "transactional"}
DEFAULT_MERGE_FIELDS = ("FNAME", "LNAME", "ADDRESS", "PHONE", "BIRTHDAY")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
ERRORS_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": ERRORS_DOC, "title": title, "status": status, "detail": detail, "instance": "sandbox"}
    body.update(extra)
    return Response(status, body, content_type="application/problem+json")


@dataclass
class Member:
    email_address: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return subscriber_hash(self.email_address)

    def doc(self, list_id: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "email_address": self.email_address,
            "status": self.status,
            "merge_fields": dict(self.merge_fields),
            "list_id": list_id,
        }


@dataclass
class Segment:
    id: int
    name: str
    members: set[str] = field(default_factory=set)  # subscriber hashes


@dataclass
class AudienceList:
    id: str
    name: str
    merge_fields: set[str]
    members: dict[str, Member] = field(default_factory=dict)  # subscriber hash -> member
    segments: dict[int, Segment] = field(default_factory=dict)


class MailchimpServer(ContractServer):
    platform = "mailchimp"
    base_path = "/3.0"  # a client's base_url: {url}/3.0 (the real one is https://<dc>.api.mailchimp.com/3.0)

    def __init__(
        self,
        api_key: str = "0123456789abcdef0123456789abcdef-us21",
        list_ids: tuple[str, ...] = ("a1b2c3d4e5",),
        merge_fields: tuple[str, ...] = DEFAULT_MERGE_FIELDS,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.lists: dict[str, AudienceList] = {i: AudienceList(i, f"Audience {i}", set(merge_fields)) for i in list_ids}
        self.invalid_emails: set[str] = set()  # per-address "looks fake or invalid" errors in batch subscribe
        self.forgotten: set[str] = set()  # deleted after unsubscribing: not a member, yet cannot be re-added
        self.resubscribe_attempts: list[str] = []  # addresses a request tried to move back to subscribed
        self._segment_ids = itertools.count(1001)
        p = r"/3\.0/lists/(?P<list_id>[^/]+)"
        self.route("POST", p, self._batch_subscribe)
        self.route("GET", p + "/members", self._list_members)
        self.route("GET", p + "/segments", self._list_segments)
        self.route("POST", p + "/segments", self._create_segment)
        self.route("POST", p + r"/segments/(?P<segment_id>\d+)", self._update_segment)

    # --- helpers for tests -------------------------------------------------------------------
    @property
    def list_id(self) -> str:
        return next(iter(self.lists))

    def seed(self, email: str, status: str = "subscribed", list_id: str | None = None) -> None:
        """Put an address in a list with a status (e.g. one who unsubscribed earlier in the Mailchimp UI)."""
        assert status in STATUSES
        audience = self.lists[list_id or self.list_id]
        audience.members[subscriber_hash(email)] = Member(email.strip().lower(), status)

    def member(self, email: str, list_id: str | None = None) -> Member | None:
        return self.lists[list_id or self.list_id].members.get(subscriber_hash(email))

    def tagged(self, tag: str, list_id: str | None = None) -> set[str]:
        """Addresses that carry the tag (static segment) ``tag``."""
        audience = self.lists[list_id or self.list_id]
        for seg in audience.segments.values():
            if seg.name == tag:
                return {audience.members[h].email_address for h in seg.members}
        return set()

    def throttle(self, times: int = 1, path: str = "") -> None:
        """Mailchimp's 429: a problem document and no rate-limit header at all."""
        resp = problem(
            429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections per API key."
        )
        self.fail_next(resp, times, path)

    # --- contract ----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Any) -> None:
        def guarded(req: Request, m: re.Match[str]) -> Response:
            denied = self._auth(req)
            if denied is not None:
                return denied
            audience = self.lists.get(m.group("list_id"))
            if audience is None:
                return problem(404, "Resource Not Found", "The requested resource could not be found.")
            body: Any = None
            if req.method in ("POST", "PUT", "PATCH"):
                try:
                    body = req.json()
                except ValueError:
                    return problem(400, "JSON Parse Exception", "We encountered an unspecified JSON parsing error.")
                if not isinstance(body, dict):
                    return problem(400, "Invalid Resource", "The resource submitted could not be validated.")
            result: Response = handler(req, m, audience, body)
            return result

        super().route(method, pattern, guarded)

    def _auth(self, req: Request) -> Response | None:
        header = req.header("Authorization") or ""
        if not header:
            return problem(401, "API Key Missing", "Your request did not include an API key.")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                _, _, key = base64.b64decode(value).decode().partition(":")
            except ValueError:
                key = ""
            if key == self.api_key:
                return None
        return problem(
            401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access the wrong datacenter."
        )

    def _batch_subscribe(
        self, req: Request, m: re.Match[str], audience: AudienceList, body: dict[str, Any]
    ) -> Response:
        members = body.get("members")
        if not isinstance(members, list):
            return self._invalid([{"field": "members", "message": "Schema describes array, NULL found instead"}])
        if len(members) > MAX_MEMBERS:
            return problem(400, "Invalid Resource", "Maximum allowed member items exceeded")
        update_existing = bool(body.get("update_existing", False))
        problems: list[dict[str, str]] = []
        for i, item in enumerate(members):
            if not isinstance(item, dict) or not isinstance(item.get("email_address"), str):
                problems.append({"field": f"members.item:{i}.email_address", "message": "Required field missing"})
            elif item.get("status") not in STATUSES:
                problems.append({"field": f"members.item:{i}.status", "message": "Value is not one of the enum"})
        if problems:
            return self._invalid(problems)
        new: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        for item in members:
            email = item["email_address"].strip()
            key = subscriber_hash(email)
            unknown = set(item.get("merge_fields") or {}) - audience.merge_fields
            existing = audience.members.get(key)
            if email.lower() in {e.lower() for e in self.invalid_emails} or not _EMAIL.match(email):
                errors.append(self._error(email, f"{email} looks fake or invalid, please enter a real email address."))
            elif unknown:
                errors.append(self._error(email, f"Your merge fields were invalid: {sorted(unknown)}"))
            elif existing is None and email.lower() in self.forgotten:
                errors.append(self._error(email, f"{email} was permanently deleted and cannot be re-imported."))
            elif existing is None:
                member = Member(email.lower(), item["status"], dict(item.get("merge_fields") or {}))
                audience.members[key] = member
                new.append(member.doc(audience.id))
            elif not update_existing:
                errors.append(
                    self._error(
                        email,
                        f"{email} is already a list member. Use PUT to insert or update list members.",
                        "ERROR_CONTACT_EXISTS",
                    )
                )
            elif existing.status in ("unsubscribed", "cleaned") and item["status"] in ("subscribed", "pending"):
                self.resubscribe_attempts.append(email.lower())
                errors.append(
                    self._error(
                        email,
                        f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
                        "and cannot be subscribed.",
                    )
                )
            else:
                existing.status = item["status"]
                existing.merge_fields.update(item.get("merge_fields") or {})
                updated.append(existing.doc(audience.id))
        return Response(
            200,
            {
                "new_members": new,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(new),
                "total_updated": len(updated),
                "error_count": len(errors),
            },
        )

    def _list_members(self, req: Request, m: re.Match[str], audience: AudienceList, body: None) -> Response:
        count, offset = _int(req, "count", 10), _int(req, "offset", 0)
        if count > MAX_PAGE:
            return problem(400, "Invalid Resource", f"count may not exceed {MAX_PAGE}")
        status = _param(req, "status")
        rows = [mem for mem in audience.members.values() if status is None or mem.status == status]
        page = rows[offset : offset + count]
        return Response(200, {"members": [mem.doc(audience.id) for mem in page], "total_items": len(rows)})

    def _list_segments(self, req: Request, m: re.Match[str], audience: AudienceList, body: None) -> Response:
        count, offset = _int(req, "count", 10), _int(req, "offset", 0)
        if count > MAX_PAGE:
            return problem(400, "Invalid Resource", f"count may not exceed {MAX_PAGE}")
        kind = _param(req, "type")
        rows = [s for s in audience.segments.values() if kind in (None, "static")]
        page = rows[offset : offset + count]
        return Response(
            200,
            {
                "segments": [
                    {"id": s.id, "name": s.name, "member_count": len(s.members), "type": "static"} for s in page
                ],
                "total_items": len(rows),
            },
        )

    def _create_segment(self, req: Request, m: re.Match[str], audience: AudienceList, body: dict[str, Any]) -> Response:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return self._invalid([{"field": "name", "message": "Required field missing"}])
        if not isinstance(body.get("static_segment"), list):
            return self._invalid([{"field": "static_segment", "message": "static_segment is required for a tag"}])
        if any(s.name == name for s in audience.segments.values()):
            return problem(400, "Bad Request", "Sorry, that tag already exists.")
        if len(body["static_segment"]) > MAX_MEMBERS:
            return problem(400, "Invalid Resource", "Maximum allowed member items exceeded")
        seg = Segment(next(self._segment_ids), name)
        audience.segments[seg.id] = seg
        for email in body["static_segment"]:
            key = subscriber_hash(str(email))
            if key in audience.members:
                seg.members.add(key)
                self.added[audience.members[key].email_address] += 1
        return Response(200, {"id": seg.id, "name": seg.name, "member_count": len(seg.members), "type": "static"})

    def _update_segment(self, req: Request, m: re.Match[str], audience: AudienceList, body: dict[str, Any]) -> Response:
        seg = audience.segments.get(int(m.group("segment_id")))
        if seg is None:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        to_add, to_remove = body.get("members_to_add", []), body.get("members_to_remove", [])
        if not isinstance(to_add, list) or not isinstance(to_remove, list):
            return self._invalid([{"field": "members_to_add", "message": "Schema describes array"}])
        if not all(isinstance(e, str) for e in [*to_add, *to_remove]):
            return self._invalid([{"field": "members_to_add", "message": "Schema describes string"}])
        if len(to_add) > MAX_MEMBERS or len(to_remove) > MAX_MEMBERS:
            return problem(400, "Invalid Resource", "Maximum allowed member items exceeded")
        added: list[dict[str, Any]] = []
        removed: list[dict[str, Any]] = []
        missing: list[str] = []
        for email in to_add:
            key = subscriber_hash(email)
            member = audience.members.get(key)
            if member is None:
                missing.append(email)
            elif key not in seg.members:
                seg.members.add(key)
                self.added[member.email_address] += 1
                added.append(member.doc(audience.id))
        not_in: list[str] = []
        for email in to_remove:
            key = subscriber_hash(email)
            member = audience.members.get(key)
            if member is None:
                not_in.append(email)
            elif key in seg.members:
                seg.members.discard(key)
                self.removed[member.email_address] += 1
                removed.append(member.doc(audience.id))
        errors: list[dict[str, Any]] = []
        if missing:
            errors.append({"email_addresses": missing, "error": "Email addresses do not belong to this list"})
        if not_in:
            errors.append({"email_addresses": not_in, "error": "Email addresses are not a list member"})
        return Response(
            200,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors,
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": sum(len(e["email_addresses"]) for e in errors),
            },
        )

    @staticmethod
    def _error(email: str, message: str, code: str = "ERROR_GENERIC") -> dict[str, str]:
        return {"email_address": email, "error": message, "error_code": code}

    @staticmethod
    def _invalid(errors: list[dict[str, str]]) -> Response:
        return problem(400, "Invalid Resource", "The resource submitted could not be validated.", errors=errors)


def _param(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    return values[0] if values else None


def _int(req: Request, name: str, default: int) -> int:
    try:
        return int(_param(req, name) or default)
    except ValueError:
        return default

"""Klaviyo audiences: one Klaviyo list per segment (or one configured list), filled by profile id.

Contract facts that shaped this client (destinations.md, "Klaviyo"):
- JSON:API: every request carries ``Authorization: Klaviyo-API-Key <key>``, a ``revision`` date header
  (the API version: pinned in options so a platform upgrade never changes behaviour silently) and bodies
  typed ``application/vnd.api+json``.
- Profiles are upserted with the asynchronous bulk import (up to 10,000 profiles / 5 MB per job:
  ``max_batch``); the job is polled until ``complete`` and its ``import-errors`` name the profiles that
  failed (with the profile as sent), which become ``failed``.
- List membership is by Klaviyo profile id, never by email, at most 1,000 per call (``max_remove_batch``):
  so ``remote_ref`` is the profile id, which is exactly what removal needs. The import is sent *without*
  the list relationship; the profiles are then looked up (``any(email, [...])``, 100 a page, with their
  email-marketing subscription) and only those not unsubscribed or suppressed are added to the list.
  Unsubscribed / suppressed (bounced, spam complaint, user-suppressed) profiles are ``suppressed``.
- Imports and list membership do not change consent (Klaviyo's subscribe jobs do; this client never
  calls them): a profile Klaviyo holds as ``NEVER_SUBSCRIBED`` is listed, and receives campaigns only
  once consent is recorded in Klaviyo.
- Throttling is 429 with ``Retry-After`` seconds; phones are sent E.164 (``phone_number``), and an
  invalid phone fails that profile's import, so only numbers ``e164_phone`` accepts are sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pandas as pd
from pydantic import Field

from tasks.destinations.audience import (
    BatchRef,
    BatchRejected,
    BatchResult,
    Capabilities,
    DestinationError,
)
from tasks.destinations.base import register
from tasks.destinations.http import HttpClient, redact
from tasks.destinations.platform import PlatformClient, PollingOptions, chunks, error_detail, text, unique_emails
from tasks.normalize.hashing import e164_phone

log = logging.getLogger(__name__)

JSON_API = "application/vnd.api+json"
LOOKUP_PAGE = 100  # profiles per page and values per any() filter
LIST_CALL = 1_000  # profile ids per list add/remove call


class KlaviyoOptions(PollingOptions):
    connection: str = "klaviyo_default"  # Airflow connection: password = private API key (pk_...)
    list_id: str | None = None  # one fixed list for every segment; default: a list per segment, by name
    base_url: str | None = None  # default https://a.klaviyo.com
    revision: str = Field("2025-07-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


@dataclass
class _Profile:
    email: str
    keys: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


def _errors(response: httpx.Response) -> str:
    """Klaviyo's ``{errors: [{code, title, detail, source}]}``, redacted."""

    def describe(body: Any) -> str:
        items = body.get("errors") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return str(body)
        parts = []
        for item in items:
            if isinstance(item, dict):
                source = item.get("source")
                pointer = (source or {}).get("pointer", "") if isinstance(source, dict) else ""
                parts.append(f"{item.get('code', '')}: {item.get('detail') or item.get('title', '')} {pointer}".strip())
        return "; ".join(parts)

    return error_detail(response, describe)


@register("klaviyo")
class Klaviyo(PlatformClient):
    capabilities: ClassVar[Capabilities] = Capabilities(
        purpose="email_marketing", max_batch=10_000, max_remove_batch=LIST_CALL
    )
    Options = KlaviyoOptions

    secret = "Klaviyo private API key"
    options: KlaviyoOptions

    # --- plumbing ------------------------------------------------------------------------------
    def _connect(self, key: str) -> HttpClient:
        return self._http_client(
            self.options.base_url or "https://a.klaviyo.com",
            headers={"Authorization": f"Klaviyo-API-Key {key}", "revision": self.options.revision, "Accept": JSON_API},
        )  # throttle: 429 + Retry-After seconds, else exponential backoff (HttpClient's default)

    def _call(self, method: str, path: str, *, body: Any = None, batch: bool = False, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": JSON_API}
        response = self.http.request(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else {}
        detail, where = _errors(response), f"{method} {path}"
        if batch and response.status_code in (400, 413):
            raise BatchRejected(
                f"{self.label}: Klaviyo refused the batch (HTTP {response.status_code} on {where}): {detail}"
            )
        raise DestinationError(f"{self.label}: HTTP {response.status_code} on {where}: {detail}")

    # --- protocol ------------------------------------------------------------------------------
    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        if known_id:
            return known_id
        if self.options.list_id:
            return self.options.list_id
        found = self._call(
            "GET", "/api/lists/", params={"filter": f"equals(name,{json.dumps(segment, ensure_ascii=False)})"}
        )
        for row in found.get("data") or []:
            if (row.get("attributes") or {}).get("name") == segment:
                return str(row["id"])
        created = self._call("POST", "/api/lists/", body={"data": {"type": "list", "attributes": {"name": segment}}})
        list_id = str(created["data"]["id"])
        log.info("%s: created list for segment %s (id %s)", self.label, segment, list_id)
        return list_id

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        profiles = self._profiles(members, result)
        if not profiles:
            return result
        job = self._call(
            "POST",
            "/api/profile-bulk-import-jobs/",
            batch=True,
            body={
                "data": {
                    "type": "profile-bulk-import-job",
                    "attributes": {
                        "profiles": {
                            "data": [{"type": "profile", "attributes": p.attributes} for p in profiles.values()]
                        }
                    },
                }
            },
        )
        attributes = self._wait(str(job["data"]["id"]))
        if attributes.get("status") != "complete":
            reason = f"Klaviyo import job ended {attributes.get('status')!r}; retried next run"
            for profile in profiles.values():
                result.failed.update(dict.fromkeys(profile.keys, reason))
            return result
        if int(attributes.get("failed_count") or 0):
            for email, reason in self._import_errors(str(job["data"]["id"])):
                failed = profiles.pop(email, None)
                if failed is not None:
                    result.failed.update(dict.fromkeys(failed.keys, reason))
        eligible: list[tuple[_Profile, str]] = []
        for emails in chunks(list(profiles), LOOKUP_PAGE):
            found = self._lookup(emails)
            for email in emails:
                profile = profiles[email]
                if email not in found:
                    result.failed.update(dict.fromkeys(profile.keys, "Klaviyo has no profile for it after the import"))
                    continue
                profile_id, suppression = found[email]
                if suppression:
                    result.suppressed.update(dict.fromkeys(profile.keys, f"Klaviyo: {suppression}"))
                else:
                    eligible.append((profile, profile_id))
        for chunk in chunks(eligible, LIST_CALL):
            self._call(
                "POST",
                f"/api/lists/{audience_id}/relationships/profiles/",
                batch=True,
                body={"data": [{"type": "profile", "id": pid} for _, pid in chunk]},
            )
            for profile, pid in chunk:
                result.accepted.update(dict.fromkeys(profile.keys, pid))
        return result

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        result = BatchResult()
        by_id: dict[str, list[str]] = {}
        for record in refs.to_dict("records"):
            customer, ref = str(record["customer_key"]), text(record.get("remote_ref"))
            if ref is None:
                result.failed[customer] = "no remote_ref (Klaviyo profile id) to remove"
            else:
                by_id.setdefault(ref, []).append(customer)
        for chunk in chunks(list(by_id), LIST_CALL):
            self._call(
                "DELETE",
                f"/api/lists/{audience_id}/relationships/profiles/",
                batch=True,
                body={"data": [{"type": "profile", "id": pid} for pid in chunk]},
            )
            for pid in chunk:
                result.accepted.update(dict.fromkeys(by_id[pid], pid))
        return result

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        raise NotImplementedError("klaviyo has no replace; the sync engine sends adds and removes")

    # --- helpers -------------------------------------------------------------------------------
    def _profiles(self, members: pd.DataFrame, result: BatchResult) -> dict[str, _Profile]:
        """Profiles keyed by lower-cased email (Klaviyo matches emails case-insensitively)."""
        phones = e164_phone(members["phone"]).tolist() if "phone" in members and len(members) else []
        profiles: dict[str, _Profile] = {}
        for i, record, key, customers in unique_emails(members, result):
            attributes: dict[str, Any] = {"email": key}
            phone = text(phones[i]) if phones else None
            if phone:
                attributes["phone_number"] = phone
            for column in ("first_name", "last_name"):
                if (value := text(record.get(column))) is not None:
                    attributes[column] = value
            location = {
                name: value
                for name, column in (("city", "city"), ("country", "country"), ("zip", "postal_code"))
                if (value := text(record.get(column))) is not None
            }
            if location:
                attributes["location"] = location
            profiles[key] = _Profile(key, customers, attributes)
        return profiles

    def _wait(self, job_id: str) -> dict[str, Any]:
        """Poll the import job until it leaves queued/processing; too long -> DestinationUnavailable."""
        attributes: dict[str, Any] = self._poll_job(
            lambda: self._call("GET", f"/api/profile-bulk-import-jobs/{job_id}/")["data"]["attributes"],
            lambda state: state.get("status") in ("queued", "processing"),
            lambda state: (
                f"import job {job_id} still {state.get('status')!r} after {self.options.poll_timeout:.0f} s; "
                "the next run sends the batch again (imports are upserts)"
            ),
        )
        return attributes

    def _pages(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Follow JSON:API ``links.next``. The link is split into path and query so the retry/error messages of
        HttpClient, which name the path, never carry the query (a profile filter holds email addresses)."""
        base_path = httpx.URL(self.options.base_url or "https://a.klaviyo.com").path.rstrip("/")
        while True:
            page: dict[str, Any] = self._call("GET", path, params=params)
            yield page
            link = (page.get("links") or {}).get("next")
            if not link:
                return
            url = httpx.URL(link)
            path = url.path[len(base_path) :] if base_path and url.path.startswith(base_path) else url.path
            params = dict(url.params)

    def _import_errors(self, job_id: str) -> Iterator[tuple[str, str]]:
        """(lower-cased email, reason) for each profile the job could not import."""
        path = f"/api/profile-bulk-import-jobs/{job_id}/import-errors/"
        for page in self._pages(path, {"page[size]": str(LOOKUP_PAGE)}):
            for row in page.get("data") or []:
                attributes = row.get("attributes") or {}
                email = text((attributes.get("original_payload") or {}).get("email"))
                if email is not None:
                    detail = attributes.get("detail") or attributes.get("title") or "import error"
                    yield email.lower(), f"Klaviyo import error: {redact(str(detail))}"

    def _lookup(self, emails: list[str]) -> dict[str, tuple[str, str | None]]:
        """email -> (profile id, suppression reason or None) for up to 100 addresses."""
        found: dict[str, tuple[str, str | None]] = {}
        params = {
            "filter": f"any(email,{json.dumps(emails, ensure_ascii=False)})",
            "additional-fields[profile]": "subscriptions",
            "page[size]": str(LOOKUP_PAGE),
        }
        for page in self._pages("/api/profiles/", params):
            for row in page.get("data") or []:
                attributes = row.get("attributes") or {}
                email = text(attributes.get("email"))
                if email is not None:
                    found[email.lower()] = (str(row["id"]), _suppression(attributes))
        return found


def _suppression(attributes: dict[str, Any]) -> str | None:
    marketing = (((attributes.get("subscriptions") or {}).get("email") or {}).get("marketing")) or {}
    if marketing.get("consent") == "UNSUBSCRIBED":
        return "unsubscribed from email marketing"
    reasons = [str(s.get("reason", "")) for s in marketing.get("suppression") or [] if isinstance(s, dict)]
    if reasons:
        return f"email suppressed ({', '.join(reasons)})"
    return None

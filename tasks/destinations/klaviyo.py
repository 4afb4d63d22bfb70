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
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

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
    DestinationUnavailable,
)
from tasks.destinations.base import DestinationOptions, register
from tasks.destinations.credentials import MissingCredentials, get_credential
from tasks.destinations.http import HttpClient, RetryOptions, RetryPolicy, redact
from tasks.normalize.hashing import e164_phone

log = logging.getLogger(__name__)

JSON_API = "application/vnd.api+json"
LOOKUP_PAGE = 100  # profiles per page and values per any() filter
LIST_CALL = 1_000  # profile ids per list add/remove call
T = TypeVar("T")


class KlaviyoOptions(DestinationOptions):
    connection: str = "klaviyo_default"  # Airflow connection: password = private API key (pk_...)
    list_id: str | None = None  # one fixed list for every segment; default: a list per segment, by name
    base_url: str | None = None  # default https://a.klaviyo.com
    revision: str = Field("2025-07-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
    poll_interval: float = Field(2.0, gt=0)  # seconds between import-job polls
    poll_timeout: float = Field(900.0, gt=0)  # give up on a job after this long (DestinationUnavailable)
    retry: RetryOptions = RetryOptions.model_validate({})


class RetryAfter:
    """429 + ``Retry-After`` seconds; without a usable header, exponential over consecutive 429s."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.streak = 0

    def __call__(self, response: httpx.Response) -> float | None:
        if response.status_code != 429:
            self.streak = 0
            return None
        self.streak += 1
        try:
            return max(0.0, float(response.headers["Retry-After"]))
        except (KeyError, ValueError):
            ceiling = min(self.policy.max_delay, self.policy.base_delay * 2 ** (self.streak - 1))
            return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class _Profile:
    email: str
    keys: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _errors(response: httpx.Response) -> str:
    """Klaviyo's ``{errors: [{code, title, detail, source}]}``, redacted."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text)
    items = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return redact(str(body))
    parts = []
    for item in items:
        if isinstance(item, dict):
            pointer = (item.get("source") or {}).get("pointer", "") if isinstance(item.get("source"), dict) else ""
            parts.append(f"{item.get('code', '')}: {item.get('detail') or item.get('title', '')} {pointer}".strip())
    return redact("; ".join(parts))


@register("klaviyo")
class Klaviyo:
    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities(
        purpose="email_marketing", max_batch=10_000, max_remove_batch=LIST_CALL
    )
    Options = KlaviyoOptions

    def __init__(self, name: str, options: KlaviyoOptions) -> None:
        self.name = name
        self.options = options
        self.sleep: Callable[[float], None] = time.sleep  # tests swap in a recorder
        self._http: HttpClient | None = None

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"klaviyo destination {self.name!r} (connection {self.options.connection!r})"

    @property
    def retries(self) -> int:
        return self._http.retries if self._http is not None else 0

    def _client(self) -> HttpClient:
        if self._http is None:
            try:
                key = get_credential(self.options.connection).require_password("Klaviyo private API key")
            except MissingCredentials as exc:
                raise DestinationAuthError(f"{self.label}: {exc}") from None
            except ValueError:
                raise DestinationAuthError(f"{self.label}: the connection could not be parsed (JSON or URI)") from None
            policy = self.options.retry.policy()
            self._http = HttpClient(
                self.label,
                self.options.base_url or "https://a.klaviyo.com",
                headers={
                    "Authorization": f"Klaviyo-API-Key {key}",
                    "revision": self.options.revision,
                    "Accept": JSON_API,
                },
                throttle=RetryAfter(policy),
                policy=policy,
                sleep=lambda seconds: self.sleep(seconds),
            )
        return self._http

    def _call(self, method: str, path: str, *, body: Any = None, batch: bool = False, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": JSON_API}
        response = self._client().request(method, path, **kwargs)
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
        for emails in _chunks(list(profiles), LOOKUP_PAGE):
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
        for chunk in _chunks(eligible, LIST_CALL):
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
            customer, ref = str(record["customer_key"]), _text(record.get("remote_ref"))
            if ref is None:
                result.failed[customer] = "no remote_ref (Klaviyo profile id) to remove"
            else:
                by_id.setdefault(ref, []).append(customer)
        for chunk in _chunks(list(by_id), LIST_CALL):
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

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- helpers -------------------------------------------------------------------------------
    def _profiles(self, members: pd.DataFrame, result: BatchResult) -> dict[str, _Profile]:
        """Profiles keyed by lower-cased email (Klaviyo matches emails case-insensitively)."""
        records = members.to_dict("records")
        phones = e164_phone(members["phone"]).tolist() if "phone" in members and len(members) else []
        profiles: dict[str, _Profile] = {}
        for i, record in enumerate(records):
            customer = str(record["customer_key"])
            email = _text(record.get("email"))
            if email is None or "@" not in email:
                result.failed[customer] = "no valid email address; not sent"
                continue
            key = email.lower()
            if key in profiles:
                profiles[key].keys.append(customer)
                continue
            attributes: dict[str, Any] = {"email": key}
            phone = _text(phones[i]) if phones else None
            if phone:
                attributes["phone_number"] = phone
            for column in ("first_name", "last_name"):
                if (value := _text(record.get(column))) is not None:
                    attributes[column] = value
            location = {
                name: value
                for name, column in (("city", "city"), ("country", "country"), ("zip", "postal_code"))
                if (value := _text(record.get(column))) is not None
            }
            if location:
                attributes["location"] = location
            profiles[key] = _Profile(key, [customer], attributes)
        return profiles

    def _wait(self, job_id: str) -> dict[str, Any]:
        """Poll the import job until it leaves queued/processing; too long -> DestinationUnavailable."""
        started, waited = time.monotonic(), 0.0
        while True:
            doc = self._call("GET", f"/api/profile-bulk-import-jobs/{job_id}/")
            attributes: dict[str, Any] = doc["data"]["attributes"]
            if attributes.get("status") not in ("queued", "processing"):
                return attributes
            if max(waited, time.monotonic() - started) >= self.options.poll_timeout:
                raise DestinationUnavailable(
                    f"{self.label}: import job {job_id} still {attributes.get('status')!r} after "
                    f"{self.options.poll_timeout:.0f} s; the next run sends the batch again (imports are upserts)"
                )
            self.sleep(self.options.poll_interval)
            waited += self.options.poll_interval

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
                email = _text((attributes.get("original_payload") or {}).get("email"))
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
                email = _text(attributes.get("email"))
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

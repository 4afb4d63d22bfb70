"""What the seven platform clients (Mailchimp, Klaviyo, SendGrid, Brevo, Meta, Google, TikTok) share.

One place for the plumbing that used to be copied into every client, so a fix lands everywhere:
- credential reading: lazily, at the first API call (building a destination or closing an unused one
  needs no credential), with one DestinationAuthError wording for a missing or unparsable connection;
- HTTP client construction: the label, the retry policy from the ``retry:`` options and a ``sleep``
  hook tests swap for a recorder, plus the ``retries`` count for run history;
- throttle backoff: a header that names the wait (else ``BACKOFF``, HttpClient's exponential backoff),
  or, for the ad platforms, their hint else ``base_delay`` doubled per consecutive throttle;
- row helpers (text cells, chunks, one entry per distinct email, remote_ref parsing) and the polling
  loop for asynchronous import jobs.

Each platform's contract (paths, payloads, error bodies, what counts as suppressed) stays in its module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import httpx
import pandas as pd
from pydantic import Field

from tasks.destinations.audience import BatchResult, DestinationAuthError, DestinationUnavailable
from tasks.destinations.base import DestinationOptions
from tasks.destinations.credentials import MissingCredentials, get_credential
from tasks.destinations.http import (
    BACKOFF,
    HttpClient,
    RetryOptions,
    RetryPolicy,
    Throttle,
    redact,
    retry_after_seconds,
)

T = TypeVar("T")


class PlatformOptions(DestinationOptions):
    connection: str  # Airflow connection whose password is the platform's secret (subclasses name a default)
    base_url: str | None = None  # None: the platform's public API root
    retry: RetryOptions = RetryOptions.model_validate({})


class PollingOptions(PlatformOptions):
    poll_interval: float = Field(2.0, gt=0)  # seconds between import-job polls
    poll_timeout: float = Field(900.0, gt=0)  # give up on a job after this long (DestinationUnavailable)


def text(value: Any) -> str | None:
    """A cell as stripped text; None for None/NA/NaN/blank."""
    if value is None or value is pd.NA:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    out = str(value).strip()
    return out or None


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unique_emails(members: pd.DataFrame, result: BatchResult) -> list[tuple[int, dict[Any, Any], str, list[str]]]:
    """(row index, record, lower-cased email, customer keys sharing it) per distinct address, in first-seen order:
    two customers may share an address (sent once, reported for both); rows without one are failed."""
    seen: dict[str, list[str]] = {}
    out: list[tuple[int, dict[Any, Any], str, list[str]]] = []
    for i, record in enumerate(members.to_dict("records")):
        customer = str(record["customer_key"])
        email = text(record.get("email"))
        if email is None or "@" not in email:
            result.failed[customer] = "no valid email address; not sent"
        elif (key := email.lower()) in seen:
            seen[key].append(customer)
        else:
            seen[key] = [customer]
            out.append((i, record, key, seen[key]))
    return out


def split_refs(
    refs: pd.DataFrame, parse: Callable[[object], T | None], invalid: str
) -> tuple[dict[str, T], dict[str, str]]:
    """({customer: parsed remote_ref}, {customer: ``invalid``}) for a removal batch; ``parse`` returns None
    for a remote_ref this destination did not record."""
    parsed: dict[str, T] = {}
    failed: dict[str, str] = {}
    for key, ref in zip(refs["customer_key"].astype(str), refs["remote_ref"], strict=True):
        value = parse(ref)
        if value is None:
            failed[key] = invalid
        else:
            parsed[key] = value
    return parsed, failed


def error_detail(response: httpx.Response, describe: Callable[[Any], str]) -> str:
    """An error answer for a message: ``describe`` of its JSON body (else the raw text), redacted."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text)
    return redact(describe(body))


def header_wait(header: str | None, clock: Callable[[], float] | None = None) -> Throttle:
    """Throttle hook for a 429 whose ``header`` gives the wait in seconds (or, with ``clock``, as a unix time);
    without a usable header (or with ``header=None``): BACKOFF, HttpClient's exponential backoff."""

    def throttle(response: httpx.Response) -> float | None:
        if response.status_code != 429:
            return None
        try:
            value = float(response.headers[header]) if header else None
        except (KeyError, ValueError):
            value = None
        if value is None:
            return BACKOFF
        return max(0.0, value - clock()) if clock is not None else max(0.0, value)

    return throttle


class DoublingThrottle:
    """Throttle hook for the ad platforms: the platform's own hint when it gives one, else ``base_delay``
    doubled per consecutive throttle, without jitter (one ad account is one rate-limit bucket, and tests
    assert the waits). HttpClient caps the wait at ``max_delay``."""

    def __init__(
        self,
        policy: RetryPolicy,
        throttled: Callable[[httpx.Response], bool],
        hint: Callable[[httpx.Response], float | None] = lambda response: None,
    ) -> None:
        self.policy = policy
        self.throttled = throttled
        self.hint = hint
        self.streak = 0  # consecutive throttled responses; reset by any other response

    def __call__(self, response: httpx.Response) -> float | None:
        if not self.throttled(response):
            self.streak = 0
            return None
        self.streak += 1
        hinted = self.hint(response)
        if hinted is not None:
            return hinted
        return min(self.policy.max_delay, self.policy.base_delay * 2 ** (self.streak - 1))


class PlatformClient:
    """Base of the platform clients: lazy credential + HttpClient, ``retries``, ``close``, job polling.

    A subclass names its ``secret`` (for the missing-credential message) and builds its HttpClient in
    ``_connect(secret)`` with ``_http_client``.
    """

    kind: ClassVar[str]
    secret: ClassVar[str]  # what the connection's password holds, e.g. "Mailchimp API key"

    def __init__(self, name: str, options: PlatformOptions) -> None:
        self.name = name
        self.options = options
        self.sleep: Callable[[float], None] = time.sleep  # retry waits and job polls; tests swap in a recorder
        self._http: HttpClient | None = None
        self._secret: str | None = None

    @property
    def label(self) -> str:
        """How errors and logs name this destination."""
        return f"{self.kind} destination {self.name!r} (connection {self.options.connection!r})"

    @property
    def retries(self) -> int:
        return self._http.retries if self._http is not None else 0

    @property
    def http(self) -> HttpClient:
        """The HTTP client, built (and the credential read) at first use."""
        if self._http is None:
            self._secret = self._credential()
            self._http = self._connect(self._secret)
        return self._http

    @property
    def token(self) -> str:
        """The credential, read with the HTTP client (for platforms that send it in bodies, and to redact it)."""
        _ = self.http
        assert self._secret is not None
        return self._secret

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _credential(self) -> str:
        try:
            return get_credential(self.options.connection).require_password(self.secret)
        except MissingCredentials as exc:
            raise DestinationAuthError(f"{self.label}: {exc}") from None
        except ValueError:
            raise DestinationAuthError(f"{self.label}: the connection could not be parsed (JSON or URI)") from None

    def _connect(self, secret: str) -> HttpClient:
        raise NotImplementedError

    def _http_client(
        self,
        base_url: str,
        *,
        label: str | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        throttle: Throttle = retry_after_seconds,
        client: type[HttpClient] = HttpClient,
    ) -> HttpClient:
        """An HttpClient with this destination's label, retry policy and ``sleep`` hook."""
        return client(
            label or self.label,
            base_url,
            headers=headers,
            auth=auth,
            throttle=throttle,
            policy=self.options.retry.policy(),
            sleep=lambda seconds: self.sleep(seconds),
        )

    def _poll_job(self, fetch: Callable[[], T], pending: Callable[[T], bool], stuck: Callable[[T], str]) -> T:
        """Fetch a job's state until it is no longer ``pending``; past ``poll_timeout`` -> DestinationUnavailable
        with ``stuck(state)`` as the reason. Time is counted both by the clock and by the sleeps asked for,
        so a test's recording ``sleep`` still ends the loop."""
        assert isinstance(self.options, PollingOptions)
        interval, timeout = self.options.poll_interval, self.options.poll_timeout
        started, waited = time.monotonic(), 0.0
        while True:
            state = fetch()
            if not pending(state):
                return state
            if max(waited, time.monotonic() - started) >= timeout:
                raise DestinationUnavailable(f"{self.label}: {stuck(state)}")
            self.sleep(interval)
            waited += interval


class AdPlatformClient(PlatformClient):
    """An ad platform: errors name the destination by its name, its HttpClient logs as ``<platform>:<name>``."""

    platform: ClassVar[str]  # "meta", "google", "tiktok"

    @property
    def label(self) -> str:
        return self.name

    def _http_client(self, base_url: str, *, label: str | None = None, **kwargs: Any) -> HttpClient:
        return super()._http_client(base_url, label=label or f"{self.platform}:{self.name}", **kwargs)

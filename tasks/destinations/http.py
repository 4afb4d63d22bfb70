"""One HTTP client for every platform: timeouts, retries with backoff that honour the platform's
own throttle signal, and errors that never carry personal data.

Platforms signal "slow down" differently (429 + Retry-After, X-RateLimit-Reset as a unix time,
a Graph error code inside a 400, a TikTok body code inside a 200). Each client passes a
``throttle`` function that reads its platform's signal and returns the seconds to wait, or None
when the response is not a throttle; everything else — how long to back off, when to give up,
what to raise — is decided here once.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from tasks.destinations.audience import DestinationAuthError, DestinationUnavailable

log = logging.getLogger(__name__)

Throttle = Callable[[httpx.Response], float | None]
# A throttle function returns this when the platform said "slow down" without saying for how long:
# the client then backs off exponentially instead of retrying at once.
BACKOFF = -1.0

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d\s().\-]{7,}\d")


def redact(text: str, limit: int = 300) -> str:
    """Platform messages echo addresses ("x@y.com is already a member"); logs and errors must not."""
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))[:limit]


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The standard signal: 429 with Retry-After in seconds (or none, then the default backoff)."""
    if response.status_code != 429:
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return BACKOFF


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5  # seconds; doubled per attempt, with full jitter
    max_delay: float = 60.0  # never sleep longer than this for one retry, whatever the platform says
    timeout: float = 30.0


class HttpClient:
    def __init__(
        self,
        destination: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        throttle: Throttle = retry_after_seconds,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.destination = destination
        self.policy = policy or RetryPolicy()
        self.throttle = throttle
        self.sleep = sleep
        self.retries = 0  # total retries made, for run history
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=dict(headers or {}),
            auth=auth,
            timeout=self.policy.timeout,
        )

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; returns any non-retryable response (the caller reads 2xx/4xx bodies).

        Raises DestinationAuthError on 401/403 and DestinationUnavailable when retries run out.
        """
        last = "no attempt made"
        where = f"{method} {redact(path)}"  # paths can carry an address (Brevo /contacts/{email})
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__} on {where}"
                self._backoff(attempt, None, last)
                continue
            wait = self.throttle(response)
            if wait is not None:
                last = f"throttled (HTTP {response.status_code}) on {where}"
                self._backoff(attempt, wait, last)
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code} on {where}"
                self._backoff(attempt, None, last)
                continue
            if response.status_code in (401, 403):
                raise DestinationAuthError(
                    f"{self.destination}: the platform refused the credentials (HTTP {response.status_code} on "
                    f"{where}): {redact(response.text)}. Update the connection or environment variable "
                    "named in destinations.yaml and re-run; nothing was sent."
                )
            return response
        raise DestinationUnavailable(
            f"{self.destination}: gave up after {self.policy.max_attempts} attempts ({last}); "
            "accepted batches are in the ledger and the next run resumes from there"
        )

    def _backoff(self, attempt: int, platform_wait: float | None, reason: str) -> None:
        if attempt >= self.policy.max_attempts:
            return
        self.retries += 1
        exp = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
        if platform_wait is None or platform_wait < 0:  # no wait given: exponential backoff with full jitter
            delay = random.uniform(exp / 2, exp) if platform_wait is not None else random.uniform(0, exp)
        else:
            delay = min(self.policy.max_delay, platform_wait)
        log.warning("%s: %s; retry %d in %.2f s", self.destination, reason, attempt, delay)
        self.sleep(delay)


class RetryOptions(BaseModel):
    """The ``retry:`` block of a platform destination in destinations.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=20)
    base_delay: float = Field(default=0.5, ge=0)
    max_delay: float = Field(default=60.0, ge=0)
    timeout: float = Field(default=30.0, gt=0)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.base_delay, self.max_delay, self.timeout)

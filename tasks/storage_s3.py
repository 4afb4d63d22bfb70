"""The lake on an S3 bucket (AWS in production, MinIO in docker-compose, moto in tests).

S3 already gives the lake what it relies on: a PUT is atomic per object, so writing the manifest
last is still the commit point. What S3 adds is a network in the way, hence two layers of retries:
botocore's own (adaptive mode, which also backs off when S3 says "slow down"), and above it a
bounded, jittered retry of whole operations, so a minute-long blip (a MinIO restart, a load
balancer dropping connections) costs a pause instead of a failed Airflow task and a manual re-run.

Only two kinds of failure are quiet: "missing" (``get`` raises FileNotFoundError, which the lake
treats as "not committed") and "transient" (retried). Everything else — wrong credentials, a
missing bucket, a denied policy — is raised as :class:`S3StoreError` naming the object and what
to check, because retrying those only delays the message a human has to read.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_ENV = "AUDIENCES_S3_ENDPOINT_URL"
_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()
DELETE_BATCH = 1000  # DeleteObjects refuses more keys per request

# Failures of the connection itself, not of the request: the same request may well succeed later.
# SSLError is deliberately absent: a bad certificate does not heal by waiting.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,  # the body of a GET broke off mid-read, after botocore's retries ended
    IncompleteReadError,
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})  # not NoSuchBucket: that is a config error


class S3StoreError(RuntimeError):
    """An S3 failure retrying cannot fix; the message says which object and what to check."""


class S3UnavailableError(S3StoreError):
    """The endpoint stayed unreachable (or kept answering 5xx) for the whole retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded by a total time budget.

    Full jitter spreads out many Airflow workers that lost S3 at the same moment, so they do not
    all come back in lock-step. The budget is checked before each pause; a single attempt can
    still run for as long as botocore's own retries and timeouts allow.
    """

    budget_s: float = 30.0
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, retry: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2**retry)))


def make_client(
    endpoint_url: str | None = None,
    *,
    max_attempts: int = 10,
    retry_mode: Literal["legacy", "standard", "adaptive"] = "adaptive",
    connect_timeout: float = 5,
    read_timeout: float = 30,
) -> S3Client:
    """A client whose credentials come only from the standard AWS chain (env, profile, instance role).

    Nothing is read from the repository, so no secret can be committed alongside the config. A
    custom endpoint (MinIO, moto) gets path-style addressing: ``bucket.minio:9000`` would not resolve.
    botocore counts ``max_attempts`` as retries, so 10 means up to 11 requests and 0 means one.
    """
    config = Config(
        retries={"max_attempts": max_attempts, "mode": retry_mode},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    with _SESSION_LOCK:  # creating clients from one session is not thread-safe; using them is
        client: S3Client = _session().client("s3", endpoint_url=endpoint_url, config=config)
    return client


def _session() -> boto3.session.Session:
    """One session per process: each new session re-parses the S3 service model (0.2-0.7 s a client)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/optional/prefix`` -> (bucket, prefix without surrounding slashes)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"lake_root {url!r} is not an S3 URL; expected s3://bucket or s3://bucket/prefix")
    if parsed.query or parsed.fragment:
        raise ValueError(f"lake_root {url!r} must not carry a query or fragment; expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


class S3Store:
    """An :class:`tasks.storage.ObjectStore` on ``s3://bucket/prefix``."""

    def __init__(
        self, bucket: str, prefix: str = "", client: S3Client | None = None, *, retry: RetryPolicy | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: S3Client = client if client is not None else make_client(os.environ.get(ENDPOINT_ENV) or None)
        self.retry = retry or RetryPolicy()
        self.retries = 0  # operations retried by this store (not botocore's internal retries)

    @classmethod
    def from_url(cls, url: str, *, retry: RetryPolicy | None = None) -> S3Store:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, make_client(os.environ.get(ENDPOINT_ENV) or None), retry=retry)

    # -- keys -------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    # -- operations -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            # The body is read inside the retried call: a connection dropped mid-body is transient too.
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._call("get", key, fetch)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)  # the store root is "lake/", so a sibling store "lake2/" stays invisible
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix, functools.partial(self.client.list_objects_v2, **kwargs))
            keys.extend(self._relative(obj["Key"]) for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        pending = list(keys)
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start : start + DELETE_BATCH]
            remove = functools.partial(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
            )
            response = self._call("delete", batch[0], remove)
            errors = response.get("Errors", [])
            if errors:  # DeleteObjects answers 200 even when single keys fail; never drop that silently
                first = errors[0]
                raise S3StoreError(
                    f"S3 refused to delete {len(errors)} of {len(batch)} objects in s3://{self.bucket}/, e.g. "
                    f"s3://{self.bucket}/{first.get('Key')} ({first.get('Code')}: {first.get('Message')}); "
                    "check that the credentials allow s3:DeleteObject on this bucket"
                )

    # -- retries and error translation ------------------------------------------------------------

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        retry = 0
        while True:
            try:
                return fn()
            except ClientError as exc:
                code, status = _error_code(exc)
                if op == "get" and (code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket")):
                    raise FileNotFoundError(self.describe(key)) from None
                if not (code in _TRANSIENT_CODES or status >= 500):
                    raise S3StoreError(self._explain(op, key, code, exc)) from exc
                reason = f"{code or 'HTTP'} {status}"
                last: BaseException = exc
            except _TRANSIENT_EXCEPTIONS as exc:
                reason = type(exc).__name__
                last = exc
            except NoCredentialsError as exc:
                raise S3StoreError(
                    f"no AWS credentials found for S3 {op} {self.describe(key)}; set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance/task role)"
                ) from exc
            except BotoCoreError as exc:
                raise S3StoreError(
                    f"S3 {op} {self.describe(key)} failed: {exc}; check {ENDPOINT_ENV} "
                    f"(now {os.environ.get(ENDPOINT_ENV) or 'unset = AWS'}) and the AWS_* settings"
                ) from exc

            delay = self.retry.delay(retry)
            elapsed = time.monotonic() - started
            if elapsed + delay > self.retry.budget_s:
                raise S3UnavailableError(
                    f"S3 {op} {self.describe(key)} still failing after {retry + 1} attempts over {elapsed:.1f}s "
                    f"(last: {reason}); check that the endpoint is reachable ({ENDPOINT_ENV}="
                    f"{os.environ.get(ENDPOINT_ENV) or 'unset = AWS'}) and not overloaded, then re-run the task"
                ) from last
            retry += 1
            self.retries += 1
            # Key and reason only: object contents and credentials never reach the logs.
            log.warning("S3 %s %s failed (%s); retry %d in %.2fs", op, self.describe(key), reason, retry, delay)
            time.sleep(delay)

    def _explain(self, op: str, key: str, code: str, exc: ClientError) -> str:
        hints = {
            "NoSuchBucket": f"bucket {self.bucket!r} does not exist; check lake_root in pipeline.yaml and the endpoint",
            "AccessDenied": "access denied; check the credentials' IAM policy for this bucket and prefix",
            "AllAccessDisabled": "access denied; check the credentials' IAM policy for this bucket and prefix",
            "InvalidAccessKeyId": "unknown access key; check AWS_ACCESS_KEY_ID and the endpoint",
            "SignatureDoesNotMatch": "the secret key is wrong; check AWS_SECRET_ACCESS_KEY",
            "ExpiredToken": "the session token expired; refresh AWS_SESSION_TOKEN / the role credentials",
            "PermanentRedirect": "the bucket is in another region; set AWS_DEFAULT_REGION to the bucket's region",
            "AuthorizationHeaderMalformed": "wrong region for this bucket; set AWS_DEFAULT_REGION to its region",
        }
        hint = hints.get(code, f"check the credentials, the bucket name and {ENDPOINT_ENV}")
        message = exc.response.get("Error", {}).get("Message", "")
        return f"S3 {op} {self.describe(key)} failed with {code or 'an error'} ({message}): {hint}"


def _error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)

"""S3Store against a real S3 server on loopback (moto), including an S3 that is briefly unavailable.

The outage is made by a small TCP proxy between the client and moto, so every failure the store sees
is a genuine socket reset or a genuine HTTP 503 coming through botocore, not a mocked exception.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest

from tasks.storage_s3 import (
    ENDPOINT_ENV,
    RetryPolicy,
    S3Store,
    S3StoreError,
    S3UnavailableError,
    make_client,
    parse_url,
)

FAST = RetryPolicy(budget_s=5.0, base_s=0.01, cap_s=0.05)
SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
SLOW_DOWN_BODY = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>"


class FlakyProxy:
    """A loopback TCP proxy that resets its first ``resets`` connections, answers the next ``slowdowns``
    with HTTP 503 SlowDown, then forwards everything to ``upstream``."""

    def __init__(self, upstream: str, *, resets: int = 0, slowdowns: int = 0) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.resets = resets
        self.slowdowns = slowdowns
        self.sabotaged = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self.resets > 0:
                    self.resets -= 1
                    self.sabotaged += 1
                    action = self._reset
                elif self.slowdowns > 0:
                    self.slowdowns -= 1
                    self.sabotaged += 1
                    action = self._slow_down
                else:
                    self.forwarded += 1
                    action = self._forward
            threading.Thread(target=action, args=(conn,), daemon=True).start()

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        conn.close()

    @staticmethod
    def _slow_down(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            remaining = int(length.group(1)) - len(body) if length else 0
            if re.search(rb"(?im)^expect:\s*100-continue", head):
                remaining = 0  # like S3: a final status instead of "100 Continue", so no body follows
            while remaining > 0:  # drain the body so the client reads our answer, not a reset
                chunk = conn.recv(65536)
                if not chunk:
                    return
                remaining -= len(chunk)
            conn.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))

    def _forward(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            for sock in (src, dst):  # one side hung up: end both directions
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(timeout=5)
        conn.close()
        upstream.close()


@pytest.fixture
def proxy_factory(s3_endpoint: str) -> Iterator[Any]:
    proxies: list[FlakyProxy] = []

    def make(**kwargs: int) -> FlakyProxy:
        proxies.append(FlakyProxy(s3_endpoint, **kwargs))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def _count_calls(store: S3Store, operation: str) -> list[int]:
    calls: list[int] = []
    store.client.meta.events.register(f"before-call.s3.{operation}", lambda **_: calls.append(1))
    return calls


def _flaky_store(bucket: str, proxy: FlakyProxy) -> S3Store:
    """botocore's own retries off, so every failure reaches the store's retry layer and can be counted."""
    return S3Store(bucket, "lake", make_client(proxy.url, max_attempts=0, retry_mode="standard"), retry=FAST)


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_put_get_round_trip_and_missing_key(s3_bucket: str) -> None:
    store = S3Store(s3_bucket, prefix="lake")
    payload = "Nguyễn Thị Hương\n".encode() + bytes(range(256))
    store.put("raw/a.bin", payload)
    assert store.get("raw/a.bin") == payload
    store.put("raw/a.bin", b"v2")  # overwrite is whole-object
    assert store.get("raw/a.bin") == b"v2"
    assert store.local_path("raw/a.bin") is None
    with pytest.raises(FileNotFoundError) as exc:
        store.get("raw/missing.bin")
    assert str(exc.value) == f"s3://{s3_bucket}/lake/raw/missing.bin"


def test_list_paginates_and_delete_batches_over_1000_keys(s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="werkzeug")  # 2,000 request lines would cost seconds
    store = S3Store(s3_bucket, prefix="big")
    keys = [f"t/dt=2026-11-24/part-{i:05d}.parquet" for i in range(1005)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    store.put("other/keep.txt", b"keep")

    list_calls = _count_calls(store, "ListObjectsV2")
    assert store.list("t/") == keys
    assert len(list_calls) == 2  # 1000 + 5: the continuation token was followed

    delete_calls = _count_calls(store, "DeleteObjects")
    store.delete(iter(keys))  # any iterable, consumed once
    assert len(delete_calls) == 2
    assert store.list("t/") == []
    assert store.list("") == ["other/keep.txt"]
    store.delete([])
    assert len(delete_calls) == 2  # nothing to delete, no request


def test_stores_sharing_a_bucket_see_only_their_prefix(s3_bucket: str) -> None:
    a, ab, root = S3Store(s3_bucket, "a"), S3Store(s3_bucket, "ab/"), S3Store(s3_bucket)
    a.put("x/1", b"a")
    ab.put("x/1", b"ab")
    assert a.list("") == ["x/1"]
    assert ab.list("x") == ["x/1"]
    assert a.get("x/1") == b"a"
    assert root.list("") == ["a/x/1", "ab/x/1"]
    a.delete(["x/1"])
    assert ab.get("x/1") == b"ab"
    assert root.list("") == ["ab/x/1"]


def test_from_url_parses_and_uses_endpoint_env(s3_bucket: str, s3_endpoint: str) -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    assert parse_url("s3://my-bucket/team/lake/") == ("my-bucket", "team/lake")
    for bad in ("http://bucket/x", "s3:///x", "bucket/x", "s3://b/x?versionId=1"):
        with pytest.raises(ValueError, match="s3://bucket"):
            parse_url(bad)

    store = S3Store.from_url(f"s3://{s3_bucket}/team/lake")
    assert (store.bucket, store.prefix) == (s3_bucket, "team/lake")
    assert store.describe("raw/x.parquet") == f"s3://{s3_bucket}/team/lake/raw/x.parquet"
    assert store.describe("") == f"s3://{s3_bucket}/team/lake/"
    assert store.client.meta.endpoint_url == s3_endpoint
    assert store.client.meta.config.retries == {"total_max_attempts": 11, "mode": "adaptive"}  # 10 retries
    assert (store.client.meta.config.connect_timeout, store.client.meta.config.read_timeout) == (5, 30)
    store.put("k", b"v")
    assert S3Store(s3_bucket).get("team/lake/k") == b"v"


def test_missing_bucket_is_a_config_error_not_a_missing_key(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(f"{s3_bucket}-typo", prefix="lake", retry=FAST)
    with pytest.raises(S3StoreError) as exc:
        store.get("raw/_manifest.json")  # must not read as "partition not committed"
    assert not isinstance(exc.value, FileNotFoundError)
    assert f"s3://{s3_bucket}-typo/lake/raw/_manifest.json" in str(exc.value)
    assert "does not exist" in str(exc.value)
    with pytest.raises(S3StoreError, match="NoSuchBucket"):
        store.list("raw/")
    assert store.retries == 0  # a config error is not retried


def test_connection_resets_are_retried(s3_bucket: str, proxy_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    proxy = proxy_factory(resets=3)
    store = _flaky_store(s3_bucket, proxy)
    secret = b"Tr\xe1\xba\xa7n V\xc4\x83n \xc4\x90\xe1\xbb\xa9c 0912345678"
    with caplog.at_level(logging.WARNING, logger="tasks.storage_s3"):
        store.put("raw/p.bin", secret)
    assert proxy.sabotaged == 3
    assert store.retries == 3
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert all(f"s3://{s3_bucket}/lake/raw/p.bin" in r.getMessage() for r in retries)
    assert not any("0912345678" in r.getMessage() or "Trần" in r.getMessage() for r in caplog.records)

    proxy.resets = 2
    reader = _flaky_store(s3_bucket, proxy)  # a fresh connection pool, so the resets hit this get
    assert reader.get("raw/p.bin") == secret
    assert (proxy.sabotaged, reader.retries) == (5, 2)


def test_http_503_slow_down_is_retried(s3_bucket: str, proxy_factory: Any) -> None:
    proxy = proxy_factory(slowdowns=2)
    store = _flaky_store(s3_bucket, proxy)
    store.put("raw/q.bin", b"data")
    assert (proxy.sabotaged, store.retries) == (2, 2)
    proxy.slowdowns = 2
    reader = _flaky_store(s3_bucket, proxy)
    assert reader.list("raw/") == ["raw/q.bin"]
    assert (proxy.sabotaged, reader.retries) == (4, 2)


def test_production_client_rides_out_a_reset(
    s3_bucket: str, proxy_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = proxy_factory(resets=2)
    monkeypatch.setenv(ENDPOINT_ENV, proxy.url)
    store = S3Store.from_url(f"s3://{s3_bucket}/lake")
    store.put("raw/r.bin", b"data")
    assert proxy.sabotaged == 2
    assert store.retries == 0  # botocore's adaptive retries absorbed it below the store
    assert S3Store(s3_bucket, "lake").get("raw/r.bin") == b"data"


def test_permanently_unavailable_endpoint_fails_clearly_within_budget(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv(ENDPOINT_ENV, dead)
    budget = RetryPolicy(budget_s=0.6, base_s=0.05, cap_s=0.2)
    store = S3Store(s3_bucket, "lake", make_client(dead, max_attempts=0, connect_timeout=1), retry=budget)
    started = time.monotonic()
    with pytest.raises(S3UnavailableError) as exc:
        store.put("raw/p.bin", b"data")
    elapsed = time.monotonic() - started
    assert elapsed < budget.budget_s + 1.5
    assert store.retries >= 2
    message = str(exc.value)
    assert f"s3://{s3_bucket}/lake/raw/p.bin" in message
    assert ENDPOINT_ENV in message and dead in message
    assert "EndpointConnectionError" in message

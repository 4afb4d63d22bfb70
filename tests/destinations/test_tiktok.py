"""TikTok customer file client against the local contract server, over real HTTP.

What must hold: TikTok receives files of SHA-256 hashes (phone as digits with country code, checked
against the official vector) whose ``file_signature`` is the MD5 of the bytes sent, updates always
name their action, no action leaves an audience under 1,000, body-code throttles inside HTTP 200 are
waited out, and auth, server and timeout failures end in the protocol's errors without the token.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tasks.destinations.audience import (
    MEMBER_COLUMNS,
    BatchRef,
    BatchRejected,
    DestinationAuthError,
    DestinationError,
    DestinationUnavailable,
)
from tasks.destinations.base import DESTINATIONS
from tasks.destinations.http import RetryOptions
from tasks.destinations.tiktok import TikTokCustomerFile, TikTokOptions
from tasks.sandbox.server import Fault, Response
from tasks.sandbox.tiktok import TikTokServer, envelope

TOKEN = "tt-access-token-secret-0123456789"
ADVERTISER = "7000"
VECTORS = json.loads(Path("/work/shared/test-vectors/hashing.json").read_text())["tiktok"]
FAST = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=5.0)
SHORT_TIMEOUT = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=0.5)

TikTokClientFactory = Callable[..., tuple[TikTokCustomerFile, list[float]]]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def member(key: str, email: str | None, phone: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(MEMBER_COLUMNS)
    row.update(customer_key=key, email=email, phone=phone, country="VN", ads_opt_in=True)
    return row


def people(n: int, start: int = 0) -> pd.DataFrame:
    rows = [member(f"K{i}", f"User{i}@Example.vn ", f"+8491{i:07d}") for i in range(start, start + n)]
    return pd.DataFrame(rows, columns=MEMBER_COLUMNS)


def email_hashes(n: int, start: int = 0) -> set[str]:
    return {sha(f"user{i}@example.vn") for i in range(start, start + n)}


def ref(op: str, seq: int = 1, batches: int = 1, total: int = 10) -> BatchRef:
    return BatchRef(plan_id="plan-t", operation=op, seq=seq, batches=batches, estimated_total=total)  # type: ignore[arg-type]


def make_server() -> TikTokServer:
    return TikTokServer(access_token=TOKEN)


@pytest.fixture
def tiktok_server(contract_server: TikTokServer) -> TikTokServer:
    return contract_server


@pytest.fixture
def tiktok_client(tiktok_server: TikTokServer, platform_client: Callable[..., Any]) -> TikTokClientFactory:
    def make(token: str = TOKEN, **options: Any) -> tuple[TikTokCustomerFile, list[float]]:
        client, sleeps = platform_client(
            TikTokCustomerFile,
            "tiktok_test",
            token,
            {"advertiser_id": ADVERTISER, "base_url": tiktok_server.base_url, "retry": FAST} | options,
        )
        return client, sleeps

    return make


def seeded(server: TikTokServer, n: int = 1_000, calculate_type: str = "EMAIL_SHA256") -> str:
    return server.seed_audience({sha(f"seed{i}") for i in range(n)}, ADVERTISER, calculate_type)


def updates(server: TikTokServer) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests_to("POST", "/open_api/v1.3/dmp/custom_audience/update/")]


def test_tiktok_create_append_remove_keeps_state(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory
) -> None:
    client, _ = tiktok_client()
    audience = client.ensure_audience("vip", "VIP customers", None)
    assert tiktok_server.audiences[audience].name == "VIP customers" and not tiktok_server.members(audience)
    assert client.ensure_audience("vip", "VIP customers", audience) == audience

    added = client.add(audience, people(1_200), ref("add"))
    assert len(added.accepted) == 1_200 and not added.failed
    assert added.accepted["K7"] == sha("user7@example.vn")  # remote_ref is the hash sent
    assert tiktok_server.members(audience) == email_hashes(1_200)

    gone = client.remove(
        audience,
        pd.DataFrame({"customer_key": ["K1", "K2"], "remote_ref": [sha("user1@example.vn"), sha("user2@example.vn")]}),
        ref("remove"),
    )
    assert sorted(gone.accepted) == ["K1", "K2"]
    assert tiktok_server.members(audience) == email_hashes(1_200) - email_hashes(2, start=1)
    assert [u["action"] for u in updates(tiktok_server)] == ["APPEND", "REMOVE"]  # never TikTok's default REPLACE
    assert sum(tiktok_server.added.values()) == 1_200 and sum(tiktok_server.removed.values()) == 2


def test_tiktok_file_is_signed_hashed_and_free_of_pii(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory
) -> None:
    client, _ = tiktok_client(identifier="PHONE_SHA256")
    audience = seeded(tiktok_server, calculate_type="PHONE_SHA256")
    vector = VECTORS[0]
    members = pd.DataFrame(
        [member("ARM", "arm@example.am", "+37493828222"), member("VN", "vn@example.vn", "+84912345678")],
        columns=MEMBER_COLUMNS,
    )
    result = client.add(audience, members, ref("add"))
    assert result.accepted == {"ARM": vector["sha256"], "VN": sha("84912345678")}  # digits with country code, no '+'
    upload = tiktok_server.requests_to("POST", "/open_api/v1.3/dmp/custom_audience/file/upload/")[-1]
    body = upload.body.decode()
    content = tiktok_server.uploads()[-1]
    assert content.decode().split() == sorted([vector["sha256"], sha("84912345678")])
    assert hashlib.md5(content).hexdigest() in body and "PHONE_SHA256" in body
    for raw in ("37493828222", "912345678", "arm@example.am", "vn@example.vn"):
        assert raw not in body
    assert TOKEN not in body  # the token travels in the Access-Token header only


def test_tiktok_server_checks_signature_and_hashing(tiktok_server: TikTokServer) -> None:
    def upload(content: bytes, signature: str) -> dict[str, Any]:
        response = httpx.post(
            f"{tiktok_server.url}/open_api/v1.3/dmp/custom_audience/file/upload/",
            headers={"Access-Token": TOKEN},
            data={"advertiser_id": ADVERTISER, "calculate_type": "EMAIL_SHA256", "file_signature": signature},
            files={"file": ("a.txt", content, "text/plain")},
        )
        assert response.status_code == 200  # TikTok reports errors inside the envelope
        return dict(response.json())

    good = (sha("a@b.vn") + "\n").encode()
    assert upload(good, hashlib.md5(good).hexdigest())["code"] == 0
    wrong = upload(good, hashlib.md5(b"something else").hexdigest())
    assert wrong["code"] == 40002 and "file_signature" in wrong["message"]
    raw = b"mary@example.com\n"
    unhashed = upload(raw, hashlib.md5(raw).hexdigest())
    assert unhashed["code"] == 40062 and "mary" not in json.dumps(unhashed)
    upper = (sha("a@b.vn").upper() + "\n").encode()
    assert upload(upper, hashlib.md5(upper).hexdigest())["code"] == 40062
    assert len(tiktok_server.files) == 1


def test_tiktok_min_audience_size_is_enforced(tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory) -> None:
    client, _ = tiktok_client()
    assert client.capabilities.min_audience_size == 1_000
    audience = seeded(tiktok_server, 1_000)
    seed_hash = sha("seed0")
    with pytest.raises(DestinationError, match="less than 1,000") as exc:
        client.remove(audience, pd.DataFrame({"customer_key": ["S0"], "remote_ref": [seed_hash]}), ref("remove"))
    assert not isinstance(exc.value, BatchRejected)  # no split of the batch can fix it
    assert len(tiktok_server.members(audience)) == 1_000 and not tiktok_server.removed

    fresh = client.ensure_audience("small", "Small segment", None)
    with pytest.raises(DestinationError, match="less than 1,000"):
        client.add(fresh, people(10), ref("add"))
    assert not tiktok_server.members(fresh)

    client.add(audience, people(1), ref("add"))  # 1,001 now: one removal is allowed
    client.remove(audience, pd.DataFrame({"customer_key": ["S0"], "remote_ref": [seed_hash]}), ref("remove"))
    assert len(tiktok_server.members(audience)) == 1_000


def test_tiktok_members_without_identifier_fail(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory
) -> None:
    client, _ = tiktok_client()
    audience = seeded(tiktok_server)
    members = pd.concat(
        [people(2), pd.DataFrame([member("NOMAIL", None, "+84912345678")], columns=MEMBER_COLUMNS)],
        ignore_index=True,
    )
    result = client.add(audience, members, ref("add"))
    assert sorted(result.accepted) == ["K0", "K1"] and "no usable email" in result.failed["NOMAIL"]
    bad = client.remove(audience, pd.DataFrame({"customer_key": ["X"], "remote_ref": ["x@y.vn"]}), ref("remove"))
    assert list(bad.failed) == ["X"] and not bad.accepted


@pytest.mark.parametrize("expire", [False, True])
def test_tiktok_auth_failure_does_not_leak_token(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory, expire: bool
) -> None:
    if expire:
        tiktok_server.expire_token()
        client, _ = tiktok_client()
    else:
        client, _ = tiktok_client(token="tt-wrong-token-987654321")
    audience = seeded(tiktok_server)
    with pytest.raises(DestinationAuthError, match="40102" if expire else "40105") as exc:
        client.add(audience, people(1), ref("add"))
    assert "tiktok_test" in str(exc.value)
    assert TOKEN not in str(exc.value) and "tt-wrong-token-987654321" not in str(exc.value)
    assert len(tiktok_server.recorded) == 1 and len(tiktok_server.members(audience)) == 1_000


@pytest.mark.parametrize("code", [40100, 40132])
def test_tiktok_throttle_in_body_waits_then_succeeds(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory, code: int
) -> None:
    client, sleeps = tiktok_client()
    audience = seeded(tiktok_server)
    tiktok_server.throttle(times=3, code=code, path="/open_api/v1.3/dmp/custom_audience/update/")
    result = client.add(audience, people(5), ref("add"))
    assert len(result.accepted) == 5 and len(tiktok_server.members(audience)) == 1_005
    assert client.http.retries == 3 and sleeps == pytest.approx([0.01, 0.02, 0.04])
    assert [r.faulted for r in tiktok_server.recorded] == [False, True, True, True, False]


def test_tiktok_server_errors_then_success(tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory) -> None:
    client, sleeps = tiktok_client()
    audience = seeded(tiktok_server)
    tiktok_server.server_errors(times=2, status=502)
    client.add(audience, people(1), ref("add"))
    assert client.http.retries == 2 and all(0 <= s <= 0.02 for s in sleeps)
    assert len(tiktok_server.members(audience)) == 1_001


def test_tiktok_timeout_then_success(tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory) -> None:
    client, _ = tiktok_client(retry=SHORT_TIMEOUT)
    audience = seeded(tiktok_server)
    tiktok_server.inject(  # slower than the 0.5 s client timeout
        Fault(Response(200, envelope(0, "OK")), delay=1.0, path="/open_api/v1.3/dmp/custom_audience/update/")
    )
    client.add(audience, people(3), ref("add"))
    assert client.http.retries == 1 and len(tiktok_server.members(audience)) == 1_003
    assert set(tiktok_server.added.values()) == {1}
    deadline = time.monotonic() + 3  # let the stalled answer be recorded before the next test resets
    while not any(r.faulted for r in tiktok_server.recorded) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_tiktok_retries_exhausted_is_unavailable(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory
) -> None:
    client, _ = tiktok_client()
    audience = seeded(tiktok_server)
    tiktok_server.throttle(times=10)
    with pytest.raises(DestinationUnavailable, match="gave up after 4 attempts"):
        client.add(audience, people(1), ref("add"))
    assert len(tiktok_server.members(audience)) == 1_000


def test_tiktok_unhashed_answer_is_batch_rejected(
    tiktok_server: TikTokServer, tiktok_client: TikTokClientFactory
) -> None:
    client, _ = tiktok_client()
    audience = seeded(tiktok_server)
    tiktok_server.inject(Fault(Response(200, envelope(40062, "PII not hashed"))))
    with pytest.raises(BatchRejected, match="40062"):
        client.add(audience, people(1), ref("add"))
    with pytest.raises(ValueError, match="at most 50000"):
        client.add(audience, people(50_001), ref("add"))


def test_tiktok_is_registered(tiktok_server: TikTokServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TIKTOK_DEFAULT", json.dumps({"password": TOKEN}))
    options = {"advertiser_id": ADVERTISER, "identifier": "PHONE_SHA256", "base_url": tiktok_server.url}
    client = DESTINATIONS.build("tiktok", "tiktok_customer_file", options, Path("destinations.yaml"))
    assert isinstance(client, TikTokCustomerFile) and client.capabilities.max_batch == 50_000
    client.close()


def test_tiktok_reads_the_token_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TIKTOK_NONE", raising=False)
    client = TikTokCustomerFile("t", TikTokOptions.model_validate({"connection": "tiktok_none", "advertiser_id": "1"}))
    client.close()  # built and closed without a credential
    with pytest.raises(DestinationAuthError, match="tiktok_none"):
        client.ensure_audience("vip", "VIP", None)

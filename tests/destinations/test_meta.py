"""Meta Custom Audiences client against the local Graph contract server, over real HTTP.

What must hold: Meta receives only hashes of Meta-normalized values (checked against the official
vectors), sessions number batches 1..n and flag only the last, replace swaps the audience only when its
session finishes, throttles in Graph's shape are waited out with the documented delay, and auth,
server and timeout failures end in the protocol's errors without leaking the token.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pandas as pd
import pytest

from tasks.destinations.audience import (
    MEMBER_COLUMNS,
    BatchRef,
    BatchRejected,
    DestinationAuthError,
    DestinationUnavailable,
)
from tasks.destinations.base import DESTINATIONS
from tasks.destinations.http import RetryOptions
from tasks.destinations.meta import MetaCustomAudience, MetaOptions
from tasks.sandbox.meta import MetaServer
from tasks.sandbox.server import Fault, Response

TOKEN = "EAAB-meta-secret-token-0123456789"
VECTORS = json.loads(Path("/work/shared/test-vectors/hashing.json").read_text())["meta_custom_audiences"]
MARY_EMAIL_SHA = next(v["sha256"] for v in VECTORS if v["field"] == "EMAIL" and v["raw"] == "mary@example.com")
US_PHONE_SHA = next(v["sha256"] for v in VECTORS if v["field"] == "PHONE")
FAST = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=5.0)
SHORT_TIMEOUT = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=0.5)

MetaClientFactory = Callable[..., tuple[MetaCustomAudience, list[float]]]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def member(key: str, email: str | None, phone: str | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(MEMBER_COLUMNS)
    row.update(customer_key=key, email=email, phone=phone, country="VN", ads_opt_in=True)
    row.update(extra)
    return row


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=MEMBER_COLUMNS)


def people(n: int, start: int = 0) -> pd.DataFrame:
    return frame(*(member(f"K{i}", f"user{i}@example.vn", f"+8491{i:07d}") for i in range(start, start + n)))


def ref(op: str, seq: int = 1, batches: int = 1, total: int = 10, plan: str = "plan-1") -> BatchRef:
    return BatchRef(plan_id=plan, operation=op, seq=seq, batches=batches, estimated_total=total)  # type: ignore[arg-type]


def refs_frame(accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(accepted), "remote_ref": list(accepted.values())})


def make_server() -> MetaServer:
    return MetaServer(access_token=TOKEN)


@pytest.fixture
def meta_server(contract_server: MetaServer) -> MetaServer:
    return contract_server


@pytest.fixture
def meta_client(meta_server: MetaServer, platform_client: Callable[..., Any]) -> MetaClientFactory:
    def make(token: str = TOKEN, **options: Any) -> tuple[MetaCustomAudience, list[float]]:
        client, sleeps = platform_client(
            MetaCustomAudience,
            "meta_test",
            token,
            {"ad_account_id": "act_1234", "base_url": meta_server.url, "retry": FAST} | options,
        )
        return client, sleeps

    return make


def sessions(server: MetaServer, path_suffix: str = "/users") -> list[dict[str, Any]]:
    return [
        json.loads(form["session"])
        for rec, form in zip(server.recorded, server.form_bodies(), strict=True)
        if rec.request.path.endswith(path_suffix) and "session" in form
    ]


def test_meta_create_add_remove_keeps_server_state(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, _ = meta_client()
    audience = client.ensure_audience("vip", "VIP customers", None)
    assert meta_server.names[audience] == "VIP customers"
    create = meta_server.form_bodies()[0]
    assert create["subtype"] == "CUSTOM" and create["customer_file_source"] == "USER_PROVIDED_ONLY"
    assert client.ensure_audience("vip", "VIP customers", audience) == audience  # known id: nothing created

    added = client.add(audience, people(3), ref("add", total=3))
    assert sorted(added.accepted) == ["K0", "K1", "K2"] and not added.failed and added.unmatched == 0
    assert meta_server.hashes(audience, "EMAIL") == {sha(f"user{i}@example.vn") for i in range(3)}
    assert meta_server.hashes(audience, "PHONE") == {sha(f"8491{i:07d}") for i in range(3)}

    gone = client.remove(audience, refs_frame({"K1": added.accepted["K1"]}), ref("remove", total=1))
    assert list(gone.accepted) == ["K1"]
    assert meta_server.hashes(audience, "EMAIL") == {sha("user0@example.vn"), sha("user2@example.vn")}
    assert meta_server.requests_to("DELETE")  # removal is DELETE /{audience}/users
    assert sum(meta_server.added.values()) == 3 and sum(meta_server.removed.values()) == 1


def test_meta_hashes_match_official_vectors_and_no_raw_pii_is_sent(
    meta_server: MetaServer, meta_client: MetaClientFactory
) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    mary = member(
        "MARY", " Mary@Example.com ", "+15559876543", first_name="Mary", last_name="Nguyễn", city="Hồ Chí Minh"
    )
    viet = member("VIET", "an.tran@gmail.com", "+84912345678", first_name="An", last_name="Trần")
    result = client.add(audience, frame(mary, viet), ref("add"))

    payload = json.loads(meta_server.form_bodies()[-1]["payload"])
    assert payload["schema"] == ["EMAIL", "PHONE", "FN", "LN", "CT", "COUNTRY"]
    mary_row, viet_row = payload["data"]
    assert mary_row[0] == MARY_EMAIL_SHA  # official vector: trim + lowercase
    assert mary_row[1] == US_PHONE_SHA  # official vector: digits with country code
    assert mary_row[2:] == [sha("mary"), sha("nguyễn"), sha("hồchíminh"), sha("vn")]
    assert viet_row[0] == sha("an.tran@gmail.com")  # no Gmail dot rule at Meta
    assert viet_row[1] == sha("84912345678")  # no '+'
    assert json.loads(result.accepted["MARY"]) == {
        "EMAIL": MARY_EMAIL_SHA,
        "PHONE": US_PHONE_SHA,
        "FN": sha("mary"),
        "LN": sha("nguyễn"),
        "CT": sha("hồchíminh"),
        "COUNTRY": sha("vn"),
    }
    sent = " ".join(unquote_plus(r.request.body.decode()) for r in meta_server.recorded)
    for raw in ("mary@example.com", "Mary@Example.com", "an.tran", "5559876543", "912345678", "Nguyễn", "Trần"):
        assert raw not in sent
    assert TOKEN not in " ".join(r.request.path for r in meta_server.recorded)  # never in a URL


def test_meta_session_fields_across_three_batches(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    for seq in (1, 2, 3):
        client.add(audience, people(2, start=seq * 10), ref("add", seq=seq, batches=3, total=6))
    sent = sessions(meta_server)
    session_id = ref("add").session_id
    assert [s["batch_seq"] for s in sent] == [1, 2, 3]
    assert [s["last_batch_flag"] for s in sent] == [False, False, True]
    assert {s["session_id"] for s in sent} == {session_id} and 0 < session_id < 2**63
    assert {s["estimated_num_total"] for s in sent} == {6}
    assert len(meta_server.members(audience)) == 6


def test_meta_replace_swaps_audience_when_session_finishes(
    meta_server: MetaServer, meta_client: MetaClientFactory
) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    client.add(audience, people(3), ref("add", plan="p0"))  # K0, K1, K2
    client.replace(audience, people(2, start=2), ref("replace", seq=1, batches=2, plan="p1"))  # K2, K3
    assert meta_server.hashes(audience) == {sha(f"user{i}@example.vn") for i in range(3)}  # not yet swapped

    other, _ = meta_client()  # a second plan may not start a replace while this one is open
    with pytest.raises(DestinationUnavailable, match="1870145"):
        other.replace(audience, people(1, start=9), ref("replace", seq=1, batches=1, plan="p2"))

    client.replace(audience, people(2, start=4), ref("replace", seq=2, batches=2, plan="p1"))  # K4, K5
    assert meta_server.hashes(audience) == {sha(f"user{i}@example.vn") for i in (2, 3, 4, 5)}
    assert sessions(meta_server, "/usersreplace")[-1]["last_batch_flag"] is True
    assert len(meta_server.removed) == 2 and sum(meta_server.removed.values()) == 2  # K0 and K1 dropped


def test_meta_finished_session_on_resume_counts_as_applied(
    meta_server: MetaServer, meta_client: MetaClientFactory
) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    first = client.add(audience, people(2), ref("add"))
    resumed, _ = meta_client()  # a new run resends the batch whose answer was lost
    again = resumed.add(audience, people(2), ref("add"))
    assert again.accepted == first.accepted
    assert meta_server.recorded[-1].status == 400  # Meta said 2650/1870159 ...
    assert set(meta_server.added.values()) == {1}  # ... and nobody was added twice


def test_meta_timed_out_session_restarts_for_adds_but_stops_a_replace(
    meta_server: MetaServer, meta_client: MetaClientFactory
) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    client.add(audience, people(1), ref("add", seq=1, batches=2))
    meta_server.expire_sessions()
    result = client.add(audience, people(1, start=1), ref("add", seq=2, batches=2))
    assert list(result.accepted) == ["K1"]
    restarted = sessions(meta_server)[-1]
    assert restarted["batch_seq"] == 1 and restarted["last_batch_flag"] is True
    assert restarted["session_id"] != ref("add").session_id
    assert len(meta_server.members(audience)) == 2

    client.replace(audience, people(1), ref("replace", seq=1, batches=2, plan="p9"))
    meta_server.expire_sessions()
    with pytest.raises(DestinationUnavailable, match="plan the sync again"):
        client.replace(audience, people(1, start=1), ref("replace", seq=2, batches=2, plan="p9"))


def test_meta_invalid_rows_are_counted_not_itemised(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    meta_server.invalid_hashes = {sha("user1@example.vn")}
    broken = member("BAD", "not-an-email", "12")  # nothing usable: failed, never sent
    result = client.add(audience, pd.concat([people(3), frame(broken)], ignore_index=True), ref("add"))
    assert sorted(result.accepted) == ["K0", "K1", "K2"] and result.unmatched == 1
    assert list(result.failed) == ["BAD"]
    assert len(json.loads(meta_server.form_bodies()[-1]["payload"])["data"]) == 3


@pytest.mark.parametrize("status", [400, 401])
def test_meta_auth_failure_names_connection_not_token(
    meta_server: MetaServer, meta_client: MetaClientFactory, status: int
) -> None:
    meta_server.auth_status = status  # Graph answers code 190 with HTTP 400, sometimes 401
    client, _ = meta_client(token="EAAB-wrong-token-987654321")
    audience = meta_server.create_audience()
    with pytest.raises(DestinationAuthError) as exc:
        client.add(audience, people(2), ref("add"))
    assert "meta_test" in str(exc.value) and ("190" in str(exc.value) or "HTTP 401" in str(exc.value))
    assert "EAAB-wrong-token-987654321" not in str(exc.value) and TOKEN not in str(exc.value)
    assert not meta_server.members(audience) and len(meta_server.recorded) == 1  # not retried


@pytest.mark.parametrize(
    ("code", "regain", "expected"),
    [(17, 0, [0.01, 0.02, 0.04]), (613, 0, [0.01, 0.02, 0.04]), (4, 0, [0.01, 0.02, 0.04]), (17, 5, [0.5] * 3)],
)
def test_meta_throttle_storm_waits_then_succeeds(
    meta_server: MetaServer, meta_client: MetaClientFactory, code: int, regain: int, expected: list[float]
) -> None:
    client, sleeps = meta_client()
    audience = meta_server.create_audience()
    meta_server.throttle(times=3, code=code, path="/v23.0/", regain_minutes=regain)
    result = client.add(audience, people(2), ref("add"))
    assert len(result.accepted) == 2 and len(meta_server.members(audience)) == 2
    assert client.http.retries == 3
    # no hint: base_delay doubling per consecutive throttle; with Meta's regain-access hint (5 min): capped
    assert sleeps == pytest.approx(expected)
    assert [r.faulted for r in meta_server.recorded] == [True, True, True, False]


def test_meta_server_errors_then_success(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, sleeps = meta_client()
    audience = meta_server.create_audience()
    meta_server.server_errors(times=2, status=503)
    client.add(audience, people(1), ref("add"))
    assert client.http.retries == 2 and len(sleeps) == 2 and all(0 <= s <= 0.02 for s in sleeps)
    assert len(meta_server.members(audience)) == 1


def test_meta_timeout_then_success(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, _ = meta_client(retry=SHORT_TIMEOUT)
    audience = meta_server.create_audience()
    meta_server.inject(Fault(Response(200, {}), times=1, delay=1.0))  # slower than the 0.5 s client timeout
    client.add(audience, people(2), ref("add"))
    assert client.http.retries == 1
    assert set(meta_server.added.values()) == {1} and len(meta_server.members(audience)) == 2
    wait_for_stalled(meta_server)


def wait_for_stalled(server: MetaServer) -> None:
    """The stalled answer is recorded when its sleep ends; wait so it cannot land in the next test."""
    deadline = time.monotonic() + 3
    while not any(r.faulted for r in server.recorded) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_meta_retries_exhausted_is_unavailable(meta_server: MetaServer, meta_client: MetaClientFactory) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    meta_server.throttle(times=10, code=613)
    with pytest.raises(DestinationUnavailable, match="gave up after 4 attempts"):
        client.add(audience, people(1), ref("add"))
    assert not meta_server.members(audience)


def test_meta_server_enforces_hashing_limits_and_payload(meta_server: MetaServer) -> None:
    audience = meta_server.create_audience()
    session = json.dumps({"session_id": 7, "batch_seq": 1, "last_batch_flag": True, "estimated_num_total": 1})

    def post(payload: Any) -> httpx.Response:
        data = {"payload": payload if isinstance(payload, str) else json.dumps(payload), "session": session}
        return httpx.post(f"{meta_server.url}/v23.0/{audience}/users", data=data | {"access_token": TOKEN})

    raw = post({"schema": ["EMAIL"], "data": [["mary@example.com"]]})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == 100
    assert "mary@example.com" not in raw.text
    upper = post({"schema": ["EMAIL"], "data": [[MARY_EMAIL_SHA.upper()]]})
    assert upper.status_code == 400
    too_many = post({"schema": ["EMAIL"], "data": [[sha(str(i))] for i in range(10_001)]})
    assert too_many.status_code == 400 and "10000" in too_many.json()["error"]["message"]
    assert post("{not json").status_code == 400
    ragged = post({"schema": ["EMAIL", "PHONE"], "data": [[MARY_EMAIL_SHA]]})
    assert ragged.status_code == 400
    assert not meta_server.members(audience)


def test_meta_client_refuses_oversized_batch_and_bad_refs(
    meta_server: MetaServer, meta_client: MetaClientFactory
) -> None:
    client, _ = meta_client()
    audience = meta_server.create_audience()
    with pytest.raises(ValueError, match="at most 10000"):
        client.add(audience, people(10_001), ref("add"))
    result = client.remove(audience, pd.DataFrame({"customer_key": ["X"], "remote_ref": ["x@y.com"]}), ref("remove"))
    assert list(result.failed) == ["X"] and not meta_server.recorded
    meta_server.inject(
        Fault(Response(400, {"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}))
    )
    with pytest.raises(BatchRejected, match="100"):
        client.add(audience, people(1), ref("add"))


def test_meta_is_registered_with_schema_option(meta_server: MetaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_META_DEFAULT", json.dumps({"password": TOKEN}))
    options = {"ad_account_id": "1234", "schema": ["EMAIL", "PHONE"], "base_url": meta_server.url, "replace": True}
    client = DESTINATIONS.build("meta", "meta_custom_audience", options, Path("destinations.yaml"))
    assert isinstance(client, MetaCustomAudience)
    assert client.options.keys == ["EMAIL", "PHONE"] and client.wants_replace
    assert client.capabilities.max_batch == 10_000 and client.capabilities.supports_replace
    client.close()


def test_meta_reads_the_token_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_META_NONE", raising=False)
    client = MetaCustomAudience("m", MetaOptions.model_validate({"connection": "meta_none", "ad_account_id": "1"}))
    client.close()  # built and closed without a credential
    with pytest.raises(DestinationAuthError, match="meta_none"):
        client.ensure_audience("vip", "VIP", None)

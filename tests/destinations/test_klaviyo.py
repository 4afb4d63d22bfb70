"""Klaviyo client against the Klaviyo contract server over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pytest

from tasks.destinations.audience import BatchRef, BatchRejected, DestinationAuthError, DestinationUnavailable
from tasks.destinations.http import RetryOptions
from tasks.destinations.klaviyo import Klaviyo
from tasks.sandbox.klaviyo import KlaviyoServer, error
from tasks.sandbox.server import Fault, Response

ADD = BatchRef("plan-1", "add", 1, 1, 3)
REMOVE = BatchRef("plan-1", "remove", 1, 1, 3)
POLL = 0.001  # distinct from every retry delay in these tests, so recorded sleeps tell them apart
Members = Callable[..., pd.DataFrame]


def retry(**options: float) -> RetryOptions:
    return RetryOptions.model_validate({"max_attempts": 4, "base_delay": 0.01, "timeout": 1.0, **options})


def client(server: KlaviyoServer, retry_options: RetryOptions | None = None, **options: Any) -> Klaviyo:
    opts = Klaviyo.Options.model_validate(
        {
            "connection": "klaviyo_test",
            "base_url": server.base_url,
            "poll_interval": POLL,
            "poll_timeout": 5.0,
            "retry": retry_options or retry(),
            **options,
        }
    )
    kl = Klaviyo("klaviyo_vip", opts)
    return kl


def refs(accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(accepted), "remote_ref": list(accepted.values())})


def test_add_then_remove_by_profile_id(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server)
    list_id = kl.ensure_audience("vip", "VIP customers", None)
    assert klaviyo_server.lists[list_id].name == "vip"
    assert kl.ensure_audience("vip", "VIP customers", None) == list_id  # found by name, not created twice

    result = kl.add(list_id, esp_members("a@example.com", "B@Example.com", "c@example.com"), ADD)

    assert set(result.accepted) == {"c0", "c1", "c2"} and not result.failed and not result.suppressed
    assert result.accepted["c1"] == klaviyo_server.profile_id("b@example.com")  # remote_ref = profile id
    assert klaviyo_server.list_emails(list_id) == {"a@example.com", "b@example.com", "c@example.com"}
    profile = klaviyo_server.profiles[result.accepted["c0"]]
    assert profile["phone_number"] == "+84912340000" and profile["first_name"] == "An"
    assert profile["location"] == {"city": "Hà Nội", "country": "VN"}
    for request in klaviyo_server.recorded:
        assert request.request.header("revision") == "2025-07-15"
    job = klaviyo_server.requests_to("POST", "/api/profile-bulk-import-jobs")[0]
    assert job.header("Content-Type") == "application/vnd.api+json"
    assert "relationships" not in job.json()["data"]  # listed only after the consent check

    removed = kl.remove(list_id, refs({"c0": result.accepted["c0"], "c1": result.accepted["c1"]}), REMOVE)

    assert removed.accepted == {"c0": result.accepted["c0"], "c1": result.accepted["c1"]}
    assert klaviyo_server.list_emails(list_id) == {"c@example.com"}
    assert set(klaviyo_server.added.values()) == {1}
    assert klaviyo_server.removed == {"a@example.com": 1, "b@example.com": 1}
    kl.close()


def test_configured_list_is_used_for_every_segment(klaviyo_server: KlaviyoServer) -> None:
    fixed = klaviyo_server.create_list("Everyone")
    kl = client(klaviyo_server, list_id=fixed)
    assert kl.ensure_audience("vip", "VIP", None) == fixed
    assert not klaviyo_server.recorded  # no request needed


def test_import_job_is_polled_to_completion(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    klaviyo_server.poll_steps = 4
    kl = client(klaviyo_server)
    sleeps: list[float] = []
    kl.sleep = sleeps.append
    list_id = kl.ensure_audience("vip", "VIP", None)

    result = kl.add(list_id, esp_members("a@example.com"), ADD)

    assert set(result.accepted) == {"c0"}
    assert len(klaviyo_server.requests_to("GET", "/api/profile-bulk-import-jobs/")) == 4
    assert sleeps == [POLL] * 3


def test_import_job_that_never_finishes_is_unavailable(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    klaviyo_server.stuck = True
    kl = client(klaviyo_server, poll_timeout=0.01)
    kl.sleep = lambda seconds: None
    list_id = kl.ensure_audience("vip", "VIP", None)

    with pytest.raises(DestinationUnavailable, match="still 'queued'") as caught:
        kl.add(list_id, esp_members("a@example.com"), ADD)
    assert "@" not in str(caught.value)
    assert not klaviyo_server.added


def test_partial_failures_map_to_failed_and_suppressed(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    server = klaviyo_server
    server.invalid_emails.add("fake@example.com")
    server.unsubscribed.add("unsub@example.com")
    server.bounced.add("bounced@example.com")
    server.subscribed.add("ok@example.com")
    kl = client(server)
    list_id = kl.ensure_audience("vip", "VIP", None)
    members = esp_members("fake@example.com", "unsub@example.com", "bounced@example.com", "ok@example.com", None)
    members.loc[3, "phone"] = "not a phone"  # dropped, not sent: it would fail the whole profile

    result = kl.add(list_id, members, ADD)

    assert set(result.accepted) == {"c3"}
    assert set(result.failed) == {"c0", "c4"}
    assert set(result.suppressed) == {"c1", "c2"}
    assert "unsubscribed" in result.suppressed["c1"] and "HARD_BOUNCE" in result.suppressed["c2"]
    assert "Invalid email" in result.failed["c0"]
    for reason in [*result.failed.values(), *result.suppressed.values()]:
        assert "@" not in reason
    assert server.list_emails(list_id) == {"ok@example.com"}  # suppressed profiles never joined the list
    assert "phone_number" not in server.profiles[result.accepted["c3"]]


def test_lookups_and_import_errors_are_paged(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    emails = [f"m{i}@example.com" for i in range(250)]
    klaviyo_server.invalid_emails.update(emails[:130])
    kl = client(klaviyo_server)
    list_id = kl.ensure_audience("vip", "VIP", None)

    result = kl.add(list_id, esp_members(*emails, phones=False), ADD)

    assert len(result.failed) == 130 and len(result.accepted) == 120
    error_pages = [r for r in klaviyo_server.requests_to("GET") if r.path.endswith("/import-errors/")]
    assert len(error_pages) == 2  # 130 errors, 100 a page, next link followed
    assert len(klaviyo_server.requests_to("GET", "/api/profiles")) == 2  # 120 addresses, 100 per any() filter
    assert len(klaviyo_server.list_emails(list_id)) == 120


def test_auth_failure_names_the_connection_not_the_key(
    klaviyo_server: KlaviyoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KLAVIYO_TEST", json.dumps({"password": "pk_wrong_secret_value"}))
    kl = client(klaviyo_server)
    with pytest.raises(DestinationAuthError) as caught:
        kl.ensure_audience("vip", "VIP", None)
    message = str(caught.value)
    assert "klaviyo_test" in message and "not_authenticated" in message
    assert "pk_wrong_secret_value" not in message


def test_server_enforces_headers_and_limits(klaviyo_server: KlaviyoServer) -> None:
    server = klaviyo_server
    good = {
        "Authorization": f"Klaviyo-API-Key {server.api_key}",
        "revision": "2025-07-15",
        "Content-Type": "application/vnd.api+json",
    }
    list_id = server.create_list("t")

    def post(path: str, body: Any, headers: dict[str, str] = good) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", content=json.dumps(body), headers=headers)

    profiles = [{"type": "profile", "attributes": {"email": f"m{i}@example.com"}} for i in range(10_001)]
    job = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}}
    assert post("/api/profile-bulk-import-jobs/", job, {**good, "Authorization": ""}).status_code == 401
    no_revision = post("/api/profile-bulk-import-jobs/", job, {k: v for k, v in good.items() if k != "revision"})
    assert no_revision.status_code == 400 and "revision" in no_revision.json()["errors"][0]["detail"]
    plain_json = post("/api/profile-bulk-import-jobs/", job, {**good, "Content-Type": "application/json"})
    assert plain_json.status_code == 415
    over = post("/api/profile-bulk-import-jobs/", job)
    assert over.status_code == 400 and over.json()["errors"][0]["code"] == "invalid"
    job["data"]["attributes"]["profiles"]["data"] = profiles[:10_000]  # type: ignore[index]
    assert post("/api/profile-bulk-import-jobs/", job).status_code == 202
    ids = [{"type": "profile", "id": f"P{i}"} for i in range(1_001)]
    assert post(f"/api/lists/{list_id}/relationships/profiles/", {"data": ids}).status_code == 400
    assert post(f"/api/lists/{list_id}/relationships/profiles/", {"data": [{"id": "x"}]}).status_code == 400


def test_throttle_storm_honours_retry_after(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server, retry(max_attempts=5))
    sleeps: list[float] = []
    kl.sleep = sleeps.append
    list_id = kl.ensure_audience("vip", "VIP", None)
    klaviyo_server.throttle(times=3, retry_after=7)

    result = kl.add(list_id, esp_members("a@example.com", "b@example.com"), ADD)

    assert set(result.accepted) == {"c0", "c1"}
    assert kl.retries == 3
    assert [s for s in sleeps if s != POLL] == [7.0, 7.0, 7.0]  # the header's wait, not the tiny backoff
    assert set(klaviyo_server.added.values()) == {1}


def test_server_errors_then_success(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server)
    list_id = kl.ensure_audience("vip", "VIP", None)
    boom = error(500, "internal_error", "Internal error.", "Something went wrong.")
    klaviyo_server.inject(Fault(boom, times=2, path="/api/profiles"))

    result = kl.add(list_id, esp_members("a@example.com"), ADD)

    assert set(result.accepted) == {"c0"} and kl.retries == 2


def test_timeout_then_success(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server, retry(max_attempts=3, timeout=0.3))
    list_id = kl.ensure_audience("vip", "VIP", None)
    klaviyo_server.inject(Fault(Response(204), delay=0.8, path=f"/api/lists/{list_id}/relationships"))

    result = kl.add(list_id, esp_members("a@example.com"), ADD)

    assert set(result.accepted) == {"c0"} and kl.retries == 1
    assert klaviyo_server.added == {"a@example.com": 1}


def test_retries_exhausted_raise_unavailable(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server, retry(max_attempts=3))
    kl.sleep = lambda seconds: None
    list_id = kl.ensure_audience("vip", "VIP", None)
    klaviyo_server.throttle(times=10, path="/api/profiles")

    with pytest.raises(DestinationUnavailable) as caught:
        kl.add(list_id, esp_members("a@example.com"), ADD)
    assert "klaviyo_test" in str(caught.value) and "@" not in str(caught.value)


def test_whole_batch_400_is_rejected_without_personal_data(klaviyo_server: KlaviyoServer, esp_members: Members) -> None:
    kl = client(klaviyo_server)
    list_id = kl.ensure_audience("vip", "VIP", None)
    bad = error(400, "invalid", "Invalid input.", "a@example.com: invalid profile", "/data/attributes/profiles/data/0")
    klaviyo_server.inject(Fault(bad, method="POST", path="/api/profile-bulk-import-jobs"))

    with pytest.raises(BatchRejected) as caught:
        kl.add(list_id, esp_members("a@example.com"), ADD)
    assert "invalid" in str(caught.value) and "@" not in str(caught.value)

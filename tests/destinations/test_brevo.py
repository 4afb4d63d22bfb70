"""Brevo client against the Brevo contract server over real HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pydantic
import pytest

from tasks.destinations.audience import BatchRef, BatchRejected, DestinationAuthError, DestinationUnavailable
from tasks.destinations.brevo import Brevo
from tasks.destinations.http import RetryOptions
from tasks.sandbox.brevo import BrevoServer, error
from tasks.sandbox.server import Fault, Response

ADD = BatchRef("plan-1", "add", 1, 1, 3)
REMOVE = BatchRef("plan-1", "remove", 1, 1, 3)
POLL = 0.001  # distinct from every retry delay in these tests, so recorded sleeps tell them apart
Members = Callable[..., pd.DataFrame]


def retry(**options: float) -> RetryOptions:
    return RetryOptions.model_validate({"max_attempts": 4, "base_delay": 0.01, "timeout": 1.0, **options})


def client(server: BrevoServer, retry_options: RetryOptions | None = None, **options: Any) -> Brevo:
    opts = Brevo.Options.model_validate(
        {
            "connection": "brevo_test",
            "base_url": server.base_url,
            "folder_id": 1,
            "poll_interval": POLL,
            "poll_timeout": 5.0,
            "retry": retry_options or retry(),
            **options,
        }
    )
    return Brevo("brevo_vip", opts)


def refs(accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(accepted), "remote_ref": list(accepted.values())})


def test_add_then_remove(brevo_server: BrevoServer, esp_members: Members) -> None:
    bv = client(brevo_server)
    list_id = bv.ensure_audience("vip", "VIP customers", None)
    assert brevo_server.lists[int(list_id)].name == "vip" and brevo_server.lists[int(list_id)].folder_id == 1
    assert bv.ensure_audience("vip", "VIP customers", None) == list_id

    result = bv.add(list_id, esp_members("a@example.com", "B@example.com", "c@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com", "c1": "b@example.com", "c2": "c@example.com"}
    assert brevo_server.list_emails(list_id) == {"a@example.com", "b@example.com", "c@example.com"}
    attributes = brevo_server.contacts["a@example.com"].attributes
    assert attributes == {"FIRSTNAME": "An", "LASTNAME": "Nguyễn", "SMS": "+84912340000"}
    (imported,) = brevo_server.requests_to("POST", "/v3/contacts/import")
    body = imported.json()
    assert body["listIds"] == [int(list_id)] and body["emptyContactsAttributes"] is False
    assert "emailBlacklist" not in body  # the import can never touch an opt-out

    removed = bv.remove(list_id, refs({"c0": "a@example.com", "c1": "b@example.com", "c9": "gone@example.com"}), REMOVE)

    assert removed.accepted == {"c0": "a@example.com", "c1": "b@example.com", "c9": "gone@example.com"}
    assert brevo_server.list_emails(list_id) == {"c@example.com"}
    assert set(brevo_server.added.values()) == {1}
    assert brevo_server.removed == {"a@example.com": 1, "b@example.com": 1}
    bv.close()


def test_configured_list_and_options_validation(brevo_server: BrevoServer) -> None:
    fixed = brevo_server.create_list("Everyone")
    bv = client(brevo_server, list_id=fixed, folder_id=None)
    assert bv.ensure_audience("vip", "VIP", None) == str(fixed)
    assert not brevo_server.recorded
    with pytest.raises(pydantic.ValidationError, match="list_id"):
        Brevo.Options.model_validate({"connection": "brevo_test"})
    with pytest.raises(pydantic.ValidationError, match="not a member column"):
        Brevo.Options.model_validate({"folder_id": 1, "attributes": {"shoe_size": "SHOE"}})


def test_import_is_polled_to_completion(brevo_server: BrevoServer, esp_members: Members) -> None:
    brevo_server.poll_steps = 3
    bv = client(brevo_server)
    sleeps: list[float] = []
    bv.sleep = sleeps.append
    list_id = bv.ensure_audience("vip", "VIP", None)

    result = bv.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"}
    assert len(brevo_server.requests_to("GET", "/v3/processes/")) == 3
    assert sleeps == [POLL, POLL]


def test_import_that_never_finishes_is_unavailable(brevo_server: BrevoServer, esp_members: Members) -> None:
    brevo_server.stuck = True
    bv = client(brevo_server, poll_timeout=0.01)
    bv.sleep = lambda seconds: None
    list_id = bv.ensure_audience("vip", "VIP", None)
    with pytest.raises(DestinationUnavailable, match="still 'queued'"):
        bv.add(list_id, esp_members("a@example.com"), ADD)


def test_partial_failures_map_to_failed_and_suppressed(brevo_server: BrevoServer, esp_members: Members) -> None:
    server = brevo_server
    server.seed("optout@example.com", blacklisted=True)
    server.invalid_emails.add("fake@example.com")
    bv = client(server)
    list_id = bv.ensure_audience("vip", "VIP", None)
    server.seed("already@example.com", list_id=list_id)  # listed by hand earlier
    server.added.clear()
    members = esp_members("optout@example.com", "fake@example.com", "ok@example.com", "already@example.com", None)

    result = bv.add(list_id, members, ADD)

    assert result.accepted == {"c2": "ok@example.com", "c3": "already@example.com"}
    assert set(result.suppressed) == {"c0"} and "blacklisted" in result.suppressed["c0"]
    assert set(result.failed) == {"c1", "c4"}
    for reason in [*result.failed.values(), *result.suppressed.values()]:
        assert "@" not in reason
    lookups = [r for r in server.requests_to("GET", "/v3/contacts/") if r.path != "/v3/contacts/lists"]
    assert len(lookups) == 2  # looked up only the two failures
    assert server.contacts["optout@example.com"].email_blacklisted
    assert server.list_emails(list_id) == {"ok@example.com", "already@example.com"}
    assert server.added == {"ok@example.com": 1}


def test_auth_failure_names_the_connection_not_the_key(
    brevo_server: BrevoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BREVO_TEST", json.dumps({"password": "xkeysib-wrong-secret"}))
    bv = client(brevo_server)
    with pytest.raises(DestinationAuthError) as caught:
        bv.ensure_audience("vip", "VIP", None)
    message = str(caught.value)
    assert "brevo_test" in message and "Key not found" in message and "wrong-secret" not in message


def test_server_enforces_auth_and_limits(brevo_server: BrevoServer) -> None:
    server = brevo_server
    list_id = server.create_list("t")
    headers = {"api-key": server.api_key}
    url = f"{server.base_url}/contacts/lists/{list_id}/contacts/add"
    emails = [f"m{i}@example.com" for i in range(151)]

    missing = httpx.post(url, json={"emails": emails[:1]})
    assert missing.status_code == 401 and missing.json() == {"code": "unauthorized", "message": "Key not found"}
    over = httpx.post(url, json={"emails": emails}, headers=headers)
    assert over.status_code == 400 and over.json()["code"] == "out_of_range"
    ok = httpx.post(url, json={"emails": emails[:150]}, headers=headers)
    assert ok.status_code == 201 and len(ok.json()["contacts"]["failure"]) == 150  # no such contacts yet
    no_list = httpx.post(
        f"{server.base_url}/contacts/import", json={"jsonBody": [{"email": "a@b.co"}]}, headers=headers
    )
    assert no_list.status_code == 400 and no_list.json()["code"] == "missing_parameter"


def test_throttle_storm_honours_the_reset_header(brevo_server: BrevoServer, esp_members: Members) -> None:
    bv = client(brevo_server, retry(max_attempts=5))
    sleeps: list[float] = []
    bv.sleep = sleeps.append
    list_id = bv.ensure_audience("vip", "VIP", None)
    brevo_server.throttle(times=3, reset_in=3)

    result = bv.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and bv.retries == 3
    assert [s for s in sleeps if s != POLL] == [3.0, 3.0, 3.0]
    assert brevo_server.added == {"a@example.com": 1}


def test_server_errors_then_success(brevo_server: BrevoServer, esp_members: Members) -> None:
    bv = client(brevo_server)
    list_id = bv.ensure_audience("vip", "VIP", None)
    brevo_server.inject(Fault(error(502, "bad_gateway", "Bad gateway"), times=2, path="/v3/contacts/lists/"))

    result = bv.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and bv.retries == 2


def test_timeout_then_success(brevo_server: BrevoServer, esp_members: Members) -> None:
    bv = client(brevo_server, retry(max_attempts=3, timeout=0.3))
    list_id = bv.ensure_audience("vip", "VIP", None)
    brevo_server.inject(Fault(Response(200, {}), delay=0.8, path="/v3/processes/"))

    result = bv.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and bv.retries == 1


def test_retries_exhausted_on_a_lookup_leak_no_address(
    brevo_server: BrevoServer, esp_members: Members, caplog: pytest.LogCaptureFixture
) -> None:
    brevo_server.invalid_emails.add("fake@example.com")
    bv = client(brevo_server, retry(max_attempts=3))
    list_id = bv.ensure_audience("vip", "VIP", None)
    brevo_server.inject(Fault(error(500, "internal", "oops"), times=10, path="/v3/contacts/fake"))

    with caplog.at_level(logging.WARNING), pytest.raises(DestinationUnavailable) as caught:
        bv.add(list_id, esp_members("fake@example.com"), ADD)
    assert "brevo_test" in str(caught.value) and "@" not in str(caught.value)
    assert caplog.records and "fake@example.com" not in caplog.text


def test_whole_batch_400_is_rejected_without_personal_data(brevo_server: BrevoServer, esp_members: Members) -> None:
    bv = client(brevo_server)
    list_id = bv.ensure_audience("vip", "VIP", None)
    bad = error(400, "invalid_parameter", "Invalid email address a@example.com in jsonBody")
    brevo_server.inject(Fault(bad, method="POST", path="/v3/contacts/import"))

    with pytest.raises(BatchRejected) as caught:
        bv.add(list_id, esp_members("a@example.com"), ADD)
    assert "invalid_parameter" in str(caught.value) and "@" not in str(caught.value)

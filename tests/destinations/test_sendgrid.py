"""SendGrid client against the SendGrid contract server over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pytest

from tasks.destinations.audience import BatchRef, BatchRejected, DestinationAuthError, DestinationUnavailable
from tasks.destinations.http import RetryOptions
from tasks.destinations.sendgrid import SendGrid
from tasks.sandbox.sendgrid import ContactList, SendGridServer, errors
from tasks.sandbox.server import Fault, Response

ADD = BatchRef("plan-1", "add", 1, 1, 3)
REMOVE = BatchRef("plan-1", "remove", 1, 1, 3)
POLL = 0.001  # distinct from every retry delay in these tests, so recorded sleeps tell them apart
Members = Callable[..., pd.DataFrame]


def retry(**options: float) -> RetryOptions:
    return RetryOptions.model_validate({"max_attempts": 4, "base_delay": 0.01, "timeout": 1.0, **options})


def client(server: SendGridServer, retry_options: RetryOptions | None = None, **options: Any) -> SendGrid:
    opts = SendGrid.Options.model_validate(
        {
            "connection": "sendgrid_test",
            "base_url": server.base_url,
            "poll_interval": POLL,
            "poll_timeout": 5.0,
            "retry": retry_options or retry(),
            **options,
        }
    )
    return SendGrid("sendgrid_vip", opts)


def refs(accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(accepted), "remote_ref": list(accepted.values())})


def upserts(server: SendGridServer) -> list[list[str]]:
    return [[c["email"] for c in r.json()["contacts"]] for r in server.requests_to("PUT", "/v3/marketing/contacts")]


def test_add_then_remove_through_contact_ids(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sg = client(sendgrid_server)
    list_id = sg.ensure_audience("vip", "VIP customers", None)
    assert sendgrid_server.lists[list_id].name == "vip"
    assert sg.ensure_audience("vip", "VIP customers", None) == list_id

    result = sg.add(list_id, esp_members("a@example.com", "B@example.com", "c@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com", "c1": "b@example.com", "c2": "c@example.com"}
    assert sendgrid_server.list_emails(list_id) == {"a@example.com", "b@example.com", "c@example.com"}
    contact = sendgrid_server.contact("a@example.com")
    assert contact is not None
    assert (contact["first_name"], contact["city"], contact["country"]) == ("An", "Hà Nội", "VN")
    assert "phone_number" not in contact

    removed = sg.remove(list_id, refs({"c0": "a@example.com", "c1": "b@example.com", "c9": "gone@example.com"}), REMOVE)

    assert removed.accepted == {"c0": "a@example.com", "c1": "b@example.com", "c9": "gone@example.com"}
    assert sendgrid_server.list_emails(list_id) == {"c@example.com"}
    assert set(sendgrid_server.added.values()) == {1}
    assert sendgrid_server.removed == {"a@example.com": 1, "b@example.com": 1}
    (delete,) = sendgrid_server.requests_to("DELETE")
    assert len(delete.query["contact_ids"][0].split(",")) == 2
    sg.close()


def test_lists_are_paged_when_looking_for_the_segment(sendgrid_server: SendGridServer) -> None:
    for i in range(1000):
        sendgrid_server.lists[f"id{i}"] = ContactList(f"id{i}", f"other {i}")
    sendgrid_server.lists["wanted"] = ContactList("wanted", "vip")
    sg = client(sendgrid_server)
    assert sg.ensure_audience("vip", "VIP", None) == "wanted"
    assert len(sendgrid_server.requests_to("GET", "/v3/marketing/lists")) == 2


def test_remove_of_unknown_addresses_needs_no_delete(sendgrid_server: SendGridServer) -> None:
    sg = client(sendgrid_server)
    list_id = sg.ensure_audience("vip", "VIP", None)
    result = sg.remove(list_id, refs({"c0": "nobody@example.com"}), REMOVE)
    assert result.accepted == {"c0": "nobody@example.com"}
    assert not sendgrid_server.requests_to("DELETE")  # the search answered 404: nothing to remove


def test_import_job_is_polled_to_completion(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sendgrid_server.poll_steps = 3
    sg = client(sendgrid_server)
    sleeps: list[float] = []
    sg.sleep = sleeps.append
    list_id = sg.ensure_audience("vip", "VIP", None)

    result = sg.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"}
    assert len(sendgrid_server.requests_to("GET", "/v3/marketing/contacts/imports/")) == 3
    assert sleeps == [POLL, POLL]


def test_import_job_that_never_finishes_is_unavailable(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sendgrid_server.stuck = True
    sg = client(sendgrid_server, poll_timeout=0.01)
    sg.sleep = lambda seconds: None
    list_id = sg.ensure_audience("vip", "VIP", None)
    with pytest.raises(DestinationUnavailable, match="still pending"):
        sg.add(list_id, esp_members("a@example.com"), ADD)


def test_partial_failures_map_to_failed_and_suppressed(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    server = sendgrid_server
    server.invalid_emails.add("fake@example.com")  # the upsert refuses the request, naming it
    server.job_errors.add("lost@example.com")  # the job fails it silently (counted only)
    server.unsubscribes.add("unsub@example.com")
    server.bounces.add("bounced@example.com")
    server.spam_reports.add("spam@example.com")
    sg = client(server)
    list_id = sg.ensure_audience("vip", "VIP", None)
    members = esp_members(
        "fake@example.com",
        "lost@example.com",
        "unsub@example.com",
        "bounced@example.com",
        "spam@example.com",
        "ok@example.com",
        None,
    )

    result = sg.add(list_id, members, ADD)

    assert result.accepted == {"c5": "ok@example.com"}
    assert set(result.failed) == {"c0", "c1", "c6"}
    assert set(result.suppressed) == {"c2", "c3", "c4"}
    assert "unsubscribes" in result.suppressed["c2"] and "bounces" in result.suppressed["c3"]
    assert "invalid" in result.failed["c0"] and "errored" in result.failed["c1"]
    for reason in [*result.failed.values(), *result.suppressed.values()]:
        assert "@" not in reason
    sent = upserts(server)
    assert len(sent) == 2 and "fake@example.com" in sent[0] and "fake@example.com" not in sent[1]
    assert not {"unsub@example.com", "bounced@example.com", "spam@example.com"} & set(sent[0])
    assert server.list_emails(list_id) == {"ok@example.com"}


def test_a_400_that_names_no_contact_is_rejected_without_personal_data(
    sendgrid_server: SendGridServer, esp_members: Members
) -> None:
    sg = client(sendgrid_server)
    list_id = sg.ensure_audience("vip", "VIP", None)
    sendgrid_server.inject(Fault(errors(400, (None, "a@example.com: bad request body")), method="PUT"))

    with pytest.raises(BatchRejected) as caught:
        sg.add(list_id, esp_members("a@example.com"), ADD)
    assert "bad request body" in str(caught.value) and "@" not in str(caught.value)


def test_auth_failure_names_the_connection_not_the_key(
    sendgrid_server: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_TEST", json.dumps({"password": "SG.wrong.secretvalue"}))
    sg = client(sendgrid_server)
    with pytest.raises(DestinationAuthError) as caught:
        sg.ensure_audience("vip", "VIP", None)
    message = str(caught.value)
    assert "sendgrid_test" in message and "invalid, expired, or revoked" in message
    assert "secretvalue" not in message


def test_server_enforces_auth_and_limits(sendgrid_server: SendGridServer) -> None:
    server = sendgrid_server
    auth = {"Authorization": f"Bearer {server.api_key}"}
    url = f"{server.url}/v3/marketing/contacts"
    contacts = [{"email": f"m{i}@example.com"} for i in range(30_001)]

    missing = httpx.put(url, json={"contacts": contacts[:1]})
    assert missing.status_code == 401 and missing.json()["errors"][0]["message"] == "authorization required"
    over = httpx.put(url, json={"contacts": contacts}, headers=auth)
    assert over.status_code == 400 and over.json()["errors"][0]["field"] == "contacts"
    big = httpx.put(url, json={"contacts": [{"email": "a@example.com", "first_name": "x" * 6_300_000}]}, headers=auth)
    assert big.status_code == 413
    ok = httpx.put(url, json={"contacts": contacts[:30_000]}, headers=auth)
    assert ok.status_code == 202 and "job_id" in ok.json()
    search = httpx.post(f"{url}/search/emails", json={"emails": [c["email"] for c in contacts[:101]]}, headers=auth)
    assert search.status_code == 400


def test_throttle_storm_honours_the_reset_time(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sg = client(sendgrid_server, retry(max_attempts=5))
    sleeps: list[float] = []
    sg.sleep = sleeps.append
    list_id = sg.ensure_audience("vip", "VIP", None)
    sendgrid_server.throttle(times=3, reset_in=5)

    result = sg.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and sg.retries == 3
    waits = [s for s in sleeps if s != POLL]
    assert len(waits) == 3 and all(3.5 <= w <= 5.0 for w in waits)  # reset (unix time) minus now
    assert sendgrid_server.added == {"a@example.com": 1}


def test_server_errors_then_success(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sg = client(sendgrid_server)
    list_id = sg.ensure_audience("vip", "VIP", None)
    sendgrid_server.inject(Fault(errors(503, (None, "service unavailable")), times=2, method="PUT"))

    result = sg.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and sg.retries == 2
    assert len(sendgrid_server.jobs) == 1


def test_timeout_then_success(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sg = client(sendgrid_server, retry(max_attempts=3, timeout=0.3))
    list_id = sg.ensure_audience("vip", "VIP", None)
    sendgrid_server.inject(Fault(Response(200, {}), delay=0.8, path="/v3/marketing/contacts/imports"))

    result = sg.add(list_id, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"} and sg.retries == 1


def test_retries_exhausted_raise_unavailable(sendgrid_server: SendGridServer, esp_members: Members) -> None:
    sg = client(sendgrid_server, retry(max_attempts=3))
    list_id = sg.ensure_audience("vip", "VIP", None)
    sendgrid_server.inject(Fault(errors(500, (None, "internal error")), times=10))

    with pytest.raises(DestinationUnavailable) as caught:
        sg.add(list_id, esp_members("a@example.com"), ADD)
    assert "sendgrid_test" in str(caught.value) and "@" not in str(caught.value)
    assert not sendgrid_server.added

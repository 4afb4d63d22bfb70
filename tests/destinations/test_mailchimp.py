"""Mailchimp client against the Mailchimp contract server over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pytest

from tasks.destinations.audience import BatchRef, BatchRejected, DestinationAuthError, DestinationUnavailable
from tasks.destinations.http import RetryOptions
from tasks.destinations.mailchimp import Mailchimp
from tasks.sandbox.mailchimp import MailchimpServer, problem
from tasks.sandbox.server import Fault, Response


def retry(**options: float) -> RetryOptions:
    return RetryOptions.model_validate({"max_attempts": 4, "base_delay": 0.01, "timeout": 1.0, **options})


FAST = retry()
ADD = BatchRef("plan-1", "add", 1, 1, 3)
REMOVE = BatchRef("plan-1", "remove", 1, 1, 3)
Members = Callable[..., pd.DataFrame]


def client(server: MailchimpServer, retry: RetryOptions = FAST, **options: Any) -> Mailchimp:
    opts = Mailchimp.Options(
        connection="mailchimp_test", list_id=server.list_id, base_url=server.base_url, retry=retry, **options
    )
    return Mailchimp("mailchimp_vip", opts)


def subscribes(server: MailchimpServer) -> list[Any]:
    """Batch-subscribe requests (``requests_to`` matches a path prefix; segment updates share it)."""
    path = f"/3.0/lists/{server.list_id}"
    return [r for r in server.requests_to("POST", path) if r.path == path]


def refs(result_accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(result_accepted), "remote_ref": list(result_accepted.values())})


def test_add_then_remove_tags_and_untags_members(mailchimp_server: MailchimpServer, esp_members: Members) -> None:
    mc = client(mailchimp_server)
    tag = mc.ensure_audience("vip", "VIP customers", None)
    assert mc.ensure_audience("vip", "VIP customers", None) == tag  # found, not created twice
    assert mc.ensure_audience("vip", "VIP", "999") == "999"

    result = mc.add(tag, esp_members("a@example.com", "b@example.com", "c@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com", "c1": "b@example.com", "c2": "c@example.com"}
    assert not result.failed and not result.suppressed
    assert mailchimp_server.tagged("vip") == {"a@example.com", "b@example.com", "c@example.com"}
    member = mailchimp_server.member("a@example.com")
    assert member is not None and member.status == "subscribed"
    assert member.merge_fields == {"FNAME": "An", "LNAME": "Nguyễn", "PHONE": "+84912340000"}
    (subscribe,) = subscribes(mailchimp_server)
    assert subscribe.json()["update_existing"] is False

    removed = mc.remove(tag, refs({"c0": "a@example.com", "c1": "b@example.com"}), REMOVE)

    assert removed.accepted == {"c0": "a@example.com", "c1": "b@example.com"}
    assert mailchimp_server.tagged("vip") == {"c@example.com"}
    assert set(mailchimp_server.added.values()) == {1}
    assert mailchimp_server.removed == {"a@example.com": 1, "b@example.com": 1}
    mc.close()


def test_existing_members_are_tagged_and_shared_addresses_sent_once(
    mailchimp_server: MailchimpServer, esp_members: Members
) -> None:
    mailchimp_server.seed("old@example.com", "subscribed")
    mc = client(mailchimp_server)
    tag = mc.ensure_audience("vip", "VIP", None)
    members = esp_members("old@example.com", "new@example.com", "NEW@example.com ")

    result = mc.add(tag, members, ADD)

    assert set(result.accepted) == {"c0", "c1", "c2"}
    assert mailchimp_server.tagged("vip") == {"old@example.com", "new@example.com"}
    sent = subscribes(mailchimp_server)[0].json()["members"]
    assert len(sent) == 2


def test_partial_failures_map_to_failed_and_suppressed(mailchimp_server: MailchimpServer, esp_members: Members) -> None:
    server = mailchimp_server
    server.seed("unsub@example.com", "unsubscribed")
    server.seed("bounced@example.com", "cleaned")
    server.forgotten.add("gone@example.com")
    server.invalid_emails.add("fake@example.com")
    mc = client(server)
    tag = mc.ensure_audience("vip", "VIP", None)
    members = esp_members(
        "unsub@example.com", "bounced@example.com", "gone@example.com", "fake@example.com", "ok@example.com", None
    )

    result = mc.add(tag, members, ADD)

    assert result.accepted == {"c4": "ok@example.com"}
    assert set(result.suppressed) == {"c0", "c1", "c2"}
    assert set(result.failed) == {"c3", "c5"}
    assert "unsubscribed" in result.suppressed["c0"] and "cleaned" in result.suppressed["c1"]
    assert "compliance" in result.suppressed["c2"] or "deleted" in result.suppressed["c2"]
    for reason in [*result.failed.values(), *result.suppressed.values()]:
        assert "@" not in reason
    # the unsubscribed and cleaned addresses were never even sent, and nobody was resubscribed
    sent = [m["email_address"] for m in subscribes(server)[0].json()["members"]]
    assert "unsub@example.com" not in sent and "bounced@example.com" not in sent
    assert server.resubscribe_attempts == []
    member = server.member("unsub@example.com")
    assert member is not None and member.status == "unsubscribed"
    assert server.tagged("vip") == {"ok@example.com"}


def test_remove_of_an_address_no_longer_in_the_list_counts_as_done(
    mailchimp_server: MailchimpServer, esp_members: Members
) -> None:
    mc = client(mailchimp_server)
    tag = mc.ensure_audience("vip", "VIP", None)
    mc.add(tag, esp_members("a@example.com"), ADD)

    result = mc.remove(tag, refs({"c0": "a@example.com", "c9": "deleted@example.com"}), REMOVE)

    assert result.accepted == {"c0": "a@example.com", "c9": "deleted@example.com"}
    assert mailchimp_server.removed == {"a@example.com": 1}


def test_credentials_are_read_lazily_and_auth_failure_names_the_connection(
    mailchimp_server: MailchimpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MAILCHIMP_TEST")
    mc = client(mailchimp_server)  # no connection yet: constructing must not read it
    monkeypatch.setenv("AIRFLOW_CONN_MAILCHIMP_TEST", json.dumps({"login": "no-key"}))
    with pytest.raises(DestinationAuthError, match="mailchimp_test"):
        mc.ensure_audience("vip", "VIP", None)

    wrong = "ffffffffffffffffffffffffffffffff-us21"
    monkeypatch.setenv("AIRFLOW_CONN_MAILCHIMP_TEST", json.dumps({"password": wrong}))
    mc = client(mailchimp_server)
    with pytest.raises(DestinationAuthError) as caught:
        mc.ensure_audience("vip", "VIP", None)
    message = str(caught.value)
    assert "mailchimp_test" in message and "API Key Invalid" in message
    assert wrong not in message and "ffffffff" not in message
    assert mailchimp_server.recorded[-1].status == 401


def test_data_centre_comes_from_the_key_suffix(mailchimp_server: MailchimpServer) -> None:
    mc = Mailchimp("m", Mailchimp.Options(connection="mailchimp_test", list_id="x"))
    assert str(mc.http._client.base_url).rstrip("/") == "https://us21.api.mailchimp.com/3.0"
    mc.close()


def test_server_enforces_auth_batch_limit_and_schema(mailchimp_server: MailchimpServer) -> None:
    server = mailchimp_server
    url = f"{server.base_url}/lists/{server.list_id}"
    auth = ("anyone", server.api_key)
    members = [{"email_address": f"m{i}@example.com", "status": "subscribed"} for i in range(501)]

    missing = httpx.post(url, json={"members": members[:1]})
    assert missing.status_code == 401 and missing.json()["title"] == "API Key Missing"
    over = httpx.post(url, json={"members": members}, auth=auth)
    assert over.status_code == 400 and over.json()["detail"] == "Maximum allowed member items exceeded"
    bad = httpx.post(url, json={"members": [{"email_address": "a@example.com", "status": "maybe"}]}, auth=auth)
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"].endswith("status")
    seg = httpx.post(f"{url}/segments", json={"name": "t", "static_segment": []}, auth=auth).json()
    emails = [m["email_address"] for m in members]
    over_tag = httpx.post(f"{url}/segments/{seg['id']}", json={"members_to_add": emails}, auth=auth)
    assert over_tag.status_code == 400 and over_tag.json()["detail"] == "Maximum allowed member items exceeded"
    ok = httpx.post(url, json={"members": members[:500]}, auth=auth)
    assert ok.status_code == 200 and ok.json()["total_created"] == 500
    assert not server.added  # joining the list is not joining an audience (tag)


def test_throttle_storm_backs_off_exponentially_and_succeeds(
    mailchimp_server: MailchimpServer, esp_members: Members, esp_sleeps: list[float]
) -> None:
    mc = client(mailchimp_server, retry=retry(max_attempts=5, base_delay=0.2, max_delay=10, timeout=1))
    mc.sleep = esp_sleeps.append
    tag = mc.ensure_audience("vip", "VIP", None)
    mailchimp_server.throttle(times=3)

    result = mc.add(tag, esp_members("a@example.com", "b@example.com"), ADD)

    assert set(result.accepted) == {"c0", "c1"}
    assert mc.retries == 3
    assert len(esp_sleeps) == 3  # Mailchimp sends no wait: 0.2, 0.4, 0.8 with jitter in the upper half
    for n, delay in enumerate(esp_sleeps):
        ceiling = 0.2 * 2**n
        assert ceiling / 2 <= delay <= ceiling
    assert all(s == 429 for s in [r.status for r in mailchimp_server.recorded if r.faulted])
    assert set(mailchimp_server.added.values()) == {1}


def test_server_errors_then_success(mailchimp_server: MailchimpServer, esp_members: Members) -> None:
    mc = client(mailchimp_server)
    tag = mc.ensure_audience("vip", "VIP", None)
    error = problem(500, "Internal Server Error", "A deep, internal error has occurred.")
    mailchimp_server.inject(Fault(error, times=2, method="POST"))

    result = mc.add(tag, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"}
    assert mc.retries == 2
    assert mailchimp_server.added == {"a@example.com": 1}


def test_timeout_then_success(mailchimp_server: MailchimpServer, esp_members: Members) -> None:
    mc = client(mailchimp_server, retry=retry(max_attempts=3, base_delay=0.01, timeout=0.3))
    tag = mc.ensure_audience("vip", "VIP", None)
    mailchimp_server.inject(Fault(Response(200, {}), delay=0.8, method="POST"))

    result = mc.add(tag, esp_members("a@example.com"), ADD)

    assert result.accepted == {"c0": "a@example.com"}
    assert mc.retries == 1


def test_retries_exhausted_raise_unavailable_without_personal_data(
    mailchimp_server: MailchimpServer, esp_members: Members
) -> None:
    mc = client(mailchimp_server, retry=retry(max_attempts=3, base_delay=0.01, timeout=1))
    tag = mc.ensure_audience("vip", "VIP", None)
    mailchimp_server.throttle(times=10)

    with pytest.raises(DestinationUnavailable) as caught:
        mc.add(tag, esp_members("a@example.com"), ADD)
    assert "mailchimp_test" in str(caught.value) and "@" not in str(caught.value)
    assert not mailchimp_server.added


def test_whole_batch_400_is_rejected_without_personal_data(
    mailchimp_server: MailchimpServer, esp_members: Members
) -> None:
    mc = client(mailchimp_server)
    tag = mc.ensure_audience("vip", "VIP", None)
    bad = problem(400, "Invalid Resource", "a@example.com, +84912345678: Please provide a valid email address.")
    mailchimp_server.inject(Fault(bad, method="POST"))

    with pytest.raises(BatchRejected) as caught:
        mc.add(tag, esp_members("a@example.com"), ADD)
    message = str(caught.value)
    assert "Invalid Resource" in message and "@" not in message and "912345678" not in message

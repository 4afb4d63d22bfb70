"""Google Customer Match (Data Manager API) client against the local contract server, over real HTTP.

What must hold: Google receives SHA-256 hex of Google-normalized identifiers (checked against the
official Data Manager vectors) with region and postal code in clear, consent comes from the members'
own records (never a constant), request status is polled, 429 RESOURCE_EXHAUSTED is waited out for the
RetryInfo delay, and auth, server and timeout failures end in the protocol's errors without the token.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
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
from tasks.destinations.google import GoogleCustomerMatch, GoogleOptions
from tasks.destinations.http import RetryOptions
from tasks.sandbox.google import GoogleServer
from tasks.sandbox.server import Fault, Response

TOKEN = "ya29.google-secret-token-0123456789"
LIST_ID = "4400123"
VECTORS = {
    v["raw"]: v["sha256"]
    for v in json.loads(Path("/work/shared/test-vectors/hashing.json").read_text())["google_customer_match"]
}
FAST = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=5.0)
SHORT_TIMEOUT = RetryOptions(max_attempts=4, base_delay=0.01, max_delay=0.5, timeout=0.5)

GoogleClientFactory = Callable[..., tuple[GoogleCustomerMatch, list[float]]]


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


def ref(op: str, seq: int = 1, batches: int = 1, total: int = 10) -> BatchRef:
    return BatchRef(plan_id="plan-g", operation=op, seq=seq, batches=batches, estimated_total=total)  # type: ignore[arg-type]


def refs_frame(accepted: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(accepted), "remote_ref": list(accepted.values())})


def make_server() -> GoogleServer:
    return GoogleServer(token=TOKEN, user_lists=(LIST_ID,))


@pytest.fixture
def google_server(contract_server: GoogleServer) -> GoogleServer:
    return contract_server


@pytest.fixture
def google_client(google_server: GoogleServer, platform_client: Callable[..., Any]) -> GoogleClientFactory:
    def make(token: str = TOKEN, **options: Any) -> tuple[GoogleCustomerMatch, list[float]]:
        client, sleeps = platform_client(
            GoogleCustomerMatch,
            "google_test",
            token,
            {
                "operating_account_id": "123-456-7890",
                "user_list_id": LIST_ID,
                "base_url": google_server.url,
                "poll_interval": 0.01,
                "poll_timeout": 5.0,
                "retry": FAST,
            }
            | options,
        )
        return client, sleeps

    return make


def test_google_add_poll_remove_keeps_list_state(
    google_server: GoogleServer, google_client: GoogleClientFactory
) -> None:
    client, _ = google_client()
    polls: list[float] = []
    client.sleep = polls.append
    assert client.ensure_audience("vip", "VIP", None) == LIST_ID
    added = client.add(LIST_ID, people(3), ref("add"))
    assert sorted(added.accepted) == ["K0", "K1", "K2"] and not added.failed and added.unmatched == 0
    assert google_server.hashes(LIST_ID, "email") == {sha(f"user{i}@example.vn") for i in range(3)}
    assert google_server.hashes(LIST_ID, "phone") == {sha(f"+8491{i:07d}") for i in range(3)}
    # requestStatus answered PROCESSING once, then SUCCESS: two polls, one wait of poll_interval between them
    assert len(google_server.requests_to("GET", "/v1/requestStatus:retrieve")) == 2 and polls == [0.01]
    assert client.last_request_id in google_server.uploads

    body = google_server.bodies()[-1]
    assert body["destinations"] == [
        {"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"}, "productDestinationId": LIST_ID}
    ]
    assert body["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
    assert body["termsOfService"] == {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
    assert body["encoding"] == "HEX" and body["validateOnly"] is False

    gone = client.remove(LIST_ID, refs_frame({"K1": added.accepted["K1"]}), ref("remove"))
    assert list(gone.accepted) == ["K1"]
    assert google_server.hashes(LIST_ID, "email") == {sha("user0@example.vn"), sha("user2@example.vn")}
    remove_body = google_server.bodies("/v1/audienceMembers:remove")[-1]
    assert "consent" not in remove_body  # withdrawing consent must still be able to remove someone
    assert sum(google_server.removed.values()) == 2  # K1's email and phone


def test_google_hashes_match_official_vectors_and_no_raw_pii_is_sent(
    google_server: GoogleServer, google_client: GoogleClientFactory
) -> None:
    client, _ = google_client()
    members = frame(
        member(
            "ALEX",
            "  ALEXZ@example.com   ",
            "+18005550100",
            first_name="  GivenName  ",
            last_name="  FamilyName ",
            country="US",
            postal_code="94043",
        ),
        member("JEFF", "Jefferson.Loves.hiking@gmail.com", "+441134960987"),
        member("CLOUDY", "cloudy.sanfrancisco+shopping@gmail.com", None, first_name="An", last_name="Trần"),
        member("OTHER", "user.name+NYC@Example.com"),
    )
    result = client.add(LIST_ID, members, ref("add"))
    ids = [m["userData"]["userIdentifiers"] for m in google_server.bodies()[-1]["audienceMembers"]]
    assert ids[0] == [
        {"emailAddress": VECTORS["  ALEXZ@example.com   "]},
        {"phoneNumber": VECTORS["   +1-800-555-0100"]},
        {
            "address": {
                "givenName": VECTORS["  GivenName  "],
                "familyName": VECTORS["  FamilyName "],
                "regionCode": "US",
                "postalCode": "94043",
            }
        },
    ]
    assert ids[1] == [
        {"emailAddress": VECTORS["Jefferson.Loves.hiking@gmail.com"]},
        {"phoneNumber": VECTORS["+44-113-496-0987"]},
    ]
    assert ids[2] == [{"emailAddress": VECTORS["cloudy.sanfrancisco+shopping@gmail.com"]}]  # no postal: no address
    assert ids[3] == [{"emailAddress": VECTORS["user.name+NYC@Example.com"]}]
    assert json.loads(result.accepted["JEFF"]) == {
        "emailAddress": VECTORS["Jefferson.Loves.hiking@gmail.com"],
        "phoneNumber": VECTORS["+44-113-496-0987"],
    }
    sent = " ".join(json.dumps(body, ensure_ascii=False) for body in google_server.bodies("/"))
    for raw in ("ALEXZ", "alexz", "Jefferson", "cloudy", "user.name", "8005550100", "1134960987", "GivenName", "Trần"):
        assert raw not in sent


def test_google_consent_comes_from_members(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, _ = google_client()
    for refused in (False, None, pd.NA, "yes", 1):
        members = people(3)
        members["ads_opt_in"] = members["ads_opt_in"].astype(object)
        members.loc[1, "ads_opt_in"] = refused
        with pytest.raises(ValueError, match=r"1 of 3 members .* no recorded ads consent"):
            client.add(LIST_ID, members, ref("add"))
    assert not google_server.recorded  # nothing was sent
    members = people(2)
    members["ads_opt_in"] = pd.array([True, True], dtype="boolean")
    assert len(client.add(LIST_ID, members, ref("add")).accepted) == 2
    members = people(2, start=5)
    members["ads_opt_in"] = np.array([True, True])
    assert len(client.add(LIST_ID, members, ref("add")).accepted) == 2


def test_google_partial_and_failed_status(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, _ = google_client()
    google_server.invalid_hashes = {sha("user1@example.vn")}
    partial = client.add(LIST_ID, people(3), ref("add"))
    assert len(partial.accepted) == 3 and partial.unmatched == 1  # Google counts, never itemises
    google_server.invalid_hashes = {sha("user7@example.vn")}
    failed = client.add(LIST_ID, people(1, start=7), ref("add"))
    assert not failed.accepted and "PROCESSING_ERROR_REASON_INVALID_FORMAT" in failed.failed["K7"]


def test_google_validate_only_applies_nothing(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, _ = google_client(validate_only=True)
    result = client.add(LIST_ID, people(2), ref("add"))
    assert not result.accepted and set(result.failed) == {"K0", "K1"}
    assert google_server.bodies()[-1]["validateOnly"] is True and not google_server.members(LIST_ID)


def test_google_auth_failure_does_not_leak_token(
    google_server: GoogleServer, google_client: GoogleClientFactory
) -> None:
    client, _ = google_client(token="ya29.wrong-token-987654321")
    with pytest.raises(DestinationAuthError) as exc:
        client.add(LIST_ID, people(1), ref("add"))
    assert "401" in str(exc.value) and "ya29" not in str(exc.value)
    assert not google_server.members(LIST_ID) and len(google_server.recorded) == 1


@pytest.mark.parametrize(("delay", "expected"), [("0.05s", [0.05] * 3), (None, [0.01, 0.02, 0.04])])
def test_google_resource_exhausted_waits_retry_delay(
    google_server: GoogleServer, google_client: GoogleClientFactory, delay: str | None, expected: list[float]
) -> None:
    client, sleeps = google_client()
    google_server.throttle(times=3, retry_delay=delay, path="/v1/audienceMembers")
    result = client.add(LIST_ID, people(2), ref("add"))
    assert len(result.accepted) == 2 and len(google_server.members(LIST_ID)) == 2
    assert client.http.retries == 3 and sleeps == pytest.approx(expected)


def test_google_server_errors_then_success(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, sleeps = google_client()
    google_server.server_errors(times=2, status=503, path="/v1/audienceMembers")
    client.add(LIST_ID, people(1), ref("add"))
    assert client.http.retries == 2 and all(0 <= s <= 0.02 for s in sleeps)
    assert len(google_server.members(LIST_ID)) == 1


def test_google_timeout_then_success(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, _ = google_client(retry=SHORT_TIMEOUT)
    google_server.inject(Fault(Response(200, {}), times=1, delay=1.0, path="/v1/audienceMembers"))  # > 0.5 s timeout
    client.add(LIST_ID, people(2), ref("add"))
    assert client.http.retries == 1 and set(google_server.added.values()) == {1}
    deadline = time.monotonic() + 3  # let the stalled answer be recorded before the next test resets
    while not any(r.faulted for r in google_server.recorded) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_google_retries_exhausted_is_unavailable(
    google_server: GoogleServer, google_client: GoogleClientFactory
) -> None:
    client, _ = google_client()
    google_server.throttle(times=10)
    with pytest.raises(DestinationUnavailable, match="gave up after 4 attempts"):
        client.add(LIST_ID, people(1), ref("add"))
    assert not google_server.members(LIST_ID)


def test_google_server_enforces_contract(google_server: GoogleServer) -> None:
    def body(**over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "destinations": [
                {"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1"}, "productDestinationId": LIST_ID}
            ],
            "audienceMembers": [{"userData": {"userIdentifiers": [{"emailAddress": sha("a@b.vn")}]}}],
            "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
            "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
            "encoding": "HEX",
        }
        return base | over

    def post(payload: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.post(f"{google_server.url}/v1/audienceMembers:ingest", json=payload, headers=headers)

    def reason(response: httpx.Response) -> str:
        assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"
        return str(response.json()["error"]["details"][0]["fieldViolations"][0]["reason"])

    many = [{"userData": {"userIdentifiers": [{"emailAddress": sha(str(i))}]}} for i in range(10_001)]
    assert reason(post(body(audienceMembers=many))) == "TOO_MANY_AUDIENCE_MEMBERS"
    raw = post(body(audienceMembers=[{"userData": {"userIdentifiers": [{"emailAddress": "mary@example.com"}]}}]))
    assert reason(raw) == "INVALID_HEX_ENCODING" and "mary@example.com" not in raw.text
    assert reason(post(body(consent=None))) == "REQUIRED_FIELD_MISSING"
    assert reason(post(body(consent={"adUserData": "GRANTED", "adPersonalization": "CONSENT_GRANTED"}))) == (
        "INVALID_ENUM_VALUE"
    )
    assert reason(post(body(termsOfService={}))) == "TERMS_AND_CONDITIONS_NOT_SIGNED"
    no_postal = {"address": {"givenName": sha("a"), "familyName": sha("b"), "regionCode": "VN"}}
    assert reason(post(body(audienceMembers=[{"userData": {"userIdentifiers": [no_postal]}}]))) == (
        "REQUIRED_FIELD_MISSING"
    )
    assert post(body()).status_code == 200
    assert httpx.post(f"{google_server.url}/v1/audienceMembers:ingest", json=body()).status_code == 401


def test_google_client_errors_split_or_stop(google_server: GoogleServer, google_client: GoogleClientFactory) -> None:
    client, _ = google_client()
    with pytest.raises(DestinationError, match="INVALID_USER_LIST_ID") as exc:
        client.add("999", people(1), ref("add"))
    assert not isinstance(exc.value, BatchRejected)  # a wrong list is configuration: splitting cannot help
    bad = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad member", "details": []}}
    google_server.inject(Fault(Response(400, bad)))
    with pytest.raises(BatchRejected):
        client.add(LIST_ID, people(1), ref("add"))
    with pytest.raises(ValueError, match="at most 10000"):
        client.add(LIST_ID, people(10_001), ref("add"))
    with pytest.raises(DestinationError, match="user_list_id"):
        google_client(user_list_id=None)[0].ensure_audience("vip", "VIP", None)


def test_google_is_registered(google_server: GoogleServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_ADS_DEFAULT", json.dumps({"password": TOKEN}))
    options = {"operating_account_id": "1234567890", "user_list_id": LIST_ID, "base_url": google_server.url}
    client = DESTINATIONS.build("google", "google_customer_match", options, Path("destinations.yaml"))
    assert isinstance(client, GoogleCustomerMatch) and client.capabilities.max_batch == 10_000
    client.close()


def test_google_reads_the_token_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GOOGLE_NONE", raising=False)
    options = GoogleOptions.model_validate(
        {"connection": "google_none", "operating_account_id": "1", "user_list_id": "9"}
    )
    client = GoogleCustomerMatch("g", options)
    client.close()  # built and closed without a credential
    with pytest.raises(DestinationAuthError, match="google_none"):
        client.remove("9", pd.DataFrame({"customer_key": ["K"], "remote_ref": ['{"emailAddress":"x"}']}), ref("remove"))

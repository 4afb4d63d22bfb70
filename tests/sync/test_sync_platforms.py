"""Every platform through the sync engine, against its contract server on loopback.

Two promises are checked on every platform, by reading every request the server received:
- consent: a member without the platform's consent never appears in any request, in any form
  (plain, normalized, hashed);
- through throttling, 500s, a re-run and a shrinking segment, no member is added twice and none
  is removed that this system had not added.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.config.models import DestinationConfig, SyncPolicy
from tasks.destinations.base import DESTINATIONS
from tasks.sandbox.server import ContractServer, Fault, Response
from tasks.sync.ledger import Ledger
from tasks.sync.service import sync

RETRY = {"max_attempts": 6, "base_delay": 0.01, "max_delay": 0.05, "timeout": 5.0}
POLL = {"poll_interval": 0.01, "poll_timeout": 10.0}


@dataclass
class Platform:
    kind: str
    consent: str  # the opt-in column the platform's purpose needs
    make_server: Callable[[], ContractServer]
    secret: Callable[[Any], str]
    options: Callable[[Any], dict[str, Any]]
    identifiers: int = 1  # identifiers the server counts per member (Google: email and phone)


def _sandbox(module: str, cls: str) -> Callable[..., ContractServer]:
    def make(**kw: Any) -> ContractServer:
        import importlib

        server: ContractServer = getattr(importlib.import_module(f"tasks.sandbox.{module}"), cls)(**kw)
        return server

    return make


PLATFORMS = {
    "mailchimp": Platform(
        "mailchimp",
        "email_opt_in",
        _sandbox("mailchimp", "MailchimpServer"),
        lambda s: s.api_key,
        lambda s: {"list_id": s.list_id, "base_url": s.base_url},
    ),
    "klaviyo": Platform(
        "klaviyo",
        "email_opt_in",
        _sandbox("klaviyo", "KlaviyoServer"),
        lambda s: s.api_key,
        lambda s: {"base_url": s.base_url, **POLL},
    ),
    "sendgrid": Platform(
        "sendgrid",
        "email_opt_in",
        _sandbox("sendgrid", "SendGridServer"),
        lambda s: s.api_key,
        lambda s: {"base_url": s.base_url, **POLL},
    ),
    "brevo": Platform(
        "brevo",
        "email_opt_in",
        _sandbox("brevo", "BrevoServer"),
        lambda s: s.api_key,
        lambda s: {"base_url": s.base_url, "folder_id": 1, **POLL},
    ),
    "meta": Platform(
        "meta_custom_audience",
        "ads_opt_in",
        lambda: _sandbox("meta", "MetaServer")(access_token="meta-sync-token"),
        lambda s: "meta-sync-token",
        lambda s: {"ad_account_id": "act_1234", "base_url": s.url},
    ),
    "google": Platform(
        "google_customer_match",
        "ads_opt_in",
        lambda: _sandbox("google", "GoogleServer")(token="google-sync-token", user_lists=("4400123",)),
        lambda s: "google-sync-token",
        lambda s: {
            "operating_account_id": "123-456-7890",
            "user_list_id": "4400123",
            "base_url": s.url,
            **POLL,
        },
        identifiers=2,
    ),
    "tiktok": Platform(
        "tiktok_customer_file",
        "ads_opt_in",
        lambda: _sandbox("tiktok", "TikTokServer")(access_token="tiktok-sync-token"),
        lambda s: "tiktok-sync-token",
        lambda s: {"advertiser_id": "7000", "base_url": f"{s.url}/open_api/v1.3"},
    ),
}


def people(n: int, start: int = 0) -> pd.DataFrame:
    rows = [
        {
            "customer_key": f"k{i:05d}",
            "full_name": "Trần Thị Bình",
            "email": f"person{i}@example.vn",
            "phone": f"+8490{i:07d}",
            "province": "Đà Nẵng",
            "gender": "female",
            "birthday": None,
            "email_opt_in": True,
            "sms_opt_in": True,
            "ads_opt_in": True,
        }
        for i in range(start, start + n)
    ]
    return pd.DataFrame(rows)


def forms(email: str, phone: str) -> list[str]:
    """Every way a member's identifiers could travel: plain, normalized, hashed (SHA-256, MD5)."""
    digits = phone.lstrip("+")
    national = "0" + digits[2:]
    plain = [email, email.upper(), phone, digits, national]
    hashed = [hashlib.sha256(v.encode()).hexdigest() for v in (email, phone, digits)]
    hashed.append(hashlib.md5(email.encode()).hexdigest())
    return plain + hashed + [h.upper() for h in hashed]


def wire(server: ContractServer) -> bytes:
    """Everything the server received: paths, queries and bodies of every request."""
    return b"\n".join(
        r.request.path.encode() + json.dumps(r.request.query).encode() + r.request.body for r in server.recorded
    )


@pytest.fixture(params=sorted(PLATFORMS))
def platform(request: pytest.FixtureRequest) -> Iterator[tuple[Platform, ContractServer]]:
    spec = PLATFORMS[request.param]
    server = spec.make_server()
    server.start()
    yield spec, server
    server.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'state.db'}")


def run(
    spec: Platform,
    server: ContractServer,
    ledger: Ledger,
    audience: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    day: str = "2026-11-24",
) -> dict[str, Any]:
    monkeypatch.setenv("AIRFLOW_CONN_SYNC_TEST", json.dumps({"password": spec.secret(server)}))
    options = {"connection": "sync_test", "retry": RETRY, **spec.options(server)}
    client = DESTINATIONS.build("dest", spec.kind, options, Path("destinations.yaml"))
    cfg = DestinationConfig(kind=spec.kind, sync=SyncPolicy(max_remove_share=0.5))
    try:
        return sync(ledger, "dest", cfg, client, "vip", "VIP", day, audience)
    finally:
        client.close()


def test_member_without_consent_never_reaches_the_platform(
    platform: tuple[Platform, ContractServer], ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, server = platform
    audience = people(1203)
    refused = [7, 500, 1100]
    audience[spec.consent] = audience[spec.consent].astype(object)
    audience.loc[refused, spec.consent] = [False, None, False]
    # The other channel's consent is irrelevant: an email-only opt-out still reaches ad platforms and v.v.
    other = "ads_opt_in" if spec.consent == "email_opt_in" else "email_opt_in"
    audience.loc[[3, 4], other] = False
    plan = run(spec, server, ledger, audience, monkeypatch)
    assert plan["status"] == "applied", plan
    assert plan["excluded_consent"] == 3 and plan["added"] == 1200
    sent = wire(server)
    for i in refused:
        row = audience.loc[i]
        leaked = [f for f in forms(row["email"], row["phone"]) if f.encode() in sent]
        assert leaked == [], f"{spec.kind}: a member without consent was sent ({len(leaked)} forms found)"
    kept = audience.loc[3]
    assert any(f.encode() in sent for f in forms(kept["email"], kept["phone"])), "consented members are sent"
    assert len(ledger.consent_records("dest", "vip")) == 1200


def test_faults_reruns_and_shrinking_never_duplicate_or_overreach(
    platform: tuple[Platform, ContractServer], ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, server = platform
    server.throttle(times=3)  # type: ignore[attr-defined]
    server.inject(Fault(Response(500, {"error": "boom"}), times=2))
    first = run(spec, server, ledger, people(1300), monkeypatch)
    assert first["status"] == "applied" and first["added"] == 1300, first
    assert first["retries"] >= 1
    again = run(spec, server, ledger, people(1300), monkeypatch)
    assert (again["adds"], again["removes"], again["added"]) == (0, 0, 0)
    shrunk = run(spec, server, ledger, people(1200, start=200), monkeypatch, day="2026-11-25")
    assert (shrunk["added"], shrunk["removed"]) == (100, 200), shrunk
    assert shrunk["expected_size"] == 1200
    twice = {k: n for k, n in server.added.items() if n > 1}
    assert twice == {}, f"{spec.kind}: {len(twice)} members added more than once"
    assert len(server.added) == 1400 * spec.identifiers
    assert sum(server.removed.values()) == 200 * spec.identifiers and set(server.removed) <= set(server.added), (
        f"{spec.kind}: removed something this system never added"
    )

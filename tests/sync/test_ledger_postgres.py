"""The audience ledger on PostgreSQL (production's state database), against the Mailchimp contract server:
first sync, re-run, shrink, per-member failure and the raw-cursor ledger read all behave as on SQLite."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pandas as pd
import pytest

from tasks.config.models import DestinationConfig, SyncPolicy
from tasks.destinations.mailchimp import Mailchimp
from tasks.sandbox.mailchimp import MailchimpServer
from tasks.sync.ledger import Ledger
from tasks.sync.service import sync


@pytest.fixture
def pg_ledger(fresh_database: Callable[[str], AbstractContextManager[str]]) -> Iterator[Ledger]:
    with fresh_database("audiences_state") as url:
        ledger = Ledger(url)
        try:
            yield ledger
        finally:
            ledger.engine.dispose()


def people(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": [f"k{i:05d}" for i in range(start, start + n)],
            "full_name": "Lê Văn Cường",
            "email": [f"pg{i}@example.vn" for i in range(start, start + n)],
            "phone": [f"+8493{i:07d}" for i in range(start, start + n)],
            "province": "Cần Thơ",
            "email_opt_in": True,
            "sms_opt_in": True,
            "ads_opt_in": True,
        }
    )


def test_sync_lifecycle_on_postgres(pg_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    server = MailchimpServer()
    server.start()
    monkeypatch.setenv("AIRFLOW_CONN_MAILCHIMP_PG", json.dumps({"password": server.api_key}))
    cfg = DestinationConfig(kind="mailchimp", sync=SyncPolicy(max_remove_share=0.5))

    def run(audience: pd.DataFrame, day: str) -> dict[str, Any]:
        options = {"connection": "mailchimp_pg", "list_id": server.list_id, "base_url": server.base_url}
        client = Mailchimp("mc", Mailchimp.Options.model_validate(options))
        try:
            return sync(pg_ledger, "mc", cfg, client, "vip", "VIP", day, audience)
        finally:
            client.close()

    try:
        server.invalid_emails.add("pg5@example.vn")
        first = run(people(1200), "2026-11-24")
        assert (first["status"], first["added"], first["failed"]) == ("applied", 1199, 1)
        held = pg_ledger.holdings("mc", "vip")
        assert len(held) == 1200 and (held["state"] == "failed").sum() == 1
        again = run(people(1200), "2026-11-24")
        assert (again["adds"], again["added"], again["removes"]) == (1, 0, 0), "only the failed member is retried"
        server.invalid_emails.clear()
        shrunk = run(people(1000, start=200), "2026-11-25")
        # k00005 never made it (failed twice) and left the segment: its failed row is forgotten, not removed.
        assert (shrunk["added"], shrunk["removed"]) == (0, 199)
        assert "k00005" not in set(pg_ledger.holdings("mc", "vip")["customer_key"])
        assert len(server.tagged("vip")) == 1000
        assert max(server.added.values()) == 1
        assert set(pg_ledger.consent_records("mc", "vip")["consent_field"]) == {"email_opt_in"}
    finally:
        server.stop()


def test_audience_lock_on_postgres_is_exclusive_and_released(pg_ledger: Ledger) -> None:
    other = Ledger(pg_ledger.engine.url.render_as_string(hide_password=False))
    with pg_ledger.audience_lock("mc", "vip") as first:
        assert first
        with other.audience_lock("mc", "vip") as second:
            assert not second, "a second session cannot hold the same audience"
        with other.audience_lock("mc", "other_segment") as unrelated:
            assert unrelated, "other audiences are not blocked"
    with other.audience_lock("mc", "vip") as again:
        assert again, "released when the first sync ends"

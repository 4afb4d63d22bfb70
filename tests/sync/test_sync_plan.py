"""Planning: exclusions (consent, suppression, reachability), the diff against the ledger, holds."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tasks.config.models import SyncPolicy
from tasks.destinations.audience import Capabilities
from tasks.sync.plan import make_plan

EMAIL = Capabilities(purpose="email_marketing", max_batch=2)
ADS = Capabilities(purpose="ad_personalization", max_batch=1000, min_audience_size=1000, needs=("email", "phone"))


def _members(n: int, **overrides: list[object]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_key": [f"c{i:03d}" for i in range(n)],
            "email": [f"user{i}@example.com" for i in range(n)],
            "phone": [f"+8491234{i:04d}" for i in range(n)],
            "email_opt_in": [True] * n,
            "sms_opt_in": [True] * n,
            "ads_opt_in": [True] * n,
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    return frame


def _holdings(keys: list[str], state: str = "member") -> pd.DataFrame:
    return pd.DataFrame({"customer_key": keys, "state": [state] * len(keys), "remote_ref": keys})


def _plan(members: pd.DataFrame, holdings: pd.DataFrame | None = None, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "destination": "mc",
        "kind": "mailchimp",
        "segment": "vip",
        "run_date": "2026-11-24",
        "members": members,
        "holdings": holdings if holdings is not None else _holdings([]),
        "capabilities": EMAIL,
        "policy": SyncPolicy(),
        "suppressed": set(),
    }
    args.update(kw)
    return make_plan(**args)  # type: ignore[arg-type]


def test_first_sync_adds_everyone_in_batches_of_the_platform_limit() -> None:
    plan = _plan(_members(5))
    assert plan.status == "planned"
    assert plan.adds == [f"c{i:03d}" for i in range(5)] and plan.removes == [] and plan.expected_size == 5
    items = plan.items(EMAIL)["add"]
    assert [b for _, b in items] == [1, 1, 2, 2, 3]


def test_diff_adds_new_removes_gone_and_counts_unchanged() -> None:
    plan = _plan(_members(4), _holdings(["c000", "c001", "gone"]))
    assert plan.adds == ["c002", "c003"]
    assert plan.removes == ["gone"]
    assert plan.unchanged == 2 and plan.current_size == 3 and plan.expected_size == 4


def test_members_without_consent_for_the_platform_purpose_are_excluded_and_removed() -> None:
    members = _members(3, email_opt_in=[True, False, None])
    plan = _plan(members, _holdings(["c001"]))
    assert plan.adds == ["c000"]
    assert plan.removes == ["c001"], "a member who withdrew consent must leave the audience"
    assert plan.excluded_consent == 2


def test_ad_platform_checks_ads_consent_not_email_consent() -> None:
    members = _members(1200, email_opt_in=[False] * 1200)
    plan = _plan(members, capabilities=ADS)
    assert plan.excluded_consent == 0 and len(plan.adds) == 1200


def test_global_suppression_list_matches_normalized_email_and_phone_hashes() -> None:
    members = _members(3, email=[" User0@Example.com ", "user1@example.com", None])
    suppressed = {
        hashlib.sha256(b"user0@example.com").hexdigest(),
        hashlib.sha256(b"+84912340002").hexdigest(),
    }
    plan = _plan(members, suppressed=suppressed)
    assert plan.adds == ["c001"]
    assert plan.excluded_suppressed == 2


def test_platform_suppressed_members_are_never_sent_again() -> None:
    plan = _plan(_members(2), _holdings(["c000"], state="suppressed"))
    assert plan.adds == ["c001"] and plan.excluded_suppressed == 1


def test_failed_members_are_retried_and_stale_failures_forgotten() -> None:
    holdings = pd.concat([_holdings(["c000"], "failed"), _holdings(["old"], "failed")])
    plan = _plan(_members(1), holdings)
    assert plan.adds == ["c000"] and plan.removes == [] and plan.stale_failed == ["old"]


def test_members_the_platform_cannot_reach_are_counted_not_sent() -> None:
    plan = _plan(_members(2, email=["a@example.com", None]))
    assert plan.adds == ["c000"] and plan.excluded_unreachable == 1


def test_large_removal_is_held_for_approval() -> None:
    plan = _plan(_members(6), _holdings([f"c{i:03d}" for i in range(10)]), policy=SyncPolicy(max_remove_share=0.3))
    assert plan.status == "held"
    assert "4 of 10 members would be removed" in (plan.hold_reason or "")
    ok = _plan(_members(8), _holdings([f"c{i:03d}" for i in range(10)]), policy=SyncPolicy(max_remove_share=0.3))
    assert ok.status == "planned"


def test_empty_segment_never_empties_a_live_audience() -> None:
    plan = _plan(_members(0), _holdings(["c000", "c001"]), policy=SyncPolicy(max_remove_share=1.0))
    assert plan.status == "held" and "segment is empty" in (plan.hold_reason or "")


def test_source_problem_holds_the_sync() -> None:
    plan = _plan(_members(2), upstream_problems=["crm.customers delivered an empty snapshot"])
    assert plan.status == "held" and "crm.customers" in (plan.hold_reason or "")


def test_platform_minimum_size_blocks_the_plan() -> None:
    plan = _plan(_members(999), capabilities=ADS)
    assert plan.status == "blocked" and "1,000" in (plan.hold_reason or "")
    assert _plan(_members(1000), capabilities=ADS).status == "planned"


def test_dry_run_plans_only() -> None:
    assert _plan(_members(3), policy=SyncPolicy(dry_run=True)).status == "dry_run"


@pytest.mark.parametrize("held", [["c000", "x"], []])
def test_replace_mode_sends_the_whole_audience(held: list[str]) -> None:
    plan = _plan(_members(3), _holdings(held), policy=SyncPolicy(mode="replace", max_remove_share=1.0))
    assert plan.replace == ["c000", "c001", "c002"] and plan.adds == [] and plan.removes == []
    assert plan.expected_size == 3
    assert plan.row()["removes"] == len(set(held) - {"c000", "c001", "c002"})

"""The sync engine against a real contract server (Mailchimp on loopback): plan -> apply -> ledger.

What must hold whatever happens: no member is added twice, nothing this system did not add is
removed, a failed or crashed apply resumes from the ledger, and a re-run sends nothing new.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.config.models import DestinationConfig, SyncPolicy
from tasks.destinations.audience import DestinationUnavailable
from tasks.destinations.mailchimp import Mailchimp
from tasks.sandbox.mailchimp import MailchimpServer
from tasks.sandbox.server import Fault, Response
from tasks.sync.ledger import Ledger
from tasks.sync.service import decide, sync

SEGMENT = "vip"
COLUMNS = ["customer_key", "full_name", "email", "phone", "province", "gender", "birthday"]
COLUMNS += ["email_opt_in", "sms_opt_in", "ads_opt_in"]


def audience(n: int, start: int = 0, **overrides: Any) -> pd.DataFrame:
    """Feature-shaped rows (what the pipeline hands a sync) for customers start..start+n-1."""
    rows = [
        {
            "customer_key": f"k{i:05d}",
            "full_name": "Nguyễn Văn An",
            "email": f"user{i}@example.com",
            "phone": f"+8491{i:07d}",
            "province": "Hà Nội",
            "gender": "male",
            "birthday": None,
            "email_opt_in": True,
            "sms_opt_in": True,
            "ads_opt_in": True,
        }
        for i in range(start, start + n)
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column, values in overrides.items():
        frame[column] = values
    return frame


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailchimpServer]:
    srv = MailchimpServer()
    srv.start()
    monkeypatch.setenv("AIRFLOW_CONN_MAILCHIMP_TEST", json.dumps({"password": srv.api_key}))
    yield srv
    srv.stop()


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("AUDIENCES_STATE_DB_URL", url)
    return Ledger(url)


def client(server: MailchimpServer, **retry: Any) -> Mailchimp:
    options = Mailchimp.Options.model_validate(
        {
            "connection": "mailchimp_test",
            "list_id": server.list_id,
            "base_url": server.base_url,
            "retry": {"max_attempts": 4, "base_delay": 0.01, "max_delay": 0.05, "timeout": 2.0, **retry},
        }
    )
    return Mailchimp("mc", options)


def config(**policy: Any) -> DestinationConfig:
    return DestinationConfig(kind="mailchimp", sync=SyncPolicy(**policy))


def run(
    ledger: Ledger, server: MailchimpServer, members: pd.DataFrame, day: str = "2026-11-24", **policy: Any
) -> dict[str, Any]:
    platform = client(server)
    try:
        return sync(ledger, "mc", config(**policy), platform, SEGMENT, "VIP", day, members)
    finally:
        platform.close()


def member_requests(server: MailchimpServer) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests_to("POST", f"/3.0/lists/{server.list_id}/segments/")]


def assert_no_duplicates(server: MailchimpServer) -> None:
    twice = {k: v for k, v in server.added.items() if v > 1}
    assert twice == {}, f"members added more than once: {len(twice)}"


def test_first_sync_adds_everyone_in_platform_sized_batches(ledger: Ledger, server: MailchimpServer) -> None:
    plan = run(ledger, server, audience(1201))
    assert plan["status"] == "applied"
    assert (plan["adds"], plan["added"], plan["removes"], plan["expected_size"]) == (1201, 1201, 0, 1201)
    assert len(server.tagged(SEGMENT)) == 1201
    sizes = [len(body.get("members_to_add", [])) for body in member_requests(server)]
    assert sizes and max(sizes) <= 500, "Mailchimp takes at most 500 members per call"
    held = ledger.holdings("mc", SEGMENT)
    assert set(held["state"]) == {"member"} and len(held) == 1201
    evidence = ledger.consent_records("mc", SEGMENT)
    assert set(evidence["consent_field"]) == {"email_opt_in"} and set(evidence["consent_as_of"]) == {"2026-11-24"}


def test_rerun_of_the_same_date_sends_nothing(ledger: Ledger, server: MailchimpServer) -> None:
    run(ledger, server, audience(30))
    before = len(server.recorded)
    writes_before = len(member_requests(server))
    again = run(ledger, server, audience(30))
    assert again["status"] == "applied" and (again["adds"], again["removes"], again["unchanged"]) == (0, 0, 30)
    assert len(member_requests(server)) == writes_before, "a re-run must not send any member"
    assert len(server.recorded) - before <= 3, "only lookups (tag id, suppressions) may be made"
    assert_no_duplicates(server)


def test_only_members_this_system_added_are_removed(ledger: Ledger, server: MailchimpServer) -> None:
    run(ledger, server, audience(10))
    tag_id = ledger.audience_id("mc", SEGMENT)
    assert tag_id is not None
    # Someone tagged an address by hand in Mailchimp: this system never added it, so never removes it.
    server.seed("colleague@example.com")
    from tasks.sandbox.mailchimp import subscriber_hash

    with server.lock:
        server.lists[server.list_id].segments[int(tag_id)].members.add(subscriber_hash("colleague@example.com"))
    plan = run(ledger, server, audience(8, start=2), max_remove_share=0.5)
    assert (plan["added"], plan["removed"]) == (0, 2)
    tagged = server.tagged(SEGMENT)
    assert "colleague@example.com" in tagged
    assert "user0@example.com" not in tagged and "user1@example.com" not in tagged
    removed = [e for body in member_requests(server) for e in body.get("members_to_remove", [])]
    assert sorted(removed) == ["user0@example.com", "user1@example.com"]


def test_large_removal_is_held_then_applied_after_approval(ledger: Ledger, server: MailchimpServer) -> None:
    run(ledger, server, audience(10))
    held = run(ledger, server, audience(3))
    assert held["status"] == "held" and "7 of 10" in held["hold_reason"]
    assert len(server.tagged(SEGMENT)) == 10, "a held plan sends nothing"
    with pytest.raises(ValueError, match="not held"):
        decide(ledger, str(ledger.plans().iloc[0]["plan_id"]), True, "tester")  # the first, applied plan
    with pytest.raises(KeyError, match="no sync plan"):
        decide(ledger, "2026-11-24-unknown", True, "tester")
    approved = decide(ledger, held["plan_id"], True, "marketing lead")
    assert approved["status"] == "approved" and approved["decided_by"] == "marketing lead"
    applied = run(ledger, server, audience(3), day="2026-11-25")
    assert applied["plan_id"] == held["plan_id"] and applied["status"] == "applied"
    assert len(server.tagged(SEGMENT)) == 3


def test_rejected_plan_sends_nothing_and_the_next_run_plans_again(ledger: Ledger, server: MailchimpServer) -> None:
    run(ledger, server, audience(10))
    held = run(ledger, server, audience(0))
    assert held["status"] == "held" and "segment is empty" in held["hold_reason"]
    assert decide(ledger, held["plan_id"], False, "lead")["status"] == "rejected"
    again = run(ledger, server, audience(10), day="2026-11-25")
    assert again["status"] == "applied" and again["adds"] == 0 and len(server.tagged(SEGMENT)) == 10


def test_partial_failures_are_recorded_per_member_and_retried_next_run(ledger: Ledger, server: MailchimpServer) -> None:
    server.invalid_emails.add("user3@example.com")
    first = run(ledger, server, audience(6))
    assert (first["added"], first["failed"]) == (5, 1)
    held = ledger.holdings("mc", SEGMENT).set_index("customer_key")
    assert held.loc["k00003", "state"] == "failed"
    server.invalid_emails.clear()
    second = run(ledger, server, audience(6), day="2026-11-25")
    assert (second["adds"], second["added"], second["failed"]) == (1, 1, 0)
    assert "user3@example.com" in server.tagged(SEGMENT)
    assert_no_duplicates(server)


def test_platform_unsubscribes_are_suppressed_everywhere_and_never_resent(
    ledger: Ledger, server: MailchimpServer
) -> None:
    server.seed("user2@example.com", status="unsubscribed")
    plan = run(ledger, server, audience(4))
    assert (plan["added"], plan["suppressed"], plan["failed"]) == (3, 1, 0)
    assert server.resubscribe_attempts == []
    assert len(ledger.suppressed_hashes()) >= 1, "the platform's unsubscribe joins the global suppression list"
    # Another destination planning the same people leaves the unsubscribed address out.
    from tasks.sync.plan import suppression_mask

    mask = suppression_mask(audience(4), ledger.suppressed_hashes())
    assert mask.tolist() == [False, False, True, False]
    again = run(ledger, server, audience(4), day="2026-11-25")
    assert again["adds"] == 0 and again["excluded_suppressed"] == 1


def test_throttling_500s_and_timeouts_are_retried_without_duplicates(ledger: Ledger, server: MailchimpServer) -> None:
    server.throttle(times=3)
    server.inject(
        Fault(Response(500, {"title": "Internal Server Error"}), times=2, path="/3.0/lists", method="POST"),
        Fault(Response(200, {}), times=1, path="/3.0/lists", method="POST", delay=2.5),  # beyond the 2 s timeout
    )
    plan = run(ledger, server, audience(1200))
    assert plan["status"] == "applied" and plan["added"] == 1200
    assert plan["retries"] >= 5
    assert len(server.tagged(SEGMENT)) == 1200
    assert_no_duplicates(server)


def test_unavailable_platform_fails_the_sync_and_the_next_run_resumes(ledger: Ledger, server: MailchimpServer) -> None:
    # Batch 2 of 3 keeps failing: batch 1 is accepted and recorded, the sync fails, nothing is lost.
    state = {"n": 0}
    original = server._take_fault
    unavailable = Fault(Response(503, {"title": "Service Unavailable"}), times=1_000)

    def flaky(req: Any) -> Fault | None:
        if req.method == "POST" and req.path.startswith(f"/3.0/lists/{server.list_id}/segments/"):
            state["n"] += 1
            if 2 <= state["n"] < 10:
                return unavailable
        return original(req)

    server._take_fault = flaky  # type: ignore[method-assign]
    with pytest.raises(DestinationUnavailable):
        run(ledger, server, audience(1200))
    failed = ledger.plans().iloc[-1]
    assert failed["status"] == "failed" and failed["added"] == 500 and "gave up" in failed["error"]
    state["n"] = 100
    resumed = run(ledger, server, audience(1200), day="2026-11-25")
    assert resumed["status"] == "applied" and resumed["adds"] == 700 and resumed["added"] == 700
    assert len(server.tagged(SEGMENT)) == 1200
    assert_no_duplicates(server)


def test_process_killed_between_batches_resumes_without_resending(
    ledger: Ledger, server: MailchimpServer, tmp_path: Path
) -> None:
    # The third batch request stalls; the process is killed while waiting for it, i.e. after batches
    # 1 and 2 were accepted and committed. A new process then finishes the job from the ledger.
    server.inject(Fault(Response(500, {}), times=1, path=f"/3.0/lists/{server.list_id}/segments/", delay=60))
    # Let two batch requests through first by consuming the fault only on the third call.
    pending = server.faults.pop()
    calls = {"n": 0}
    original = server._take_fault

    def third_stalls(req: Any) -> Fault | None:
        if req.method == "POST" and req.path.startswith(f"/3.0/lists/{server.list_id}/segments/"):
            calls["n"] += 1
            if calls["n"] == 3:
                return pending
        return original(req)

    server._take_fault = third_stalls  # type: ignore[method-assign]
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import test_sync_engine as t
            from tasks.sync.ledger import Ledger
            from tasks.sync.service import sync

            class S:
                list_id = {server.list_id!r}
                base_url = {server.base_url!r}

            platform = t.client(S())
            sync(Ledger(), "mc", t.config(), platform, t.SEGMENT, "VIP", "2026-11-24", t.audience(1400))
            """
        )
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while calls["n"] < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert calls["n"] == 3, "the child never reached the third batch"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(10)
    crashed = ledger.plans().iloc[-1]
    assert crashed["status"] == "applying", "the killed apply left its plan open"
    assert len(ledger.holdings("mc", SEGMENT)) == 1000, "batches 1 and 2 were committed before the kill"
    server._take_fault = original  # type: ignore[method-assign]
    resumed = run(ledger, server, audience(1400), day="2026-11-24")
    assert resumed["adds"] == 400 and resumed["added"] == 400 and resumed["status"] == "applied"
    assert ledger.plan(str(crashed["plan_id"]))["status"] == "superseded"  # type: ignore[index]
    assert len(server.tagged(SEGMENT)) == 1400
    assert_no_duplicates(server)
    # Across every request the server received, each address was added exactly once.
    added = Counter(e for body in member_requests(server) for e in body.get("members_to_add", []))
    assert len(added) == 1400 and max(added.values()) == 1


def test_one_sync_per_audience_at_a_time(ledger: Ledger, server: MailchimpServer, tmp_path: Path) -> None:
    from tasks.sync.service import SyncBusy

    # Another process holds the audience: a second sync refuses and sends nothing.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tasks.sync.ledger import Ledger\n"
            f"with Ledger({str(ledger.engine.url)!r}).audience_lock('mc', {SEGMENT!r}) as got:\n"
            "    print(got, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with pytest.raises(SyncBusy, match="another sync"):
            run(ledger, server, audience(5))
        assert member_requests(server) == [], "nothing was sent while another sync held the audience"
    finally:
        holder.kill()  # dies holding the lock: the lock dies with it
        holder.wait(10)
    assert run(ledger, server, audience(5))["added"] == 5
    with ledger.audience_lock("mc", SEGMENT) as got:
        assert got, "a finished sync released its lock"

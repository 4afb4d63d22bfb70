"""Platform delivery through the pipeline's stage functions: real segments of generated data go to a
Mailchimp contract server, the run summary and the marketers' history report say what happened,
and the CLI lists, approves and dry-runs syncs."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tasks import cli, pipeline
from tasks.sandbox.mailchimp import MailchimpServer

RUN = "2026-11-24"
SEGMENT = "repeat_buyers"


@pytest.fixture
def mailchimp(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailchimpServer]:
    server = MailchimpServer()
    server.start()
    monkeypatch.setenv("AIRFLOW_CONN_MAILCHIMP_SANDBOX", json.dumps({"password": server.api_key}))
    yield server
    server.stop()


def add_destination(home: Path, server: MailchimpServer, **sync: Any) -> None:
    path = home / "config" / "destinations.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["destinations"]["newsletter"] = {
        "kind": "mailchimp",
        "segments": [SEGMENT],
        "options": {
            "connection": "mailchimp_sandbox",
            "list_id": server.list_id,
            "base_url": server.base_url,
            "retry": {"base_delay": 0.01, "max_delay": 0.05, "timeout": 5},
        },
        "sync": sync,
    }
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def test_segment_synced_to_platform_with_consent_and_history(
    sample_home: Path,
    run_stages: Callable[..., dict[str, Any]],
    mailchimp: MailchimpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_destination(sample_home, mailchimp)
    done = run_stages(RUN)
    targets = pipeline.sync_targets(done["segments"])
    assert {"segment": SEGMENT, "destination": "newsletter"} in targets
    assert all(t["destination"] == "marketing_outbox" for t in targets if t["segment"] != SEGMENT)

    result = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert result["status"] == "applied" and result["plan_id"]

    _, audience = pipeline.audience_for(SEGMENT, RUN)
    consented = audience[audience["email_opt_in"].astype("boolean").fillna(False) & audience["email"].notna()]
    assert mailchimp.tagged(SEGMENT) == set(consented["email"]), "exactly the consented members with an email"
    assert result["added"] == len(consented) and result["members"] == len(consented)
    refused = set(audience["email"].dropna()) - set(consented["email"])
    assert refused, "the sample has members without email consent"
    sent = b"".join(r.request.body for r in mailchimp.recorded)
    assert not [e for e in refused if e.encode() in sent]

    again = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert (again["added"], again["removed"], again["status"]) == (0, 0, "applied")

    summary = pipeline.summarize(RUN, done["extracts"], done["reports"], [result])
    report = Path(summary["delivery_report"])
    html = report.read_text(encoding="utf-8")
    assert f"{SEGMENT} → newsletter" in html and f"{len(consented):,} members" in html
    assert not [e for e in audience["email"].dropna() if e in html], "the report holds counts, never addresses"

    assert cli.main(["syncs", "--segment", SEGMENT]) == 0
    out = capsys.readouterr().out
    assert result["plan_id"] in out and "applied" in out


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[queue.Queue[dict[str, Any]]]:
    """A Slack-compatible webhook on loopback collecting the alerts the pipeline sends."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AUDIENCES_ALERTS_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hook")
    yield received
    server.shutdown()


def test_dry_run_plans_without_sending_and_a_held_sync_is_approved_from_the_cli(
    sample_home: Path,
    run_stages: Callable[..., dict[str, Any]],
    mailchimp: MailchimpServer,
    webhook: queue.Queue[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_destination(sample_home, mailchimp, max_remove_share=0.0)
    run_stages(RUN)
    assert cli.main(["sync", SEGMENT, "newsletter", "--date", RUN, "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["status"] == "dry_run" and planned["added"] == 0
    assert mailchimp.requests_to("POST") == [], "a dry run sends nothing"

    first = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert first["status"] == "applied"
    # The next day the threshold rises: members would be removed, over the 0% allowed -> held.
    config = sample_home / "config" / "segments.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    for seg in doc["segments"]:
        if seg["name"] == SEGMENT:
            seg["rule"]["value"] = 5
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    pipeline.segments(RUN)
    before = set(mailchimp.tagged(SEGMENT))
    held = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert held["status"] == "held" and "would be removed" in held["hold_reason"]
    assert mailchimp.tagged(SEGMENT) == before

    alerts = [webhook.get(timeout=5)["text"] for _ in range(webhook.qsize())]
    [alert] = [a for a in alerts if "held for approval" in a]
    assert held["plan_id"] in alert and "would be removed" in alert
    _, members = pipeline.audience_for(SEGMENT, RUN)
    assert not [e for e in members["email"].dropna() if e in "".join(alerts)], "alerts carry no addresses"

    assert cli.main(["approve", held["plan_id"], "--by", "lead"]) == 0
    assert "approved" in capsys.readouterr().out
    applied = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert applied["plan_id"] == held["plan_id"] and applied["status"] == "applied"
    _, audience = pipeline.audience_for(SEGMENT, RUN)
    consented = audience[audience["email_opt_in"].astype("boolean").fillna(False) & audience["email"].notna()]
    assert mailchimp.tagged(SEGMENT) == set(consented["email"]) and applied["removed"] > 0
    assert cli.main(["reject", held["plan_id"]]) == 2, "a decided plan cannot be decided again"


def test_held_syncs_approved_in_airflow_are_applied_by_the_approval_task(
    sample_home: Path, run_stages: Callable[..., dict[str, Any]], mailchimp: MailchimpServer
) -> None:
    add_destination(sample_home, mailchimp)
    run_stages(RUN)
    assert pipeline.deliver_to(SEGMENT, "newsletter", RUN)["status"] == "applied"
    # An empty segment never empties a live audience: the plan is held.
    config = sample_home / "config" / "segments.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    for seg in doc["segments"]:
        if seg["name"] == SEGMENT:
            seg["rule"]["value"] = 10_000
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    pipeline.segments(RUN)
    plan = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert plan["status"] == "held" and "segment is empty" in plan["hold_reason"]
    [result] = pipeline.apply_held([plan], RUN, by="airflow:lead")
    assert result["status"] == "applied" and result["plan_id"] == plan["plan_id"]
    assert mailchimp.tagged(SEGMENT) == set()
    from tasks.sync.ledger import Ledger

    assert Ledger().plan(plan["plan_id"])["decided_by"] == "airflow:lead"  # type: ignore[index]


def test_suppression_file_keeps_addresses_out_of_every_sync(
    sample_home: Path, run_stages: Callable[..., dict[str, Any]], mailchimp: MailchimpServer, tmp_path: Path
) -> None:
    add_destination(sample_home, mailchimp)
    run_stages(RUN)
    _, audience = pipeline.audience_for(SEGMENT, RUN)
    consented = audience[audience["email_opt_in"].astype("boolean").fillna(False) & audience["email"].notna()]
    victims = consented["email"].head(3).str.upper().tolist()  # as a CRM export might spell them
    unsub = tmp_path / "unsubscribes.csv"
    pd.DataFrame({"email": victims}).to_csv(unsub, index=False)
    assert cli.main(["suppress", str(unsub)]) == 0
    result = pipeline.deliver_to(SEGMENT, "newsletter", RUN)
    assert result["added"] == len(consented) - 3
    assert not {v.lower() for v in victims} & mailchimp.tagged(SEGMENT)

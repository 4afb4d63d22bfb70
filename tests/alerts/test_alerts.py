"""Alerts against a real SMTP server (aiosmtpd) and a real webhook HTTP server, both on loopback:
content, no personal data, one failing channel does not stop the other, disabled kinds send nothing."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from tasks import settings
from tasks.alerts import AlertsConfig, alert_if_size_moved, load_config, on_task_failure, send_alert
from tasks.config.loader import ConfigError

WEBHOOK_ENV = "AUDIENCES_ALERTS_WEBHOOK_URL"
PII = ["lan.nguyen@example.com", "khach.hang+vip@shop.vn", "+84 912 345 678", "0912345678", "+84987654321"]
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
PHONE_RE = re.compile(r"(?:\+?84|0)[\s.\-]?\d{2,3}[\s.\-]?\d{3}[\s.\-]?\d{3,4}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Inbox:
    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content))
        return "250 Message accepted for delivery"

    def parsed(self, i: int = -1) -> EmailMessage:
        msg = email.message_from_bytes(self.messages[i], policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Webhook:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    box = Inbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    # Mailpit-style local relay: no TLS, no login; the connection's extra says so.
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_ALERTS", json.dumps({"host": "127.0.0.1", "port": port, "extra": {"starttls": False}})
    )
    yield box
    controller.stop()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.posts.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
            self.send_response(hook.status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if hook.status < 300 else b"invalid_token")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token"
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    yield hook
    server.shutdown()
    server.server_close()


def write_config(home: Path, **changes: Any) -> None:
    """The shipped alerts.yaml with some keys changed, in the test's private config folder."""
    path = home / "config" / "alerts.yaml"
    config = yaml.safe_load((settings.PROJECT_ROOT / "config" / "alerts.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def assert_no_personal_data(text: str) -> None:
    for value in PII:
        assert value not in text, f"{value!r} leaked into: {text}"
    assert not EMAIL_RE.search(text), text
    assert not PHONE_RE.search(text), text


def body_of(inbox: Inbox) -> tuple[str, str]:
    msg = inbox.parsed()
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(msg["Subject"]), part.get_content().replace("\r\n", "\n")


def test_shipped_config_is_valid() -> None:
    cfg = load_config(settings.PROJECT_ROOT / "config" / "alerts.yaml")
    assert all(dict(cfg.kinds).values())
    assert cfg.email is not None and cfg.email.connection == "smtp_alerts"
    assert cfg.webhook is not None and cfg.webhook.url_env == WEBHOOK_ENV
    assert 0 < cfg.size_move_share < 1


def test_alert_reaches_email_and_webhook_without_personal_data(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    delivered = send_alert(
        "sync_held",
        "mailchimp_vip: 1,250 removals for lan.nguyen@example.com's list",
        {
            "destination": "mailchimp_vip",
            "segment": "vip",
            "adds": 310,
            "removes": 1250,
            "share removed": 0.4123,
            "run date": "2026-11-24",
            "first refused": "khach.hang+vip@shop.vn (+84 912 345 678), 0912345678",
            "contact": "+84987654321",
        },
        link="http://localhost:8080/dags/customer_segments/runs/scheduled__2026-11-24T17%3A00%3A00%2B00%3A00",
    )

    assert delivered == ["email", "webhook"]
    subject, body = body_of(inbox)
    assert subject.startswith("[Audiences] Sync held for approval: mailchimp_vip: 1,250 removals")
    msg = inbox.parsed()
    assert msg["From"] == "audiences-alerts@example.com" and msg["To"] == "data-team@example.com"
    assert msg["X-Audiences-Alert"] == "sync_held"
    facts = ["• segment: vip", "• adds: 310", "• removes: 1,250", "• share removed: 0.4123", "• run date: 2026-11-24"]
    for line in facts:
        assert line in body, body
    assert "scheduled__2026-11-24T17%3A00%3A00%2B00%3A00" in body  # dates are not mistaken for phones
    assert "<email>" in body and "<phone>" in body
    assert len(webhook.posts) == 1
    post = webhook.posts[0]
    assert post["path"] == "/services/T000/B000/secret-token" and post["type"] == "application/json"
    assert set(post["json"]) == {"text"}
    assert post["json"]["text"] == body.rstrip("\n")
    for text in (subject, body, json.dumps(post["json"], ensure_ascii=False)):
        assert_no_personal_data(text)


def test_failing_webhook_does_not_stop_email(
    home: Path, inbox: Inbox, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.status = 500
    with caplog.at_level(logging.WARNING, logger="tasks.alerts"):
        delivered = send_alert("data_quality_warning", "pos.orders quarantined 4.1%", {"table": "pos.orders"})
    assert delivered == ["email"]
    assert len(inbox.messages) == 1 and len(webhook.posts) == 1
    assert "not sent by webhook" in caplog.text and "HTTP 500" in caplog.text
    assert "secret-token" not in caplog.text  # the webhook URL is a secret


def test_unreachable_smtp_does_not_stop_webhook(
    home: Path, webhook: Webhook, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({"host": "127.0.0.1", "port": free_port()}))
    with caplog.at_level(logging.WARNING, logger="tasks.alerts"):
        delivered = send_alert("task_failed", "customer_segments.unify", {"task": "unify"})
    assert delivered == ["webhook"]
    assert "not sent by email" in caplog.text


def test_missing_channels_are_warnings_not_errors(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_ALERTS", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ALERTS_WEBHOOK", raising=False)
    assert send_alert("task_failed", "x", {}) == []


def test_webhook_url_from_an_airflow_connection(home: Path, webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV)
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps({"conn_type": "http", "password": webhook.url}))
    write_config(home, email__enabled=False)
    assert send_alert("sync_held", "plan 42 held", {"plan": 42}) == ["webhook"]
    assert webhook.posts[0]["json"]["text"] == "Sync held for approval: plan 42 held\n• plan: 42"


def test_disabled_kind_sends_nothing(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    write_config(home, kinds__data_quality_warning=False)
    assert send_alert("data_quality_warning", "crm.contacts: 3 warnings", {"warnings": 3}) == []
    assert inbox.messages == [] and webhook.posts == []
    assert send_alert("sync_held", "still on", {}) == ["email", "webhook"]


def test_disabled_channel_is_skipped(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    write_config(home, webhook__enabled=False)
    assert send_alert("task_failed", "t", {}) == ["email"]
    assert webhook.posts == []


def test_audience_size_alert_only_beyond_the_configured_share(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    write_config(home, size_move_share=0.25)
    assert alert_if_size_moved("vip", 1000, 1200, "2026-11-24") == []  # +20% <= 25%
    assert alert_if_size_moved("vip", None, 1200, "2026-11-24") == []  # first run: nothing to compare
    assert alert_if_size_moved("vip", 1000, 700, "2026-11-24") == ["email", "webhook"]  # -30%
    subject, body = body_of(inbox)
    assert subject == "[Audiences] Audience size moved: vip -30% on 2026-11-24"
    assert "• previous size: 1,000" in body and "• size: 700" in body and "• threshold: ±25%" in body
    assert len(webhook.posts) == 1


def test_on_task_failure_reports_the_task_and_a_redacted_error(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    run_id = "scheduled__2026-11-24T17:00:00+00:00"
    ti = SimpleNamespace(
        dag_id="customer_segments",
        task_id="deliver",
        run_id=run_id,
        map_index=3,
        try_number=2,
        max_tries=2,
        log_url="http://localhost:8080/dags/customer_segments/runs/scheduled__2026-11-24T17%3A00%3A00%2B00%3A00"
        "/tasks/deliver/mapped/3?try_number=2",
    )
    error = RuntimeError("klaviyo refused lan.nguyen@example.com and +84 912 345 678: invalid profile")
    on_task_failure({"ti": ti, "exception": error, "dag_run": SimpleNamespace(run_id=run_id)})

    subject, body = body_of(inbox)
    assert subject == "[Audiences] Task failed: customer_segments.deliver[3]"
    for line in (
        "• dag: customer_segments",
        "• task: deliver",
        f"• run: {run_id}",
        "• map index: 3",
        "• try: 2 of 3",
        "• error: RuntimeError",
        "• message: klaviyo refused <email> and <phone>: invalid profile",
    ):
        assert line in body, body
    assert ti.log_url in body
    assert webhook.posts[0]["json"]["text"] == body.rstrip("\n")
    assert_no_personal_data(subject + body + json.dumps(webhook.posts[0]["json"]))


def test_on_task_failure_never_raises(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    (home / "config" / "alerts.yaml").write_text("kinds: {task_faild: true}\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tasks.alerts"):
        on_task_failure({"ti": None, "exception": ValueError("boom")})
    assert "task-failure alert not sent" in caplog.text


def test_link_carrying_personal_data_is_dropped(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    send_alert("sync_held", "plan", {}, link="http://localhost:8080/search?q=lan.nguyen%40example.com")
    _, body = body_of(inbox)
    assert "http" not in body
    assert_no_personal_data(body)


def test_config_errors_name_the_file_and_key(home: Path) -> None:
    path = home / "config" / "alerts.yaml"
    path.write_text(
        "kinds: {task_faild: true}\nsize_move_share: 0\nemail: {sender: alerts, to: [ops@example.com]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        send_alert("task_failed", "x", {})
    message = str(info.value)
    assert str(path) in message
    assert "kinds.task_faild: unknown key" in message
    assert "size_move_share" in message
    assert "email.sender: not an e-mail address: 'alerts'" in message


def test_unknown_kind_is_refused(home: Path) -> None:
    with pytest.raises(ValueError, match="unknown alert kind"):
        send_alert("disk_full", "x", {}, config=AlertsConfig())  # type: ignore[arg-type]


def test_hosts_ids_and_dates_are_not_mistaken_for_phones(home: Path, inbox: Inbox, webhook: Webhook) -> None:
    link = "http://10.0.0.12:8080/dags/customer_segments/runs/manual__2026-11-25T14%3A30%3A06.625622%2B00%3A00"
    send_alert(
        "task_failed",
        "worker 10.0.0.12:8793 timed out",
        {
            "run": "manual__2026-11-25T14:30:06.625622+00:00",
            "plan": "2026-11-24-123456789abc",
            "task instance": "01a2131d-2370-7104-1234-123456789012",
            "dotted phone": "84.912.345.678",
        },
        link=link,
    )
    _, body = body_of(inbox)
    assert "worker 10.0.0.12:8793 timed out" in body
    assert "• run: manual__2026-11-25T14:30:06.625622+00:00" in body
    assert "• plan: 2026-11-24-123456789abc" in body  # `audiences approve <plan>` must stay usable
    assert "• task instance: 01a2131d-2370-7104-1234-123456789012" in body
    assert "• dotted phone: <phone>" in body
    assert link in body

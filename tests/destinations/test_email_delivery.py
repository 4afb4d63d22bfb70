"""email against a real SMTP server on loopback (aiosmtpd): attachment, summary, link mode, no PII in the body."""

from __future__ import annotations

import email
import email.policy
import io
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import openpyxl
import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tasks.config.loader import ConfigError
from tasks.config.models import DestinationConfig
from tasks.destinations.base import build_destination
from tasks.destinations.email import Email, EmailDeliveryError
from tasks.destinations.rendering import render
from tasks.lake import open_lake
from tasks.settings import RunWindow

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAY1, DAY2 = date(2026, 11, 23), date(2026, 11, 24)
CONFIG_FILE = Path("config/destinations.yaml")
COLUMNS = ["customer_key", "full_name", "email", "phone", "province", "orders"]
TO = ["marketing@shop.vn", "crm-team@shop.vn"]
SMTP_PASSWORD = "smtp-secret-pw"


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps what it received."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == b"robot" and data.password == SMTP_PASSWORD.encode()
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    def parsed(self, i: int = -1) -> EmailMessage:
        msg = email.message_from_bytes(self.messages[i][2], policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    box = Inbox()
    port = _free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, authenticator=box.authenticate, auth_require_tls=False
    )
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_MARKETING",
        json.dumps({"host": "127.0.0.1", "port": port, "login": "robot", "password": SMTP_PASSWORD}),
    )
    yield box
    controller.stop()


def _audience(keys: list[str]) -> pd.DataFrame:
    n = [int(k[1:]) for k in keys]
    return pd.DataFrame(
        {
            "customer_key": keys,
            "full_name": [f"Nguyễn Thị Khách{i}" for i in n],
            "email": [f"khach{i}.private@example.vn" for i in n],
            "phone": [f"+8491234{i:04d}" for i in n],
            "province": ["Hồ Chí Minh"] * len(keys),
            "orders": [i for i in n],
        }
    )


@pytest.fixture
def two_runs(home: Path) -> pd.DataFrame:
    """Memberships of 'vip' for two run dates in the pipeline's lake; returns day 2's audience (K3..K7)."""
    lake = open_lake("lake")
    for day, keys in ((DAY1, ["K1", "K2", "K3", "K4"]), (DAY2, ["K3", "K4", "K5", "K6", "K7"])):
        frame = pd.DataFrame({"segment": "vip", "customer_key": keys, "group": None, "reasons": ""})
        lake.write("segments", "audiences", "memberships", day, frame.astype("string"))
    return _audience(["K3", "K4", "K5", "K6", "K7"])


def _dest(**options: Any) -> Email:
    base: dict[str, Any] = {
        "connection": "smtp_marketing",
        "sender": "audiences@shop.vn",
        "to": TO,
        "starttls": False,
        "columns": COLUMNS,
    }
    dest = build_destination("marketing_mail", DestinationConfig(kind="email", options=base | options), CONFIG_FILE)
    assert isinstance(dest, Email)
    return dest


def _parts(msg: EmailMessage) -> tuple[list[str], list[EmailMessage]]:
    """(every decoded header and non-attachment body, the attachment parts)."""
    texts = [f"{k}: {v}" for k, v in msg.items()]
    attachments = []
    for part in msg.walk():
        if part is not msg:
            texts += [f"{k}: {v}" for k, v in part.items()]
        if part.is_attachment():
            attachments.append(part)
        elif not part.is_multipart():
            texts.append(str(part.get_content()))
    return texts, attachments


def _body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    return str(part.get_content())


def test_mail_carries_the_csv_and_a_summary_of_the_changes(inbox: Inbox, two_runs: pd.DataFrame) -> None:
    dest = _dest(report_url="https://reports.shop.vn/runs/{run_date}.html")
    delivery = dest.deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    assert (delivery.destination, delivery.segment, delivery.members) == ("marketing_mail", "vip", 5)
    assert delivery.location == "mailto:marketing@shop.vn,crm-team@shop.vn"

    assert len(inbox.messages) == 1 and inbox.logins == ["robot"]
    sender, recipients, _ = inbox.messages[0]
    assert sender == "audiences@shop.vn" and recipients == TO
    msg = inbox.parsed()
    assert msg["Subject"] == "[Audiences] Khách VIP: 5 members (+3 / -2) — 2026-11-24"
    assert msg["To"] == "marketing@shop.vn, crm-team@shop.vn"
    assert msg["Auto-Submitted"] == "auto-generated"
    text = _body(msg, "plain")
    for line in (
        "Khách VIP (segment vip)",
        "Run date: 2026-11-24",
        "Members: 5",
        "Added since the last run (2026-11-23): 3",
        "Removed since the last run: 2",
        "The member list is attached: vip.csv",
        "Run history: https://reports.shop.vn/runs/2026-11-24.html",
    ):
        assert line in text
    html = _body(msg, "html")
    assert "Khách VIP" in html and "+3" in html and "-2" in html
    assert 'href="https://reports.shop.vn/runs/2026-11-24.html"' in html

    [attachment] = _parts(msg)[1]
    assert attachment.get_filename() == "vip.csv" and attachment.get_content_type() == "text/csv"
    data = attachment.get_payload(decode=True)
    assert isinstance(data, bytes) and data == render(two_runs, COLUMNS, "csv")
    back = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", dtype={"phone": str})
    pd.testing.assert_frame_equal(back, two_runs[COLUMNS], check_dtype=False)


def test_first_run_xlsx_attachment(inbox: Inbox, two_runs: pd.DataFrame) -> None:
    day1 = _audience(["K1", "K2", "K3", "K4"])
    _dest(format="xlsx").deliver("vip", "Khách VIP", day1, RunWindow(DAY1, TZ))
    msg = inbox.parsed()
    assert msg["Subject"] == "[Audiences] Khách VIP: 4 members (+4 / -0) — 2026-11-23"
    assert "First delivery of this segment: every member is new." in _body(msg, "plain")
    [attachment] = _parts(msg)[1]
    assert attachment.get_filename() == "vip.xlsx"
    data = attachment.get_payload(decode=True)
    assert isinstance(data, bytes)
    rows = list(openpyxl.load_workbook(io.BytesIO(data)).active.iter_rows(values_only=True))
    assert rows[0] == tuple(COLUMNS)
    assert rows[1:] == [tuple(r) for r in day1[COLUMNS].itertuples(index=False)]


def test_big_file_goes_by_presigned_link(
    inbox: Inbox, two_runs: pd.DataFrame, s3_endpoint: str, s3_bucket: str
) -> None:
    store = {"bucket": s3_bucket, "prefix": "mail-links", "endpoint_url": s3_endpoint, "link_expires_hours": 24}
    _dest(max_attachment_mb=0.0001, link_store=store).deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    msg = inbox.parsed()
    texts, attachments = _parts(msg)
    assert attachments == []
    text = _body(msg, "plain")
    assert "Download vip.csv" in text
    link = next(line for line in text.splitlines() if line.startswith("http"))
    assert link.startswith(f"{s3_endpoint}/{s3_bucket}/mail-links/2026-11-24/vip.csv?")
    assert "X-Amz-Expires=86400" in link
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == render(two_runs, COLUMNS, "csv")
    stored = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").get_object(
        Bucket=s3_bucket, Key="mail-links/2026-11-24/vip.csv"
    )
    assert stored["Body"].read() == render(two_runs, COLUMNS, "csv")
    _assert_no_member_pii("\n".join(texts), inbox.messages[-1][2], two_runs)


def test_too_big_without_link_store_is_refused_before_sending(inbox: Inbox, two_runs: pd.DataFrame) -> None:
    with pytest.raises(EmailDeliveryError, match=r"over max_attachment_mb .* set link_store"):
        _dest(max_attachment_mb=0.0001).deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    assert inbox.messages == []


def _assert_no_member_pii(outside: str, raw: bytes, audience: pd.DataFrame) -> None:
    for row in audience.itertuples():
        national = "0" + str(row.phone).removeprefix("+84")
        for value in (row.email, row.phone, national, row.full_name, str(row.full_name).split()[-1]):
            assert str(value) not in outside, f"member data {value!r} outside the attachment"
        for value in (row.email, row.phone, national):
            assert str(value).encode() not in raw


def test_no_member_email_phone_or_name_outside_the_attachment(inbox: Inbox, two_runs: pd.DataFrame) -> None:
    _dest(report_url="https://reports.shop.vn/{run_date}").deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    msg = inbox.parsed()
    texts, [attachment] = _parts(msg)
    _assert_no_member_pii("\n".join(texts), inbox.messages[-1][2], two_runs)
    _assert_no_member_pii(" ".join([inbox.messages[-1][0], *inbox.messages[-1][1]]), b"", two_runs)  # envelope
    inside = attachment.get_payload(decode=True)
    assert isinstance(inside, bytes)
    assert all(e.encode() in inside for e in two_runs["email"])  # they are in the file, as intended


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_rerun_of_the_same_day_sends_no_duplicate(
    inbox: Inbox, two_runs: pd.DataFrame, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = _dest(format=fmt)
    window = RunWindow(DAY2, TZ)
    dest.deliver("vip", "Khách VIP", two_runs, window)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # a retry minutes later: XLSX save times differ
    _dest(format=fmt).deliver("vip", "Khách VIP", two_runs, window)  # a retried Airflow task builds it afresh
    assert len(inbox.messages) == 1
    dest.deliver("vip", "Khách VIP", two_runs.iloc[:4], window)  # a corrected run is news: it is sent
    assert len(inbox.messages) == 2
    assert inbox.parsed()["Subject"] == "[Audiences] Khách VIP: 4 members (+2 / -2) — 2026-11-24"


def test_starttls_is_required_unless_switched_off(inbox: Inbox, two_runs: pd.DataFrame) -> None:
    with pytest.raises(EmailDeliveryError, match="does not offer STARTTLS"):
        _dest(starttls=True).deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    assert inbox.messages == []


def test_wrong_smtp_password_is_named_without_the_secret(
    inbox: Inbox, two_runs: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_SMTP_MARKETING"]) | {"password": "nope-nope"}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_MARKETING", json.dumps(conn))
    with pytest.raises(EmailDeliveryError) as exc:
        _dest().deliver("vip", "Khách VIP", two_runs, RunWindow(DAY2, TZ))
    assert "refused login 'robot'" in str(exc.value) and "nope-nope" not in str(exc.value)
    assert inbox.messages == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attach": False}, "attach is false, so set link_store"),
        ({"to": ["marketing@shop.vn", "not-an-address"]}, "not an email address: 'not-an-address'"),
        ({"report_url": "https://r/{date}"}, "report_url may only use the placeholder {run_date}"),
        ({"ssl": True, "starttls": True}, "choose one of ssl"),
        ({"link_store": {"bucket": "links", "link_expires_hours": 200}}, "7 days = 168 hours"),
    ],
)
def test_config_mistakes_fail_when_config_loads(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _dest(**options)
    assert message in str(exc.value)

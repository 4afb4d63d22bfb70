"""Each segment's file mailed to a distribution list, with a short summary a marketer reads first.

The summary says what changed, not who: segment title, size, members added and removed since the
last run, the run date, and a link to the run-history report. Member data (emails, phones, names)
only ever travels inside the attachment or behind the download link -- never in the subject, the
body or a header -- because mail bodies get forwarded, quoted, indexed and previewed in places an
attachment is not opened.

Big files are not attached: above ``max_attachment_mb`` (mail servers commonly refuse messages over
10-25 MB, and base64 adds a third) or with ``attach: false``, the file is uploaded with the
``s3_files`` code to ``link_store`` and the mail carries a presigned link that expires.

A re-run of the same day must not send the list the same mail again (ARCHITECTURE decision 5): each
sent mail is recorded in the state database with a digest of its file and counts, and an identical
re-delivery is skipped. A corrected run (different file or counts) is sent. The record is written
after the SMTP server accepted the mail, so a crash between the two can repeat one mail, never lose
one.
"""

from __future__ import annotations

import hashlib
import html
import logging
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import ClassVar

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator

from tasks.destinations.base import Delivery, register
from tasks.destinations.credentials import Credential, MissingCredentials, get_credential
from tasks.destinations.rendering import EXTENSION, MEDIA_TYPE, FileOptions, Summary, file_name, render, summarize
from tasks.destinations.s3_files import S3Target, S3Uploader, Upload
from tasks.settings import RunWindow
from tasks.smtp import ADDRESS, smtp_session

log = logging.getLogger(__name__)

_MB = 1024 * 1024

_metadata = sa.MetaData()
email_deliveries = sa.Table(
    "email_deliveries",
    _metadata,
    sa.Column("destination", sa.String(128), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("run_date", sa.String(10), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
)


class EmailDeliveryError(RuntimeError):
    """The mail could not be sent; the message says why and what to check (never a secret or PII)."""


class EmailOptions(FileOptions):
    connection: str  # Airflow connection: host:port, login/password (no login = no SMTP AUTH)
    host: str | None = None  # overrides the connection's host
    port: int | None = Field(None, ge=1, le=65535)
    sender: str = Field(pattern=rf"^{ADDRESS}$")
    to: list[str] = Field(min_length=1)
    starttls: bool = True
    ssl: bool = False  # implicit TLS (SMTPS, usually port 465) instead of STARTTLS
    attach: bool = True
    max_attachment_mb: float = Field(10, gt=0, le=100)
    link_store: S3Target | None = None
    report_url: str | None = None  # may contain {run_date}
    subject_prefix: str = "[Audiences]"
    timeout_s: float = Field(30, gt=0)

    @field_validator("to")
    @classmethod
    def _addresses(cls, to: list[str]) -> list[str]:
        import re

        bad = [a for a in to if not re.fullmatch(ADDRESS, a)]
        if bad:
            raise ValueError(f"not an email address: {', '.join(repr(a) for a in bad)}")
        return to

    @field_validator("report_url")
    @classmethod
    def _report_url(cls, url: str | None) -> str | None:
        if url is not None:
            try:
                url.format(run_date="2000-01-01")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"report_url may only use the placeholder {{run_date}} ({exc!r} in {url!r})") from None
        return url

    @model_validator(mode="after")
    def _consistent(self) -> EmailOptions:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS, port 465) and starttls (port 587), not both")
        if not self.attach and self.link_store is None:
            raise ValueError("attach is false, so set link_store (bucket, prefix, ...) for the download link")
        return self


@dataclass(frozen=True)
class Outgoing:
    """What one mail carries: the summary, and the file either attached or linked."""

    summary: Summary
    file_name: str
    size: int
    attachment: bytes | None
    upload: Upload | None
    report_url: str | None


@register("email")
class Email:
    kind: ClassVar[str]
    Options = EmailOptions

    def __init__(self, name: str, options: EmailOptions) -> None:
        self.name = name
        self.options = options
        self.uploader = S3Uploader(options.link_store) if options.link_store is not None else None
        self.last_message: EmailMessage | None = None

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery:
        from tasks.config.models import AppConfig
        from tasks.lake import open_lake

        o = self.options
        data = render(audience, o.columns, o.format, title=title)
        summary = summarize(segment, title, audience, window, open_lake(AppConfig().pipeline.lake_root))
        location = "mailto:" + ",".join(o.to)
        # XLSX bytes carry save times, so the digest is taken over the CSV form of the same rows.
        digest = self._digest(data if o.format == "csv" else render(audience, o.columns, "csv"), summary)
        sent = _already_sent(self.name, segment, window, digest)
        if sent is not None:
            log.info(
                "segment %s: identical mail %s already sent to %s for this run; not sending again", segment, sent, o.to
            )
            return Delivery(self.name, segment, len(audience), location)

        name = file_name(segment, o.format)
        attachment: bytes | None = data
        upload: Upload | None = None
        if not o.attach or len(data) > o.max_attachment_mb * _MB:
            if self.uploader is None:
                raise EmailDeliveryError(
                    f"{name} is {len(data) / _MB:.1f} MB, over max_attachment_mb ({o.max_attachment_mb}); set "
                    "link_store (an S3 bucket) so the mail can carry a download link, or raise max_attachment_mb"
                )
            key = self.uploader.key_for(segment, EXTENSION[o.format], window)
            upload = self.uploader.upload(key, data, MEDIA_TYPE[o.format])
            attachment = None
        report = o.report_url.format(run_date=window.run_date.isoformat()) if o.report_url else None
        message = self.compose(Outgoing(summary, name, len(data), attachment, upload, report))
        self._send(message)
        _record(self.name, segment, window, digest, str(message["Message-ID"]))
        self.last_message = message
        log.info(
            "segment %s: mailed %s to %d recipient(s) (%s)", segment, name, len(o.to), "link" if upload else "attached"
        )
        return Delivery(self.name, segment, len(audience), location)

    def _digest(self, rows: bytes, summary: Summary) -> str:
        h = hashlib.sha256(rows)
        c = summary.changes
        h.update(f"{summary.title}|{summary.members}|{c.added}|{c.removed}|{c.previous_run}".encode())
        h.update(self.options.model_dump_json(exclude={"link_store"}).encode())
        return h.hexdigest()

    # -- the message -------------------------------------------------------------------------------

    def compose(self, out: Outgoing) -> EmailMessage:
        o = self.options
        s = out.summary
        title = " ".join(s.title.split())  # no line breaks in a header
        msg = EmailMessage()
        msg["Subject"] = (
            f"{o.subject_prefix} {title}: {s.members:,} members "
            f"(+{s.changes.added:,} / -{s.changes.removed:,}) — {s.run_date.isoformat()}"
        ).strip()
        msg["From"] = o.sender
        msg["To"] = ", ".join(o.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid("audiences", domain=o.sender.rsplit("@", 1)[1])
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to the robot
        msg.set_content(_text(out, title))
        msg.add_alternative(_html(out, title), subtype="html")
        if out.attachment is not None:
            maintype, _, rest = MEDIA_TYPE[o.format].partition("/")
            msg.add_attachment(out.attachment, maintype=maintype, subtype=rest.split(";")[0], filename=out.file_name)
        return msg

    def _send(self, message: EmailMessage) -> None:
        o = self.options
        cred = get_credential(o.connection)
        host, port = self._address(cred)
        try:
            with smtp_session(
                host,
                port,
                implicit_tls=o.ssl,
                starttls=o.starttls,
                timeout_s=o.timeout_s,
                login=cred.login,
                password=cred.password,
                error=EmailDeliveryError,
                starttls_hint="the file would travel unencrypted. Use its TLS port (ssl: true) or, only for a relay "
                "on the same machine, starttls: false",
            ) as smtp:
                refused = smtp.send_message(message, from_addr=o.sender, to_addrs=o.to)
            if refused:
                log.warning("SMTP server %s refused %d of %d recipients: %s", host, len(refused), len(o.to), refused)
        except smtplib.SMTPAuthenticationError as exc:
            raise EmailDeliveryError(
                f"SMTP server {host}:{port} refused login {cred.login!r} (connection {cred.conn_id!r}): "
                f"{exc.smtp_code} {_text_of(exc.smtp_error)}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise EmailDeliveryError(
                f"SMTP server {host}:{port}: {exc}; with a login set, the server must offer AUTH (often only after "
                "STARTTLS); remove the connection's login for a relay without authentication"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise EmailDeliveryError(
                f"SMTP server {host}:{port} refused every recipient: {exc.recipients}; check the to option"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise EmailDeliveryError(f"sending mail via SMTP server {host}:{port} failed: {exc}") from exc

    def _address(self, cred: Credential) -> tuple[str, int]:
        o = self.options
        host, port = o.host, o.port
        if cred.host:
            conn_host, sep, conn_port = cred.host.rpartition(":")
            if not sep:
                conn_host, conn_port = cred.host, ""
            host = host or conn_host
            if port is None and conn_port.isdigit():
                port = int(conn_port)
        if not host:
            raise MissingCredentials(
                f"connection {cred.conn_id!r} has no host and the destination sets none; put the SMTP server "
                "in the connection's host and port (or the host option)"
            )
        return host, port or (465 if o.ssl else 587 if o.starttls else 25)


def _text(out: Outgoing, title: str) -> str:
    s = out.summary
    c = s.changes
    lines = [f"{title} (segment {s.segment})", f"Run date: {s.run_date.isoformat()}", "", f"Members: {s.members:,}"]
    if c.previous_run is None:
        lines.append("First delivery of this segment: every member is new.")
    else:
        lines += [
            f"Added since the last run ({c.previous_run.isoformat()}): {c.added:,}",
            f"Removed since the last run: {c.removed:,}",
        ]
    lines.append("")
    if out.upload is not None:
        lines += [
            f"Download {out.file_name} ({_size(out.size)}); the link works until "
            f"{out.upload.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC:",
            out.upload.link,
        ]
    else:
        lines.append(f"The member list is attached: {out.file_name} ({_size(out.size)}).")
    if out.report_url:
        lines += ["", f"Run history: {out.report_url}"]
    lines += ["", "The file holds personal data: keep it within the team and delete it when the campaign ends."]
    return "\n".join(lines) + "\n"


def _html(out: Outgoing, title: str) -> str:
    s = out.summary
    c = s.changes
    e = html.escape
    rows = [("Members", f"{s.members:,}")]
    if c.previous_run is None:
        rows.append(("Since the last run", "first delivery: every member is new"))
    else:
        rows += [(f"Added since {c.previous_run.isoformat()}", f"+{c.added:,}"), ("Removed", f"-{c.removed:,}")]
    rows.append(("Run date", s.run_date.isoformat()))
    table = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in rows
    )
    if out.upload is not None:
        expires = f"{out.upload.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        file_part = (
            f'<p><a href="{e(out.upload.link)}">Download {e(out.file_name)}</a> ({e(_size(out.size))}); '
            f"the link works until {e(expires)}.</p>"
        )
    else:
        file_part = f"<p>The member list is attached: {e(out.file_name)} ({e(_size(out.size))}).</p>"
    report = f'<p><a href="{e(out.report_url)}">Run history</a></p>' if out.report_url else ""
    return (
        '<!DOCTYPE html><html><body style="font-family:sans-serif">'
        f"<h2>{e(title)}</h2><p>Segment <code>{e(s.segment)}</code></p><table>{table}</table>{file_part}{report}"
        "<p><small>The file holds personal data: keep it within the team and delete it when the campaign "
        "ends.</small></p></body></html>"
    )


def _text_of(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _size(n: int) -> str:
    return f"{n / _MB:.1f} MB" if n >= _MB else f"{max(1, round(n / 1024))} KB"


# -- sent-mail record (state DB) ----------------------------------------------------------------------


def _engine() -> sa.Engine:
    from tasks.state.store import StateStore

    engine = StateStore().engine
    _metadata.create_all(engine)
    return engine


def _already_sent(destination: str, segment: str, window: RunWindow, digest: str) -> str | None:
    t = email_deliveries
    with _engine().connect() as conn:
        row = conn.execute(
            sa.select(t.c.digest, t.c.message_id).where(
                t.c.destination == destination, t.c.segment == segment, t.c.run_date == window.run_date.isoformat()
            )
        ).first()
    return str(row.message_id) if row is not None and row.digest == digest else None


def _record(destination: str, segment: str, window: RunWindow, digest: str, message_id: str) -> None:
    t = email_deliveries
    key = {"destination": destination, "segment": segment, "run_date": window.run_date.isoformat()}
    values = {"digest": digest, "message_id": message_id, "sent_at": datetime.now(UTC)}
    with _engine().begin() as conn:
        conn.execute(
            t.delete().where(t.c.destination == destination, t.c.segment == segment, t.c.run_date == key["run_date"])
        )
        conn.execute(t.insert().values(**key, **values))

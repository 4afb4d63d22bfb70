"""Alerts to the people who run the pipeline: a task failed, a sync waits for approval, an audience
moved more than expected, data quality slipped.

Why a module of its own: Airflow's built-in failure e-mail only knows "a task failed" and prints
the exception as it is, and exception texts here can quote a row ("x@y.com is already a member").
Alerts go to chat channels and inboxes that are forwarded, searched and previewed, so whatever an
alert carries is scrubbed of e-mail addresses and phone numbers first, whoever called it and
whatever they passed. Alerts are best effort: a dead webhook or SMTP server is logged as a warning
and the other channel is still tried; the caller — a task, or Airflow's failure callback — never
fails because an alert could not be sent.

Secrets stay out of the repository (ARCHITECTURE decision 8): the SMTP server is an Airflow
connection, the webhook URL is an Airflow connection or an environment variable, both named in
config/alerts.yaml.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks import settings
from tasks.config.loader import load_model
from tasks.destinations.credentials import Credential, MissingCredentials, get_credential
from tasks.smtp import ADDRESS, smtp_session

# httpx and tasks.destinations.http (which pulls in pandas) are imported where they are used: the
# DAG file imports this module for its failure callback, and parsing it must stay fast.

log = logging.getLogger(__name__)

AlertKind = Literal["task_failed", "sync_held", "audience_size_moved", "data_quality_warning"]
KINDS: tuple[str, ...] = get_args(AlertKind)
LABELS: dict[str, str] = {
    "task_failed": "Task failed",
    "sync_held": "Sync held for approval",
    "audience_size_moved": "Audience size moved",
    "data_quality_warning": "Data-quality warning",
}

# UUIDs, sync plan ids (2026-11-24-<hex>), dates, timestamps (run ids, log links) and IPv4 addresses
# can look like phone numbers to ``redact``; they are set aside before it runs and put back after.
_KEEP = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
    r"|\b\d{4}-\d{2}-\d{2}-[0-9a-f]{6,32}\b"
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?::\d{1,5})?(?![\d.])"
)
_HOLE = "\x00{}\x00"
TEXT_LIMIT = 500


# -- configuration --------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindFlags(Strict):
    task_failed: bool = True
    sync_held: bool = True
    audience_size_moved: bool = True
    data_quality_warning: bool = True


class EmailChannel(Strict):
    enabled: bool = True
    connection: str = "smtp_alerts"  # Airflow connection: host, port, login/password (no login = no AUTH)
    sender: str
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[Audiences]"
    starttls: bool = True  # the connection's extra {"starttls": false} turns it off for a local relay
    ssl: bool = False  # implicit TLS (port 465); the connection's extra {"ssl": true} also sets it
    timeout_s: float = Field(10, gt=0, le=120)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not re.fullmatch(ADDRESS, value):
            raise ValueError(f"not an e-mail address: {value!r}; e.g. audiences-alerts@your-company.com")
        return value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not re.fullmatch(ADDRESS, a)]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(map(repr, bad))}")
        return value


class WebhookChannel(Strict):
    enabled: bool = True
    # The URL carries its own secret (Slack: https://hooks.slack.com/services/T…/B…/…), so it is read
    # from the environment variable when set, else from the connection's password (or host) field.
    url_env: str | None = Field("AUDIENCES_ALERTS_WEBHOOK_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connection: str | None = "alerts_webhook"
    timeout_s: float = Field(10, gt=0, le=120)


class AlertsConfig(Strict):
    kinds: KindFlags = Field(default_factory=KindFlags)
    # audience_size_moved fires when |current - previous| / previous exceeds this share.
    size_move_share: float = Field(default=0.2, gt=0)
    email: EmailChannel | None = None
    webhook: WebhookChannel | None = None


def config_path() -> Path:
    return settings.config_dir() / "alerts.yaml"


def load_config(path: Path | None = None) -> AlertsConfig:
    """config/alerts.yaml; a config folder without one sends no alerts (a warning says so)."""
    path = path or config_path()
    if not path.is_file():
        log.warning("no %s: alerts are off", path)
        return AlertsConfig()
    return load_model(path, AlertsConfig)


# -- scrubbing ------------------------------------------------------------------------------------


def scrub(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` with every e-mail address and phone number replaced (dates and timestamps kept)."""
    kept: list[str] = []

    def hold(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return _HOLE.format(len(kept) - 1)

    from tasks.destinations.http import redact

    held = _KEEP.sub(hold, str(text))
    cleaned = redact(held, limit=max(limit, len(held)) * 2)
    for i, original in enumerate(kept):
        cleaned = cleaned.replace(_HOLE.format(i), original)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def scrub_value(value: str | int | float) -> str:
    """Numbers are shown with thousands separators, except an integer that reads as a phone number
    (84912345678): it is not shown. Pass large amounts as text ("150,000,000 VND") to keep them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return scrub(str(value))
    if isinstance(value, int):
        return "<phone>" if scrub(str(value)) != str(value) else f"{value:,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4g}"


def safe_link(link: str | None) -> str | None:
    """The link as given, unless its path, query or fragment (decoded) carry personal data, or it
    has user info (``user@host``): then no link at all. The host and port are not phone numbers."""
    if not link:
        return None
    parts = urlsplit(link)
    decoded = unquote(urlunsplit(("", "", parts.path, parts.query, parts.fragment)))
    if "@" in parts.netloc or scrub(decoded, limit=len(decoded) + 1) != decoded:
        log.warning("alert link dropped: it contained an e-mail address or phone number")
        return None
    return link


# -- channels -------------------------------------------------------------------------------------


def render_text(kind: str, title: str, facts: dict[str, str], link: str | None) -> str:
    lines = [f"{LABELS[kind]}: {title}"]
    lines += [f"• {key}: {value}" for key, value in facts.items()]
    if link:
        lines.append(link)
    return "\n".join(lines)


def send_email(channel: EmailChannel, kind: str, title: str, text: str) -> None:
    cred = get_credential(channel.connection)
    host, port, use_ssl, starttls = _smtp_address(channel, cred)
    message = EmailMessage()
    message["Subject"] = f"{channel.subject_prefix} {LABELS[kind]}: {' '.join(title.split())}".strip()
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid("audiences-alert", domain=channel.sender.rsplit("@", 1)[1])
    message["Auto-Submitted"] = "auto-generated"
    message["X-Audiences-Alert"] = kind
    message.set_content(text)
    with smtp_session(
        host,
        port,
        implicit_tls=use_ssl,
        starttls=starttls,
        timeout_s=channel.timeout_s,
        login=cred.login,
        password=cred.password,
        error=RuntimeError,
        starttls_hint='set ssl or, for a local relay only, the connection extra {"starttls": false}',
    ) as smtp:
        smtp.send_message(message, from_addr=channel.sender, to_addrs=channel.to)


def _smtp_address(channel: EmailChannel, cred: Credential) -> tuple[str, int, bool, bool]:
    if not cred.host:
        raise MissingCredentials(f"connection {cred.conn_id!r} has no host; set the SMTP server's host and port")
    host, sep, port_text = cred.host.rpartition(":")
    if not sep or not port_text.isdigit():
        host, port_text = cred.host, ""
    use_ssl = _flag(cred.extra.get("ssl"), channel.ssl)
    starttls = _flag(cred.extra.get("starttls"), channel.starttls) and not use_ssl
    port = int(port_text) if port_text else (465 if use_ssl else 587)
    return host, port, use_ssl, starttls


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def webhook_url(channel: WebhookChannel) -> str:
    if channel.url_env and os.environ.get(channel.url_env, "").strip():
        return os.environ[channel.url_env].strip()
    if channel.connection:
        cred = get_credential(channel.connection)
        for candidate in (cred.password, cred.host):
            if candidate and candidate.startswith(("http://", "https://")):
                return candidate
        raise MissingCredentials(
            f"connection {channel.connection!r} holds no webhook URL; put the full https:// URL in its password field"
        )
    raise MissingCredentials(f"no webhook URL: set the environment variable {channel.url_env}")


def send_webhook(channel: WebhookChannel, text: str) -> None:
    """POST {"text": ...} — the payload Slack, Mattermost, Rocket.Chat and Google Chat all accept."""
    import httpx

    url = webhook_url(channel)
    try:
        response = httpx.post(url, json={"text": text}, timeout=channel.timeout_s)
    except httpx.HTTPError as exc:
        # The URL is the secret: name the failure, never the URL.
        raise RuntimeError(f"webhook unreachable ({type(exc).__name__})") from None
    if response.status_code >= 300:
        raise RuntimeError(f"webhook answered HTTP {response.status_code}: {scrub(response.text, limit=200)}")


# -- the API --------------------------------------------------------------------------------------


def send_alert(
    kind: AlertKind,
    title: str,
    facts: Mapping[str, str | int | float],
    link: str | None = None,
    *,
    config: AlertsConfig | None = None,
) -> list[str]:
    """Send one alert on every enabled channel; returns the channels that accepted it.

    Title, facts and link are scrubbed of e-mail addresses and phone numbers before anything leaves
    the process. A channel that fails is logged as a warning and the next one is tried; nothing is
    raised (an invalid alerts.yaml is, with its file and key, so it gets fixed rather than ignored).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}; known: {', '.join(KINDS)}")
    cfg = config if config is not None else load_config()
    if not getattr(cfg.kinds, kind):
        return []
    clean_title = scrub(title, limit=200)
    clean_facts = {scrub(str(k), limit=80): scrub_value(v) for k, v in facts.items()}
    text = render_text(kind, clean_title, clean_facts, safe_link(link))
    channels: list[tuple[str, Callable[[], None]]] = []
    if cfg.email is not None and cfg.email.enabled:
        email = cfg.email
        channels.append(("email", lambda: send_email(email, kind, clean_title, text)))
    if cfg.webhook is not None and cfg.webhook.enabled:
        webhook = cfg.webhook
        channels.append(("webhook", lambda: send_webhook(webhook, text)))
    delivered: list[str] = []
    for name, send in channels:
        try:
            send()
        except MissingCredentials as exc:  # a channel nobody set up yet (e.g. the demo): say so once, calmly
            log.info("alert %s not sent by %s: channel not configured (%s)", kind, name, scrub(str(exc), 300))
        except Exception as exc:  # best effort: one channel's failure must not stop the other or the caller
            log.warning("alert %s not sent by %s: %s: %s", kind, name, type(exc).__name__, scrub(str(exc), 300))
        else:
            delivered.append(name)
    return delivered


def size_moved(previous: int | None, current: int, share: float) -> bool:
    """True when the size moved by more than ``share`` of the previous size (from 0: any growth)."""
    if previous is None:
        return False
    if previous == 0:
        return current > 0
    return abs(current - previous) / previous > share


def alert_if_size_moved(
    segment: str,
    previous: int | None,
    current: int,
    run_date: str,
    link: str | None = None,
    *,
    config: AlertsConfig | None = None,
) -> list[str]:
    """audience_size_moved when a segment's size moved more than ``size_move_share`` since the last run."""
    cfg = config if config is not None else load_config()
    if not size_moved(previous, current, cfg.size_move_share):
        return []
    assert previous is not None
    change = (current - previous) / previous if previous else 1.0
    return send_alert(
        "audience_size_moved",
        f"{segment} {change:+.0%} on {run_date}",
        {
            "segment": segment,
            "run date": run_date,
            "previous size": previous,
            "size": current,
            "change": f"{change:+.1%}",
            "threshold": f"±{cfg.size_move_share:.0%}",
        },
        link,
        config=cfg,
    )


def on_task_failure(context: Mapping[str, Any]) -> None:
    """Airflow ``on_failure_callback``: which task of which run failed and why, without personal data.

    Never raises: an exception from a failure callback would only hide the failure it reports.
    """
    try:
        ti = context.get("ti") or context.get("task_instance")
        dag_id = str(getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"))
        task_id = str(getattr(ti, "task_id", "?"))
        map_index = getattr(ti, "map_index", -1)
        run_id = str(getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", "?"))
        error = context.get("exception")
        facts: dict[str, str | int | float] = {"dag": dag_id, "task": task_id, "run": run_id}
        if isinstance(map_index, int) and map_index >= 0:
            facts["map index"] = map_index
        try_number = getattr(ti, "try_number", None)
        if isinstance(try_number, int):
            max_tries = getattr(ti, "max_tries", None)
            facts["try"] = f"{try_number} of {max_tries + 1}" if isinstance(max_tries, int) else try_number
        if error is not None:
            facts["error"] = type(error).__name__ if isinstance(error, BaseException) else "error"
            facts["message"] = scrub(str(error), limit=TEXT_LIMIT)
        link: str | None = None
        try:
            link = str(ti.log_url) if ti is not None and getattr(ti, "log_url", None) else None
        except Exception:  # log_url reads Airflow config; no link is better than no alert
            link = None
        label = f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id
        send_alert("task_failed", f"{dag_id}.{label}", facts, link)
    except Exception as exc:
        log.warning("task-failure alert not sent: %s: %s", type(exc).__name__, scrub(str(exc), 300))

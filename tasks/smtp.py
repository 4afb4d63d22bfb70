"""One way to open an SMTP session, for alert mail (tasks/alerts.py) and file delivery by email
(tasks/destinations/email.py).

Encryption is required unless turned off on purpose: implicit TLS (SMTPS) or STARTTLS, and a server
that does not offer STARTTLS is refused rather than spoken to in clear. Each caller keeps its own error
type and its own hint on what to change, because they are configured in different places.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

# An address without display name: local@domain.tld, none of the characters that separate addresses.
ADDRESS = r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+"


@contextmanager
def smtp_session(
    host: str,
    port: int,
    *,
    implicit_tls: bool,
    starttls: bool,
    timeout_s: float,
    login: str | None,
    password: str | None,
    error: type[Exception],
    starttls_hint: str,
) -> Iterator[smtplib.SMTP]:
    """A session connected (``error`` when the server cannot be reached), encrypted as asked and logged in
    when a login is set; quit (or closed) on the way out whatever happened inside."""
    context = ssl.create_default_context()
    try:
        smtp = (
            smtplib.SMTP_SSL(host, port, timeout=timeout_s, context=context)
            if implicit_tls
            else smtplib.SMTP(host, port, timeout=timeout_s)
        )
    except OSError as exc:
        raise error(f"cannot reach SMTP server {host}:{port}: {exc}") from exc
    try:
        smtp.ehlo()
        if starttls:
            if not smtp.has_extn("starttls"):
                raise error(f"SMTP server {host}:{port} does not offer STARTTLS; {starttls_hint}")
            smtp.starttls(context=context)
            smtp.ehlo()
        if login:
            smtp.login(login, password or "")
        yield smtp
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

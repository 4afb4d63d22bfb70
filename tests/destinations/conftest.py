"""Fixtures for platform-client tests: a started contract server per platform, with the Airflow connection
the client reads pointing at it (``AIRFLOW_CONN_<ID>`` via monkeypatch). Imports are inside the fixtures so
one platform's module never breaks another platform's tests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

# --- email platforms (Mailchimp, Klaviyo, SendGrid, Brevo) --------------------------------------------


def _esp_serve(server: Any, monkeypatch: pytest.MonkeyPatch, conn_id: str) -> Iterator[Any]:
    server.start()
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"password": server.api_key}))
    try:
        yield server
    finally:
        _stop(server)


def _stop(server: Any) -> None:
    """``server.stop()`` without waiting out serve_forever's 0.5 s poll: wake its select with a connection."""
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    host, port = server._httpd.server_address[:2]
    while stopper.is_alive():
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=0.1).close()
        stopper.join(0.01)


@pytest.fixture
def mailchimp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """MailchimpServer on loopback; connection ``mailchimp_test`` holds its API key."""
    from tasks.sandbox.mailchimp import MailchimpServer

    yield from _esp_serve(MailchimpServer(), monkeypatch, "mailchimp_test")


@pytest.fixture
def klaviyo_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """KlaviyoServer on loopback; connection ``klaviyo_test`` holds its private API key."""
    from tasks.sandbox.klaviyo import KlaviyoServer

    yield from _esp_serve(KlaviyoServer(), monkeypatch, "klaviyo_test")


@pytest.fixture
def sendgrid_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """SendGridServer on loopback; connection ``sendgrid_test`` holds its API key."""
    from tasks.sandbox.sendgrid import SendGridServer

    yield from _esp_serve(SendGridServer(), monkeypatch, "sendgrid_test")


@pytest.fixture
def brevo_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """BrevoServer on loopback; connection ``brevo_test`` holds its API key."""
    from tasks.sandbox.brevo import BrevoServer

    yield from _esp_serve(BrevoServer(), monkeypatch, "brevo_test")


@pytest.fixture
def esp_members() -> Callable[..., pd.DataFrame]:
    """``esp_members(*emails)``: a member frame (MEMBER_COLUMNS) with customer keys c<i>, names and phones."""
    from tasks.destinations.audience import MEMBER_COLUMNS

    def make(*emails: str | None, phones: bool = True) -> pd.DataFrame:
        rows = []
        for i, email in enumerate(emails):
            row: dict[str, Any] = dict.fromkeys(MEMBER_COLUMNS)
            row.update(
                customer_key=f"c{i}",
                email=email,
                phone=f"+8491234{i:04d}" if phones else None,
                first_name="An",
                last_name="Nguyễn",
                city="Hà Nội",
                country="VN",
                email_opt_in=True,
            )
            rows.append(row)
        return pd.DataFrame(rows, columns=MEMBER_COLUMNS)

    return make


@pytest.fixture
def esp_sleeps() -> list[float]:
    """A list a test hands to ``client.sleep = esp_sleeps.append``: every wait the client asked for."""
    return []


# --- ad platforms (Meta, Google, TikTok) ------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One contract server per test module, from the module's ``make_server()`` (starting one per test is slow)."""
    server = request.module.make_server()
    server.start()
    yield server
    _stop(server)


@pytest.fixture
def contract_server(live_server: Any) -> Any:
    """The module's server, reset before every test."""
    live_server.reset()
    return live_server


@pytest.fixture
def platform_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Any, list[float]]]]:
    """``platform_client(cls, conn_id, token, options)``: a client whose connection holds ``token``, and the list
    its HttpClient's retry waits go to; closed after the test."""
    made: list[Any] = []

    def make(cls: Any, conn_id: str, token: str, options: dict[str, Any]) -> tuple[Any, list[float]]:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"password": token}))
        client = cls(conn_id, cls.Options.model_validate({"connection": conn_id} | options))
        sleeps: list[float] = []
        client.http.sleep = sleeps.append
        made.append(client)
        return client, sleeps

    yield make
    for client in made:
        client.close()

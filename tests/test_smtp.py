"""The shared SMTP session against a real local server (aiosmtpd): plain relay, refused STARTTLS, no server."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tasks.smtp import ADDRESS, smtp_session


class Box:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content))
        return "250 OK"


class Refused(Exception):
    pass


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def relay() -> Iterator[tuple[Box, int]]:
    box, port = Box(), _port()
    controller = Controller(box, hostname="127.0.0.1", port=port)  # no TLS offered, no AUTH
    controller.start()
    yield box, port
    controller.stop()


def _session(port: int, starttls: bool) -> Any:
    return smtp_session(
        "127.0.0.1", port, implicit_tls=False, starttls=starttls, timeout_s=5, login=None, password=None,
        error=Refused, starttls_hint="turn it off for a local relay",
    )  # fmt: skip


def test_plain_relay_delivers_when_starttls_is_turned_off(relay: tuple[Box, int]) -> None:
    box, port = relay
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = "hi", "a@shop.vn", "b@shop.vn"
    msg.set_content("body")
    with _session(port, starttls=False) as smtp:
        smtp.send_message(msg)
    got = email.message_from_bytes(box.messages[0], policy=email.policy.default)
    assert got["Subject"] == "hi"


def test_server_without_starttls_is_refused_with_the_callers_hint(relay: tuple[Box, int]) -> None:
    box, port = relay
    with (
        pytest.raises(Refused, match=r"does not offer STARTTLS; turn it off for a local relay"),
        _session(port, starttls=True),
    ):
        pytest.fail("the session must not open")
    assert box.messages == []


def test_unreachable_server_raises_the_callers_error() -> None:
    with pytest.raises(Refused, match=r"cannot reach SMTP server 127\.0\.0\.1:\d+"), _session(_port(), starttls=False):
        pytest.fail("the session must not open")


@pytest.mark.parametrize(
    ("address", "valid"),
    [("ops@shop.vn", True), ("a.b+c@mail.shop.vn", True), ("ops@shop", False), ("Ops <ops@shop.vn>", False),
     ("a@b.vn, c@d.vn", False), ("ops@shop.vn\n", False)],
)  # fmt: skip
def test_address_pattern(address: str, valid: bool) -> None:
    import re

    assert bool(re.fullmatch(ADDRESS, address)) is valid

"""Contact normalization: phones to E.164, emails trimmed and lower-cased, junk to None."""

from __future__ import annotations

import pytest

from tasks.normalize.contact import normalize_email, normalize_phone


@pytest.mark.parametrize(
    "raw",
    ["0912345678", "+84912345678", "84912345678", "091 234 5678", "(+84) 91-234-5678", " 0912.345.678 "],
)
def test_phone_spellings_agree_on_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+84912345678"


@pytest.mark.parametrize("raw", [None, "", "   ", "abc", "12345", "0912", "not a phone", "+84 12"])
def test_junk_or_short_phone_is_none(raw: str | None) -> None:
    assert normalize_phone(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Lan.Nguyen@Example.COM ", "lan.nguyen@example.com"),
        ("a@b.vn", "a@b.vn"),
        ("x+tag@mail.example.com.vn\n", "x+tag@mail.example.com.vn"),
    ],
)
def test_email_trimmed_and_lowercased(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "a@@b.com", "a b@c.vn", "no-at.example.com", "a@b", "@b.com", "a@-b.com"])
def test_malformed_email_is_none(raw: str | None) -> None:
    assert normalize_email(raw) is None

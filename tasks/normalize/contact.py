"""Emails and phones in the one form platforms and joins expect."""

from __future__ import annotations

import re

import phonenumbers

# Syntax only: DNS is unreachable from pipeline workers, and a deliverability check would reject
# valid addresses there (platform-notes.md).
_EMAIL = re.compile(
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$"
)
EMAIL_PATTERN = _EMAIL.pattern


def normalize_email(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip().lower()
    return value if _EMAIL.match(value) else None


def normalize_phone(raw: str | None, region: str = "VN") -> str | None:
    """E.164 ('+84912345678') or None; '0912 345 678', '84912345678' and '+84...' all agree."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    digits = re.sub(r"\D", "", text)
    if not text.startswith("+") and digits.startswith("84") and len(digits) >= 11:
        text = "+" + digits
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

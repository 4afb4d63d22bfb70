"""Diacritic folding that treats Vietnamese đ/Đ as d (Unicode does not decompose it)."""

from __future__ import annotations

import re
import unicodedata

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def fold(value: str) -> str:
    """'TP. Hồ Chí Minh' -> 'tp ho chi minh': lower-case ASCII words, for matching only."""
    decomposed = unicodedata.normalize("NFD", value.replace("đ", "d").replace("Đ", "D"))
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_ALNUM.sub(" ", ascii_only.lower()).strip()

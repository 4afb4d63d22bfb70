"""Cast a raw extract to its canonical table's types, keeping every row that does not fit.

GX checks values, not whether "12a" is an integer; casting first, with the failing rows set aside
under a precise reason, means the suite runs on typed data and nothing is silently coerced to null.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.tables import ROW_COL, SOURCE_COL, ColumnType, TableSpec

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass
class Conformed:
    frame: pd.DataFrame  # canonical columns + lineage, typed
    rejects: dict[int, list[str]] = field(default_factory=dict)  # frame index -> reasons
    missing_required: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _to_bool(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return pd.NA


def _integer(s: pd.Series) -> pd.Series:
    num = pd.to_numeric(s, errors="coerce")
    whole = num.where(num.isna() | (num == num.round()))
    return whole.astype("Int64")


_TZ_SUFFIX = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"


def naive_mask(s: pd.Series) -> pd.Series:
    """Values that carry a date-time but no time zone (``2026-11-20 10:00``)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return pd.Series(False, index=s.index)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return s.notna()
    text = s.astype("string").str.strip()
    return (text.str.len() > 10).fillna(False) & ~text.str.contains(_TZ_SUFFIX, regex=True).fillna(True)


def timestamps(s: pd.Series, naive_zone: str) -> pd.Series:
    """UTC timestamps; values without a zone are read as wall-clock time in ``naive_zone``.

    POS terminals often write local time without an offset; reading it as UTC would shift every
    Vietnamese sale by seven hours and move evening sales to the wrong business day.
    """
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC")
    naive = naive_mask(s)
    out = pd.to_datetime(s.where(~naive), utc=True, format="ISO8601", errors="coerce")
    if naive.any():
        local = pd.to_datetime(s.where(naive), format="ISO8601", errors="coerce")
        local = local.dt.tz_localize(naive_zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
        out = out.where(~naive, local)
    return out


def _date(s: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(s, format="ISO8601", errors="coerce")
    return parsed.dt.date.astype(object).where(parsed.notna(), None)


CASTS: dict[ColumnType, Callable[[pd.Series], pd.Series]] = {
    "string": lambda s: s.astype("string"),
    "integer": _integer,
    "number": lambda s: pd.to_numeric(s, errors="coerce").astype("float64"),
    "boolean": lambda s: s.map(_to_bool).astype("boolean"),
    "date": _date,
    "timestamp": lambda s: timestamps(s, "UTC"),
}


def _present(s: pd.Series) -> pd.Series:
    return s.notna() & (s.astype("string").str.strip() != "")


def conform(raw: pd.DataFrame, spec: TableSpec, naive_zone: str = "UTC") -> Conformed:
    out = Conformed(frame=pd.DataFrame(index=raw.index))
    lineage = [c for c in (SOURCE_COL, ROW_COL) if c in raw.columns]
    out.extra_columns = sorted(c for c in raw.columns if c not in spec.columns and c not in lineage)
    for col, kind in spec.columns.items():
        if col not in raw.columns:
            (out.missing_required if col in spec.required_columns else out.missing_optional).append(col)
            out.frame[col] = pd.Series(pd.NA, index=raw.index, dtype="string" if kind == "string" else "object")
            continue
        src = raw[col]
        if kind == "timestamp":
            naive = int(naive_mask(src).sum())
            if naive:
                out.notes.append(f"{col}: {naive} timestamp(s) without a time zone read as {naive_zone}")
            cast = timestamps(src, naive_zone)
        else:
            cast = CASTS[kind](src)
        failed = _present(src) & cast.isna()
        for idx in raw.index[failed.fillna(False).to_numpy(dtype=bool)]:
            out.rejects.setdefault(int(idx), []).append(f"cast.{col}: not a valid {kind}")
        out.frame[col] = cast
    for col in lineage:
        out.frame[col] = raw[col]
    return out

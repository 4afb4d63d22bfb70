"""Time windows for event conditions, as half-open instants in the business time zone.

Every window is ``[start, end)`` with both ends at 00:00 local time, so an order at 00:10 on the 1st
belongs to that month whatever the UTC offset, and no window ever reaches past the run's ``as_of``
(a backfill for a past date answers exactly what that date would have answered).

Window kinds (exactly one per window):

* ``last_days: N`` — the N business days ending with the run date (1 = the run date only).
* ``last_weeks: N`` — ``last_days: 7 * N``.
* ``last_months: N`` — from the same day-of-month N calendar months before the run date up to the
  run date, both included (run date 2026-04-15, ``last_months: 1`` = 2026-03-15 .. 2026-04-15). When
  that month is shorter, the day is clamped to its last day (2026-03-31 → 2026-02-28).
* ``between_days_ago: [N, M]`` — the days N..M before the run date, both included (0 = the run date).
* ``period: today | yesterday | this_week | last_week | this_month | last_month | this_year | last_year``
  — calendar periods; weeks start on Monday; "this ..." periods end at ``as_of`` (nothing in the future
  is visible to a run anyway).
* ``from: 2026-01-01, to: 2026-01-31`` — a custom range of dates, both included; an end after the run
  date is clipped to ``as_of``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.config.loader import suggest
from tasks.settings import RunWindow

PERIODS: tuple[str, ...] = (
    "today",
    "yesterday",
    "this_week",
    "last_week",
    "this_month",
    "last_month",
    "this_year",
    "last_year",
)
_KINDS = ("last_days", "last_weeks", "last_months", "between_days_ago", "period", "from")


class Node(BaseModel):
    """Base of every rule-language model: immutable, and a misspelt key names the key it resembles."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _suggest_keys(cls, data: Any) -> Any:
        # Only near misses get a custom message; other extra keys keep pydantic's located
        # "unknown key" error, which points at the key itself.
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if isinstance(key, str) and key not in known and key not in cls.model_fields:
                    hint = suggest(key, known)
                    if hint.startswith("; did you mean"):
                        raise ValueError(f"unknown key {key!r}{hint}")
        return data


def shift_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, clamped to the target month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = date(year + (month == 12), month % 12 + 1, 1)
    return date(year, month, min(day.day, (next_first - timedelta(days=1)).day))


class Window(Node):
    """One time window; see the module docstring for the meaning of each kind."""

    last_days: int | None = Field(None, gt=0, le=3660)
    last_weeks: int | None = Field(None, gt=0, le=520)
    last_months: int | None = Field(None, gt=0, le=120)
    between_days_ago: tuple[int, int] | None = None
    period: str | None = None
    from_: date | None = Field(None, alias="from")
    to: date | None = None

    @field_validator("period")
    @classmethod
    def _known_period(cls, value: str | None) -> str | None:
        if value is not None and value not in PERIODS:
            raise ValueError(f"unknown period {value!r}" + suggest(value, list(PERIODS)))
        return value

    @field_validator("between_days_ago")
    @classmethod
    def _ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] <= value[1] <= 3660:
            raise ValueError("between_days_ago needs [N, M] with 0 <= N <= M (days before the run date)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Window:
        if (self.from_ is None) != (self.to is None):
            raise ValueError("a custom range needs both 'from' and 'to' (dates, both included)")
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError(f"'from' {self.from_} is after 'to' {self.to}")
        given = [k for k in _KINDS if getattr(self, "from_" if k == "from" else k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a window needs exactly one of: {', '.join(_KINDS)} (with 'to'); got {', '.join(given) or 'none'}"
            )
        return self


def bounds(window: Window, run: RunWindow) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``window`` for the run, as tz-aware instants at local midnight."""
    today = run.run_date
    start: date
    end: date | None = None  # None = as_of
    if window.last_days is not None:
        start = today - timedelta(days=window.last_days - 1)
    elif window.last_weeks is not None:
        start = today - timedelta(days=7 * window.last_weeks - 1)
    elif window.last_months is not None:
        start = shift_months(today, -window.last_months)
    elif window.between_days_ago is not None:
        near, far = window.between_days_ago
        start, end = today - timedelta(days=far), today - timedelta(days=near - 1)
    elif window.from_ is not None and window.to is not None:
        start, end = window.from_, window.to + timedelta(days=1)
    else:
        start, end = _period(str(window.period), today)
    stop = run.as_of if end is None else min(run.day_start(end), run.as_of)
    return run.day_start(start), stop


def _period(period: str, today: date) -> tuple[date, date | None]:
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)
    jan1 = today.replace(month=1, day=1)
    return {
        "today": (today, None),
        "yesterday": (today - timedelta(days=1), today),
        "this_week": (monday, None),
        "last_week": (monday - timedelta(days=7), monday),
        "this_month": (first, None),
        "last_month": (shift_months(first, -1), first),
        "this_year": (jan1, None),
        "last_year": (jan1.replace(year=jan1.year - 1), jan1),
    }[period]

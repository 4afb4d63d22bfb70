"""Where the pipeline keeps its files and which clock it reads.

Everything that touches the file system resolves paths through here, so a test (or a production
deployment) can move the whole working area with one environment variable instead of editing YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """Working area for relative paths in config (lake, outbox, sample data, state DB)."""
    return Path(os.environ.get("AUDIENCES_HOME", PROJECT_ROOT / "var")).resolve()


def config_dir() -> Path:
    return Path(os.environ.get("AUDIENCES_CONFIG", PROJECT_ROOT / "config")).resolve()


def expectations_dir() -> Path:
    return Path(os.environ.get("AUDIENCES_EXPECTATIONS", PROJECT_ROOT / "expectations")).resolve()


def resolve(path: str | Path) -> Path:
    """Relative config paths are relative to the working area, absolute ones are kept."""
    p = Path(path)
    return p if p.is_absolute() else home() / p


@dataclass(frozen=True)
class RunWindow:
    """The business day a run answers for.

    A run for business date D sees everything before ``as_of`` = D+1 00:00 in the business time zone,
    so every "last N days" window is a whole number of calendar days and a backfill for D gives the
    answer D itself would have given (ARCHITECTURE decision 4).
    """

    run_date: date
    tz: ZoneInfo

    @property
    def as_of(self) -> datetime:
        return self.day_start(self.run_date + timedelta(days=1))

    def day_start(self, day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=self.tz)

    @classmethod
    def from_interval_end(cls, interval_end: datetime, tz: ZoneInfo) -> RunWindow:
        """Map an Airflow data interval end to the business day it closes.

        A scheduled midnight run closes the day before; a manual run at 14:35 answers for today.
        """
        local = (interval_end - timedelta(microseconds=1)).astimezone(tz)
        return cls(run_date=local.date(), tz=tz)

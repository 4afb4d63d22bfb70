"""The Parquet lake: zones partitioned by source, table and business date.

A partition becomes visible only when complete (written beside its final place, then renamed), and
re-running a date replaces that date's partition, so a killed task never leaves half a table that a
later stage would read as whole. Issue 3 adds the S3 backend behind the same methods.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd

Zone = Literal["raw", "clean", "quarantine", "unified", "features", "segments", "validation", "runs"]


@dataclass(frozen=True)
class Lake:
    root: Path

    def partition(self, zone: Zone, source: str, table: str, day: date) -> Path:
        return self.root / zone / f"source={source}" / f"table={table}" / f"dt={day.isoformat()}"

    def files(self, zone: Zone, source: str, table: str, day: date) -> list[Path]:
        return sorted(self.partition(zone, source, table, day).glob("*.parquet"))

    def glob(self, zone: Zone, source: str, table: str, day: date) -> str:
        """Pattern for engines that read a partition directly (DuckDB's read_parquet)."""
        return str(self.partition(zone, source, table, day) / "*.parquet")

    def exists(self, zone: Zone, source: str, table: str, day: date) -> bool:
        return bool(self.files(zone, source, table, day))

    def write(self, zone: Zone, source: str, table: str, day: date, frame: pd.DataFrame) -> Path:
        final = self.partition(zone, source, table, day)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex}")
        staging.mkdir()
        retired = None
        try:
            frame.to_parquet(staging / "part-00000.parquet", index=False)
            if final.exists():
                retired = final.with_name(f".retired-{final.name}-{uuid.uuid4().hex}")
                final.rename(retired)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if retired is not None and retired.exists() and not final.exists():
                retired.rename(final)  # put the previous partition back: never leave the date empty
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return final

    def read(self, zone: Zone, source: str, table: str, day: date) -> pd.DataFrame:
        files = self.files(zone, source, table, day)
        if not files:
            raise FileNotFoundError(
                f"lake partition {self.partition(zone, source, table, day)} is missing; "
                "run the stage that writes it for this date first"
            )
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

"""Backfilling a date range through the real DAG loads exactly those dates' intervals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import yaml

from tasks import settings
from tasks.sample import generate, write
from tasks.settings import RunWindow

pytestmark = pytest.mark.e2e

END = date(2026, 11, 24)
FIRST, SECOND = END - timedelta(days=2), END - timedelta(days=1)
TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def test_backfill_loads_exactly_its_intervals(tmp_path: Path) -> None:
    data = generate(end_date=END, scale=0.15, seed=5)
    write(data, tmp_path / "sample")
    shutil.copytree(settings.PROJECT_ROOT / "config", tmp_path / "config")
    sources = yaml.safe_load((tmp_path / "config" / "sources.yaml").read_text(encoding="utf-8"))
    sources["sources"]["pos"]["options"]["incremental"] = {
        "orders": {"column": "updated_at", "lookback_hours": 48},
        "order_lines": {"column": "updated_at", "lookback_hours": 48},
    }
    (tmp_path / "config" / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True), encoding="utf-8")

    env = os.environ | {"AUDIENCES_HOME": str(tmp_path), "AUDIENCES_CONFIG": str(tmp_path / "config")}
    env.pop("AIRFLOW_HOME", None)
    cmd = [sys.executable, "-m", "tasks.cli", "backfill", "--start", str(FIRST), "--end", str(SECOND)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    raw = tmp_path / "lake" / "raw" / "source=pos" / "table=orders"
    assert sorted(p.name for p in raw.iterdir()) == [f"dt={FIRST}", f"dt={SECOND}"], "only the backfilled dates"
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [str(FIRST), str(SECOND)]

    orders = data.orders.assign(updated=pd.to_datetime(data.orders["updated_at"], utc=True))
    first_w, second_w = RunWindow(FIRST, TZ), RunWindow(SECOND, TZ)
    snapshot = pd.read_parquet(raw / f"dt={FIRST}")
    assert set(snapshot["_row"]) == set(orders.loc[orders["updated"] < first_w.as_of, "_row"])
    increment = pd.read_parquet(raw / f"dt={SECOND}")
    changed = orders[(orders["updated"] >= first_w.as_of) & (orders["updated"] < second_w.as_of)]
    assert len(changed) > 0, "the sample must change some orders on the second date"
    assert set(increment["_row"]) == set(changed["_row"]), "exactly the rows changed on the second date"

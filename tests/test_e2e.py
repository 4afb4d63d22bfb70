"""End to end: the real Airflow DAG on generated data, checked against an independent computation.

The expected memberships below are computed with plain pandas from the generator's own frames and
ground truth (canonical provinces, the manifest of injected bad rows) — not from any pipeline code —
so a bug in extraction, validation, unification, features or rules shows up as a difference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tasks import settings
from tasks.config.loader import load_model
from tasks.sample import SampleData, generate, write
from tasks.segments.rules import SegmentsConfig

pytestmark = pytest.mark.e2e

RUN_DATE = date(2026, 11, 24)
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
REASON_FOR_KIND = {
    ("orders", "missing_id"): "orders.order_id_present",
    ("orders", "negative_amount"): "orders.total_not_negative",
    ("orders", "future_timestamp"): "orders.ordered_at_not_in_future",
    ("orders", "duplicate_id"): "orders.order_id_unique",
    ("contacts", "malformed_email"): "contacts.email_well_formed",
    ("web_events", "future_timestamp"): "web_events.event_at_not_in_future",
    ("web_events", "missing_event_name"): "web_events.event_name_present",
    ("survey_responses", "nps_out_of_range"): "survey_responses.nps_range",
    ("survey_responses", "csat_out_of_range"): "survey_responses.csat_range",
}


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"AUDIENCES_HOME": str(home), "AUDIENCES_CONFIG": str(home / "config")}
    env.pop("AIRFLOW_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def data() -> SampleData:
    return generate(end_date=RUN_DATE, scale=0.3, seed=11)


@pytest.fixture(scope="module")
def run_home(tmp_path_factory: pytest.TempPathFactory, data: SampleData) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("e2e")
    shutil.copytree(settings.PROJECT_ROOT / "config", home / "config")
    write(data, home / "sample")
    proc = run_cli(home, "run", "--date", RUN_DATE.isoformat())
    assert proc.returncode == 0, f"DAG run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "Run for business date 2026-11-24" in proc.stdout
    yield home


def local_day(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).dt.tz_convert(TZ).dt.date


def expected_members(data: SampleData) -> dict[str, set[str]]:
    bad = {(r.table, r.row) for r in data.injected}
    orders = data.orders[[("orders", int(r)) not in bad for r in data.orders["_row"]]].copy()
    orders["day"] = local_day(orders["ordered_at"])
    lines = data.order_lines.merge(orders[["order_id", "customer_id", "day"]], on="order_id")
    lines = lines.merge(data.products[["product_id", "category"]], on="product_id")
    per_customer = orders.groupby("customer_id").agg(
        n=("order_id", "size"), spend=("total_vnd", "sum"), last=("day", "max")
    )
    recent = RUN_DATE - timedelta(days=90)
    backpack_from = RUN_DATE - timedelta(days=30)
    backpack = lines[(lines["category"] == "backpack") & (lines["day"] > backpack_from) & (lines["day"] <= RUN_DATE)]
    return {
        "no_purchase_90d": set(per_customer.index[per_customer["last"] <= recent]),
        "repeat_buyers": set(per_customer.index[per_customer["n"] >= 3]),
        "big_spenders": set(per_customer.index[per_customer["spend"] >= 1_000_000]),
        "backpack_buyers_30d": set(backpack["customer_id"]),
        "hcm_or_hanoi": {c for c, p in data.truth_province.items() if p in {"Hồ Chí Minh", "Hà Nội"}},
    }


def test_every_segment_file_matches_independent_membership(run_home: Path, data: SampleData) -> None:
    outbox = run_home / "outbox" / RUN_DATE.isoformat()
    expected = expected_members(data)
    configured = load_model(run_home / "config" / "segments.yaml", SegmentsConfig)
    files = {p.stem for p in outbox.glob("*.csv")}
    assert {s.name for s in configured.segments} <= files
    assert configured.clusters is not None
    data_driven = files - {s.name for s in configured.segments}
    assert len(data_driven) >= 2 and all(n.startswith(configured.clusters.prefix) for n in data_driven)
    assert set(expected) <= {s.name for s in configured.segments}
    for segment, members in expected.items():
        path = outbox / f"{segment}.csv"
        assert path.read_bytes()[:3] == b"\xef\xbb\xbf", f"{path.name} lacks the UTF-8 BOM Excel needs"
        got = pd.read_csv(path, encoding="utf-8-sig", dtype=str)
        assert got["customer_key"].is_unique and got["customer_key"].str.startswith("CK-").all()
        assert set(got["customer_id"]) == members, segment
        assert len(members) > 0, f"sample data gives segment {segment} no members; the comparison proves nothing"


def test_segment_files_carry_readable_vietnamese_and_e164_phones(run_home: Path) -> None:
    got = pd.read_csv(run_home / "outbox" / RUN_DATE.isoformat() / "hcm_or_hanoi.csv", encoding="utf-8-sig", dtype=str)
    assert set(got["province"]) == {"Hồ Chí Minh", "Hà Nội"}
    phones = got["phone"].dropna()
    assert len(phones) and phones.str.fullmatch(r"\+84\d{9}").all()


def test_quarantine_holds_exactly_the_injected_rows_with_their_reason(run_home: Path, data: SampleData) -> None:
    files = list((run_home / "lake" / "quarantine").glob(f"source=*/table=*/dt={RUN_DATE}/*.parquet"))
    quarantined = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    got = {
        (s, int(r)): reason
        for s, r, reason in zip(quarantined["_source"], quarantined["_row"], quarantined["_reason"], strict=True)
    }
    want = {(r.source, r.row): REASON_FOR_KIND[(r.table, r.kind)] for r in data.injected}
    assert set(got) == set(want), "quarantine must hold every injected bad row and no good row"
    for key, reason in want.items():
        assert reason in got[key].split("; "), (key, got[key])


def test_raw_zone_keeps_every_extracted_row(run_home: Path, data: SampleData) -> None:
    raw = pd.read_parquet(run_home / "lake" / "raw" / "source=pos" / "table=orders" / f"dt={RUN_DATE}")
    assert len(raw) == len(data.orders)


def test_rerunning_a_date_replaces_its_outputs(run_home: Path) -> None:
    outbox = run_home / "outbox" / RUN_DATE.isoformat()
    before = {p.name: p.read_bytes() for p in outbox.glob("*.csv")}
    proc = run_cli(run_home, "run", "--date", RUN_DATE.isoformat())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in outbox.glob("*.csv")} == before
    partitions = list((run_home / "lake" / "clean" / "source=pos" / "table=orders").iterdir())
    assert [p.name for p in partitions] == [f"dt={RUN_DATE}"], "a re-run must replace, not add, partitions"


def test_critical_failure_stops_before_any_delivery(tmp_path: Path) -> None:
    broken = generate(end_date=RUN_DATE, scale=0.1, seed=3)
    # 10% of orders with negative totals is far past the suite's 2% tolerance: the source is broken.
    victims = broken.orders.sample(frac=0.1, random_state=1).index
    broken.orders.loc[victims, "total_vnd"] = -1
    shutil.copytree(settings.PROJECT_ROOT / "config", tmp_path / "config")
    write(broken, tmp_path / "sample")
    proc = run_cli(tmp_path, "run", "--date", RUN_DATE.isoformat())
    assert proc.returncode == 1
    assert "ingest_pos.quality_gate=failed" in proc.stderr, proc.stderr[-2000:]
    assert "orders.total_not_negative" in proc.stdout + proc.stderr
    assert not (tmp_path / "outbox").exists(), "nothing may be delivered after a critical failure"
    # The other sources still ingest; the segments DAG never starts (the pos Asset was not published).
    assert "ingest_crm.quality_gate=success" in proc.stderr
    for blocked in ("unify", "evaluate_segments", "summarize"):
        assert f" {blocked}=" not in proc.stderr, proc.stderr[-2000:]

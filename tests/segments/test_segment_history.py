"""Entered / left per run and sizes over time."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from tasks.lake import Lake
from tasks.segments.history import membership_changes, record, size_history

DAY = date(2026, 11, 24)


def members(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["segment", "customer_key", "reasons"])


def test_changes_name_who_entered_and_who_left_with_reasons() -> None:
    before = members([("vip", "A", "orders ≥ 3"), ("vip", "B", "orders ≥ 3")])
    now = members([("vip", "B", "orders ≥ 3"), ("vip", "C", "orders ≥ 3"), ("new", "A", "tenure < 30")])
    got = membership_changes(now, before)
    assert got[["segment", "customer_key", "change"]].values.tolist() == [
        ["new", "A", "entered"],
        ["vip", "A", "left"],
        ["vip", "C", "entered"],
    ]
    assert got.loc[(got["segment"] == "vip") & (got["customer_key"] == "A"), "reasons"].item() == "orders ≥ 3"


def test_first_run_counts_everyone_as_entered() -> None:
    got = membership_changes(members([("vip", "A", "x")]), None)
    assert got["change"].tolist() == ["entered"]


def test_sizes_accumulate_over_runs(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    day1, day2 = DAY - timedelta(days=1), DAY
    first = members([("vip", "A", ""), ("vip", "B", "")])
    lake.write("segments", "audiences", "memberships", day1, first)
    record(lake, day1, first, ["vip", "lapsed"])
    second = members([("vip", "B", ""), ("lapsed", "A", "")])
    lake.write("segments", "audiences", "memberships", day2, second)
    record(lake, day2, second, ["vip", "lapsed"])
    history = size_history(lake)
    assert history.values.tolist() == [
        [str(day1), "vip", 2, 2, 0],
        [str(day1), "lapsed", 0, 0, 0],
        [str(day2), "vip", 1, 0, 1],
        [str(day2), "lapsed", 1, 1, 0],
    ]


def test_changes_between_a_categorical_run_and_a_text_run_of_other_segments() -> None:
    """finalize writes segment and reasons as categoricals; partitions from older runs hold text. A segment
    dropped from config since the last run leaves whole, one added enters whole."""
    before = members([("vip", "A", "orders ≥ 3"), ("gone", "B", "x")]).astype("string")
    now = members([("vip", "A", "orders ≥ 3"), ("vip", "C", "orders ≥ 3"), ("added", "B", "y")])
    now = now.astype({"segment": "category", "reasons": "category"})
    now["segment"] = now["segment"].cat.set_categories(["vip", "added", "unused"])  # not sorted, one unused
    got = membership_changes(now, before)
    assert got[["segment", "customer_key", "change", "reasons"]].values.tolist() == [
        ["added", "B", "entered", "y"],
        ["gone", "B", "left", "x"],
        ["vip", "C", "entered", "orders ≥ 3"],
    ]
    assert all(isinstance(t, pd.StringDtype) for t in got.dtypes)

"""Answers for a marketer in seconds, without a pipeline run: preview a segment, explain a customer.

Both read the feature table of a run date already in the lake and the segment definitions as they
are in segments.yaml *now*, so an edited rule can be tried before the next scheduled run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from tasks.features.build import FEATURE_SOURCE
from tasks.lake import Lake
from tasks.segments import explain
from tasks.segments.evaluate import MEMBERSHIP_TABLE, engine
from tasks.segments.history import previous_run
from tasks.segments.rules import SegmentsConfig
from tasks.settings import RunWindow


@dataclass
class Preview:
    segment: str
    run_date: date
    size: int
    sample: pd.DataFrame  # customer_key, reasons (no contact details: previews are shared freely)
    overlap: dict[str, int] = field(default_factory=dict)  # other segment -> shared members (stored run)
    entered: int | None = None  # versus the previous stored run of the segment
    left: int | None = None


def preview(
    lake: Lake, window: RunWindow, segments: SegmentsConfig, name: str, stores: pd.DataFrame | None, sample: int = 10
) -> Preview:
    seg = segments.get(name)
    with engine(lake, window, segments, stores) as (compiler, features):
        expr = compiler.compile(seg.rule).fill_null(False)
        truth = explain.truth_table(compiler, features, seg.rule, where=expr)
    keys = set(truth.index.astype(str))
    reasons = explain.deciding_clauses(seg.rule, truth)
    picked = sorted(keys)[:sample]
    result = Preview(
        name, window.run_date, len(keys), pd.DataFrame({"customer_key": picked, "reasons": reasons.loc[picked].values})
    )
    day = window.run_date
    if lake.exists("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, day):
        stored = lake.read("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, day)
        others = stored[stored["segment"] != name]
        shared = others[others["customer_key"].isin(keys)].groupby("segment").size()
        result.overlap = {str(s): int(n) for s, n in shared.sort_values(ascending=False).items() if n}
    before = previous_run(lake, day)
    if before is not None:
        old = lake.read("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, before)
        old_keys = set(old.loc[old["segment"] == name, "customer_key"].astype(str))
        if old_keys or name in set(old["segment"]):
            result.entered, result.left = len(keys - old_keys), len(old_keys - keys)
    return result


@dataclass
class Explanation:
    customer_key: str
    segment: str
    member: bool
    clauses: list[tuple[str, bool]]  # every leaf clause with its value for this customer
    deciding: str


def explain_customer(
    lake: Lake, window: RunWindow, segments: SegmentsConfig, customer_key: str, name: str, stores: pd.DataFrame | None
) -> Explanation:
    seg = segments.get(name)
    with engine(lake, window, segments, stores) as (compiler, features):
        truth = explain.truth_table(compiler, features, seg.rule, where=features.customer_key == customer_key)
    if truth.empty:
        raise KeyError(f"customer {customer_key!r} is not in the feature table of {window.run_date}")
    member = bool(explain.outcome(seg.rule, truth).iloc[0])
    leaves = explain.leaves(seg.rule)
    clauses = [(leaf.label, bool(truth[leaf.path].iloc[0])) for leaf in leaves]
    deciding = str(explain.deciding_clauses(seg.rule, truth, member=member).iloc[0])
    return Explanation(customer_key, name, member, clauses, deciding)


def latest_run_date(lake: Lake, until: date | None = None) -> date:
    from tasks.features.build import FEATURE_TABLE

    days = [d for d in lake.partitions("features", FEATURE_SOURCE, FEATURE_TABLE) if until is None or d <= until]
    if not days:
        raise FileNotFoundError("no feature table in the lake yet; run `audiences run --date D` (or the demo) first")
    return days[-1]

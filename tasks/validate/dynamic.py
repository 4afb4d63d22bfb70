"""Expectations whose bounds depend on the run: references, trailing row counts, freshness.

A suite declares them with ``meta.dynamic`` instead of fixed kwargs, e.g.

    {"type": "expect_table_row_count_to_be_between", "kwargs": {},
     "meta": {"name": "orders.row_count_near_trailing_average", "severity": "warning",
              "dynamic": {"kind": "trailing_row_count", "days": 7, "min_ratio": 0.5, "max_ratio": 2.0}}}

and the stage fills the kwargs from the lake before Great Expectations runs, so the check itself
stays a plain GX expectation with a readable result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pandas as pd

from tasks.lake import Lake
from tasks.settings import RunWindow

KINDS = ("reference", "trailing_row_count", "freshness")


class DynamicError(ValueError):
    """A dynamic expectation is misconfigured."""


def referenced_tables(expectations: list[dict[str, Any]]) -> set[str]:
    return {
        e["meta"]["dynamic"]["table"]
        for e in expectations
        if (e.get("meta") or {}).get("dynamic", {}).get("kind") == "reference"
    }


def resolve(
    expectations: list[dict[str, Any]],
    frame: pd.DataFrame,
    lake: Lake,
    source: str,
    table: str,
    window: RunWindow,
    known_keys: Callable[[str, str], list[Any]],
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Copies of ``expectations`` with every ``meta.dynamic`` turned into concrete kwargs.

    A reference check becomes a helper column ``_ref__<table>__<column>`` (True when the key exists)
    tested with ``value_set: [True]``: GX's own set check with hundreds of thousands of keys costs
    tens of seconds per million rows, a hash lookup costs a fraction of one.
    """
    out = []
    for exp in expectations:
        dyn = (exp.get("meta") or {}).get("dynamic")
        if not dyn:
            out.append(exp)
            continue
        exp = copy.deepcopy(exp)
        kind = dyn.get("kind")
        kwargs = exp.setdefault("kwargs", {})
        if kind == "reference":
            helper = f"_ref__{dyn['table']}__{dyn['column']}"
            values = frame[kwargs["column"]]
            found = values.isin(known_keys(dyn["table"], dyn["column"])).astype("boolean").mask(values.isna())
            frame = frame.assign(**{helper: found})
            kwargs["column"] = helper  # a missing key (null) is left to the not-null expectation
            kwargs["value_set"] = [True]
        elif kind == "trailing_row_count":
            counts = trailing_counts(lake, source, table, window, int(dyn.get("days", 7)))
            if counts:
                average = sum(counts) / len(counts)
                kwargs["min_value"] = int(average * float(dyn.get("min_ratio", 0.5)))
                kwargs["max_value"] = int(average * float(dyn.get("max_ratio", 2.0))) + 1
            else:
                kwargs["min_value"] = 0  # no history yet: nothing to compare with
        elif kind == "freshness":
            hours = float(dyn.get("max_age_hours", 48))
            kwargs["min_value"] = pd.Timestamp(window.as_of - timedelta(hours=hours)).tz_convert("UTC")
        else:
            raise DynamicError(f"{exp['meta'].get('name')}: unknown meta.dynamic.kind {kind!r}; use one of {KINDS}")
        out.append(exp)
    return out, frame


def trailing_counts(lake: Lake, source: str, table: str, window: RunWindow, days: int) -> list[int]:
    """Raw row counts of the same table on the ``days`` dates before the run date, when loaded."""
    counts = []
    for back in range(1, days + 1):
        doc = lake.manifest("raw", source, table, window.run_date - timedelta(days=back))
        if doc is not None:
            counts.append(int(doc["rows"]))
    return counts

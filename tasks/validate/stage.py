"""The validate stage for one (source, table): raw zone in, clean and quarantine zones out."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import date
from typing import Any

import pandas as pd

from tasks.current import current_frame
from tasks.lake import Lake
from tasks.settings import RunWindow
from tasks.tables import ROW_COL, SOURCE_COL, TABLES, TableRef
from tasks.validate import dynamic
from tasks.validate.conform import conform
from tasks.validate.dynamic import DynamicError
from tasks.validate.expectations import ExpectationOutcome, run_suite

log = logging.getLogger(__name__)

REASON_COL = "_reason"


def quarantine_frame(raw: pd.DataFrame, reasons: dict[int, list[str]]) -> pd.DataFrame:
    """Bad rows exactly as extracted (as text, so any shape fits one schema) plus why they failed."""
    if not reasons:
        return pd.DataFrame(columns=[SOURCE_COL, ROW_COL, REASON_COL])
    idx = sorted(reasons)
    bad = raw.loc[idx].copy()
    for col in bad.columns:
        if col not in (SOURCE_COL, ROW_COL):
            bad[col] = bad[col].map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    bad[REASON_COL] = ["; ".join(dict.fromkeys(reasons[i])) for i in idx]
    return bad.reset_index(drop=True)


def schema_drift(lake: Lake, source: str, table: str, day: date, raw: pd.DataFrame) -> list[str]:
    """Columns that changed type or disappeared since the previous raw partition (a source changed).

    Optional columns a source never sent are not drift; one it stops sending is.
    """
    earlier = [d for d in lake.partitions("raw", source, table) if d < day]
    if not earlier:
        return []
    previous = (lake.manifest("raw", source, table, earlier[-1]) or {}).get("schema") or {}
    current = {str(c): ("null" if raw[c].isna().all() else str(t)) for c, t in raw.dtypes.items()}
    notes = [
        f"column {c!r} was {previous[c]}, now {current[c]}"
        for c in sorted(set(previous) & set(current))
        if previous[c] != current[c] and "null" not in (previous[c], current[c])
    ]
    notes += [f"column {c!r} is no longer sent (it was on {earlier[-1]})" for c in sorted(set(previous) - set(current))]
    return notes


def validate_table(
    lake: Lake, source: str, table: str, window: RunWindow, refs: dict[str, TableRef] | None = None
) -> dict[str, Any]:
    """Validate the raw partition of one table; ``refs`` says which source holds referenced tables."""
    spec = TABLES[table]
    raw = lake.read("raw", source, table, window.run_date)
    # Clean and quarantine keep the raw partition's mode: a clean increment must stay an increment,
    # or the table's state as of later dates would shrink to that one day's changes.
    mode = (lake.manifest("raw", source, table, window.run_date) or {}).get("mode", "snapshot")
    conformed = conform(raw, spec, naive_zone=window.tz.key)
    outcomes: list[ExpectationOutcome] = []
    reasons: dict[int, list[str]] = {i: list(r) for i, r in conformed.rejects.items()}
    if conformed.missing_required:
        outcomes.append(
            ExpectationOutcome(
                name="schema.required_columns",
                type="required_columns_present",
                severity="critical",
                success=False,
                failed_rows=0,
                error=f"missing required column(s): {', '.join(conformed.missing_required)}",
            )
        )
    else:
        typed = conformed.frame.drop(index=list(conformed.rejects))
        params = {"as_of": pd.Timestamp(window.as_of).tz_convert("UTC"), "run_date": window.run_date.isoformat()}

        def known_keys(ref_table: str, column: str) -> list[Any]:
            if not refs or ref_table not in refs:
                raise DynamicError(f"{table} references {ref_table}, which no configured source provides")
            keys = current_frame(lake, refs[ref_table].source, ref_table, window.run_date)[column]
            return [k for k in keys.dropna().unique().tolist()]

        suite = run_suite(
            table,
            typed,
            params,
            lambda exps, frame: dynamic.resolve(exps, frame, lake, source, table, window, known_keys),
        )
        outcomes.extend(suite.outcomes)
        for i, r in suite.row_reasons.items():
            reasons.setdefault(i, []).extend(r)
    notes = [("schema.naive_timestamps", note) for note in conformed.notes]
    notes += [("schema.drift", note) for note in schema_drift(lake, source, table, window.run_date, raw)]
    notes += [("schema.new_column", f"new column {c!r} kept in raw only") for c in conformed.extra_columns]
    outcomes += [ExpectationOutcome(name, "schema", "warning", False, 0, note) for name, note in notes]
    critical = [asdict(o) for o in outcomes if o.severity == "critical" and not o.success]
    quarantined = quarantine_frame(raw, reasons)
    clean = conformed.frame.drop(index=list(reasons))
    if not conformed.missing_required:
        lake.write("clean", source, table, window.run_date, clean, mode=mode)
    lake.write("quarantine", source, table, window.run_date, quarantined, mode=mode)
    reason_counts = (
        quarantined[REASON_COL].str.split("; ").explode().value_counts().to_dict() if len(quarantined) else {}
    )
    report = {
        "source": source,
        "table": table,
        "run_date": window.run_date.isoformat(),
        "rows": len(raw),
        "clean": len(clean),
        "quarantined": len(quarantined),
        "quarantine_reasons": {str(k): int(v) for k, v in reason_counts.items()},
        "critical_failures": critical,
        "warnings": [asdict(o) for o in outcomes if o.severity == "warning" and not o.success],
        "expectations": [asdict(o) for o in outcomes],
    }
    lake.put_text("validation", source, table, window.run_date, "result.json", json.dumps(report, indent=2))
    log.info(
        "validated %s.%s: %d rows, %d clean, %d quarantined, %d critical failure(s)",
        source,
        table,
        report["rows"],
        report["clean"],
        report["quarantined"],
        len(critical),
    )
    return report

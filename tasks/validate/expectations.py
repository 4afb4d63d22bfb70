"""Run a table's Great Expectations suite and turn its result into row-level quarantine reasons.

Each expectation in ``expectations/<table>.json`` carries ``meta.name`` (the reason written next to
a quarantined row) and ``meta.severity``: ``critical`` stops the run before any delivery when the
expectation fails (after its ``mostly`` tolerance), ``warning`` is reported only. Failing rows are
quarantined whatever the severity.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from tasks import settings

log = logging.getLogger(__name__)

INDEX_COL = "_idx"
# Uniqueness failures flag every copy of a key; the first occurrence is kept as the good row.
_UNIQUENESS = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
SEVERITIES = ("critical", "warning")


@dataclass
class ExpectationOutcome:
    name: str
    type: str
    severity: str
    success: bool
    failed_rows: int
    error: str | None = None


@dataclass
class SuiteOutcome:
    table: str
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    row_reasons: dict[int, list[str]] = field(default_factory=dict)

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.severity == "critical" and not o.success]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.severity == "warning" and not o.success]


class SuiteError(ValueError):
    """A suite file is missing or malformed."""


def suite_path(table: str) -> Path:
    return settings.expectations_dir() / f"{table}.json"


def load_suite(table: str) -> dict[str, Any]:
    path = suite_path(table)
    if not path.is_file():
        raise SuiteError(f"{path}: no expectation suite for table {table!r}; add one (see expectations/README.md)")
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    for i, exp in enumerate(suite.get("expectations", [])):
        meta = exp.get("meta") or {}
        if not meta.get("name"):
            raise SuiteError(f"{path}: expectations[{i}].meta.name is missing; give every expectation a name")
        if meta.get("severity") not in SEVERITIES:
            raise SuiteError(f"{path}: expectations[{i}].meta.severity must be one of {SEVERITIES}")
    return suite


def _quiet() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


@lru_cache(maxsize=1)
def _context() -> Any:
    _quiet()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars flood Airflow task logs (platform-notes.md).
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suite(
    table: str,
    frame: pd.DataFrame,
    parameters: dict[str, Any],
    prepare: Callable[[list[dict[str, Any]], pd.DataFrame], tuple[list[dict[str, Any]], pd.DataFrame]] | None = None,
) -> SuiteOutcome:
    """Validate ``frame``; ``prepare`` may fill run-dependent kwargs and add helper columns
    (see validate/dynamic.py); the helper columns never leave this function."""
    _quiet()
    import great_expectations as gx

    suite_doc = load_suite(table)
    if prepare is not None:
        expectations, frame = prepare(suite_doc["expectations"], frame)
        suite_doc = {**suite_doc, "expectations": expectations}
    context = _context()
    name = f"{table}-{id(frame)}"
    data_source = context.data_sources.add_or_update_pandas(name)
    batch_def = data_source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_doc["expectations"]))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    data = frame.reset_index(drop=True).assign(**{INDEX_COL: range(len(frame))})
    try:
        result = validation.run(
            batch_parameters={"dataframe": data},
            expectation_parameters=parameters,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [INDEX_COL]},
        )
    finally:
        context.validation_definitions.delete(name)
        context.suites.delete(name)
        context.data_sources.delete(name)
    positions = frame.index.to_numpy()
    outcome = SuiteOutcome(table)
    for res in result.results:
        cfg = res.expectation_config
        meta = cfg.meta or {}
        exc = res.exception_info or {}
        error = str(exc.get("exception_message")) if exc.get("raised_exception") else None
        rows = [int(r[INDEX_COL]) for r in (res.result or {}).get("unexpected_index_list") or []]
        if cfg.type in _UNIQUENESS and rows:
            rows = _later_duplicates(data, rows, cfg.kwargs)
        for pos in rows:
            outcome.row_reasons.setdefault(int(positions[pos]), []).append(meta["name"])
        outcome.outcomes.append(
            ExpectationOutcome(
                name=meta["name"],
                type=cfg.type,
                severity="critical" if error else meta["severity"],
                success=bool(res.success) and error is None,
                failed_rows=len(rows),
                error=error,
            )
        )
    return outcome


def _later_duplicates(data: pd.DataFrame, rows: list[int], kwargs: dict[str, Any]) -> list[int]:
    keys = kwargs.get("column_list") or [kwargs["column"]]
    flagged = data.iloc[sorted(rows)]
    dup = flagged.duplicated(subset=keys, keep="first")
    return [int(i) for i in flagged.loc[dup, INDEX_COL]]

"""The pipeline's stages as plain functions with JSON-friendly arguments and results.

The DAG in ``dags/`` calls exactly these and nothing else, so every stage can be run and tested
without Airflow, and the Airflow task graph stays a thin wiring layer (ARCHITECTURE decision 1).
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from typing import Any, cast

import duckdb
import pandas as pd

from tasks.config.models import AppConfig
from tasks.current import current_frame
from tasks.destinations.base import build_destination
from tasks.features.build import build_features
from tasks.ingest.base import ExtractContext, build_source
from tasks.lake import Lake, open_lake
from tasks.settings import RunWindow
from tasks.state.store import StateStore
from tasks.tables import TABLES, TableRef
from tasks.unify.profiles import unify

log = logging.getLogger(__name__)

RUNS = "audiences"
UNPARSED_SUFFIX = "__unparsed"


class QualityGateError(RuntimeError):
    """A critical expectation failed: nothing may be delivered from this run."""


def _config() -> AppConfig:
    return AppConfig()


def _lake(cfg: AppConfig) -> Lake:
    return open_lake(cfg.pipeline.lake_root)


def _window(cfg: AppConfig, run_date: str) -> RunWindow:
    return RunWindow(date.fromisoformat(run_date), cfg.pipeline.tz)


def run_date_for(interval_end: datetime, schedule_timezone: str, scheduled: bool = False) -> str:
    """Business date a DAG run answers for, from its data interval end.

    A scheduled run always answers for the business day before its trigger time (a source that
    lands at 00:30 still closes yesterday); a manual run answers for the day it was asked about.
    """
    cfg = _config()
    if schedule_timezone != cfg.pipeline.business_timezone:
        raise ValueError(
            f"{cfg.directory / 'pipeline.yaml'}: business_timezone is {cfg.pipeline.business_timezone!r} but the DAG "
            f"is scheduled in {schedule_timezone!r}; set AUDIENCES_TIMEZONE to the same zone for the scheduler"
        )
    if scheduled:
        return (interval_end.astimezone(cfg.pipeline.tz).date() - timedelta(days=1)).isoformat()
    return RunWindow.from_interval_end(interval_end, cfg.pipeline.tz).run_date.isoformat()


def source_tables(only: str | None = None) -> list[dict[str, str]]:
    """Every (source, canonical table) pair to extract, from sources.yaml (``only``: one source's)."""
    cfg = _config()
    pairs: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for name, src_cfg in cfg.sources.sources.items():
        if not src_cfg.enabled:
            continue
        source = build_source(name, src_cfg, cfg.directory / "sources.yaml")
        for table in source.tables():
            if table not in TABLES:
                raise ValueError(
                    f"{cfg.directory / 'sources.yaml'}: sources.{name} maps to unknown table {table!r}; "
                    f"canonical tables are {', '.join(TABLES)}"
                )
            if table in seen:
                raise ValueError(
                    f"{cfg.directory / 'sources.yaml'}: table {table!r} comes from both {seen[table]!r} and {name!r}"
                )
            seen[table] = name
            pairs.append({"source": name, "table": table})
    missing = sorted(t for t, spec in TABLES.items() if t not in seen and not spec.optional)
    if missing:
        raise ValueError(f"{cfg.directory / 'sources.yaml'}: no source provides table(s) {', '.join(missing)}")
    if only is not None:
        if only not in cfg.sources.sources:
            raise ValueError(f"{cfg.directory / 'sources.yaml'}: no source named {only!r}")
        return [p for p in pairs if p["source"] == only]
    return pairs


def validation_waves(extracted: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Split extracted tables into those validated first and those that reference them.

    A reference expectation (order lines point at existing orders) must see the referenced table's
    clean rows of this run, so referencing tables are validated in a second wave.
    """
    from tasks.validate.dynamic import referenced_tables
    from tasks.validate.expectations import load_suite

    referencing = {e["table"] for e in extracted if referenced_tables(load_suite(e["table"])["expectations"])}
    return {
        "first": [e for e in extracted if e["table"] not in referencing],
        "second": [e for e in extracted if e["table"] in referencing],
    }


def _refs() -> dict[str, TableRef]:
    return {p["table"]: TableRef(p["source"], p["table"]) for p in source_tables()}


def extract(source: str, table: str, run_date: str) -> dict[str, Any]:
    cfg = _config()
    lake = _lake(cfg)
    window = _window(cfg, run_date)
    src = build_source(source, cfg.sources.sources[source], cfg.directory / "sources.yaml")
    earlier = [p for p in lake.history("raw", source, table, window.run_date) if p.day < window.run_date]
    needs_snapshot = not any(p.mode == "snapshot" for p in earlier)
    result = src.extract(table, ExtractContext(window, StateStore(), needs_snapshot=needs_snapshot))
    frame = result.frame
    if result.mode == "increment" and result.dedupe_on and len(frame):
        frame = drop_already_loaded(lake, source, table, window.run_date, frame, result.dedupe_on)
    lake.write("raw", source, table, window.run_date, frame, mode=result.mode)
    for commit in result.on_commit:
        commit()
    # Lines that could not even be parsed keep their raw text in quarantine; nothing is dropped.
    lake.write("quarantine", source, table + UNPARSED_SUFFIX, window.run_date, pd.DataFrame(result.rejects))
    log.info("extracted %s.%s: %d rows, %d unparseable", source, table, len(result.frame), len(result.rejects))
    return {
        "source": source,
        "table": table,
        "rows": len(frame),
        "unparsed": len(result.rejects),
        "mode": result.mode,
        "notes": result.notes,
    }


def drop_already_loaded(
    lake: Lake, source: str, table: str, day: date, frame: pd.DataFrame, keys: tuple[str, ...]
) -> pd.DataFrame:
    """Rows re-read by a lookback that an earlier date already loaded unchanged.

    The date being (re-)run is excluded from the comparison: its own partition is being replaced.
    """
    earlier = [p for p in lake.history("raw", source, table, day) if p.day != day]
    files = [f for p in earlier for f in p.files]
    if not files:
        return frame
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        seen = con.read_parquet(files, union_by_name=True).select(*keys).distinct().df()
    finally:
        con.close()
    marker = seen.assign(_seen=True)
    merged = frame.merge(marker, on=list(keys), how="left")
    return frame.loc[merged["_seen"].isna().to_numpy()].reset_index(drop=True)


def validate(source: str, table: str, run_date: str) -> dict[str, Any]:
    from tasks.validate.stage import validate_table

    cfg = _config()
    report = validate_table(_lake(cfg), source, table, _window(cfg, run_date), _refs())
    return {
        k: report[k]
        for k in (
            "source",
            "table",
            "rows",
            "clean",
            "quarantined",
            "quarantine_reasons",
            "critical_failures",
            "warnings",
            "expectations",
            "run_date",
        )
    }


def quality_report_location(run_date: str) -> str:
    lake = _lake(_config())
    return lake.store.describe(lake.prefix("runs", RUNS, "quality", date.fromisoformat(run_date)) + "report.html")


def gate(
    reports: list[dict[str, Any]], extracts: list[dict[str, Any]] | None = None, source: str | None = None
) -> dict[str, Any]:
    """Write the data-quality report, then stop the run if any critical expectation failed.

    With ``source`` (one ingestion DAG per source), the report and the source's extract/validate
    results are written per source, so the segments run can summarize every source of its date.
    """
    from tasks.validate import report as html_report

    reports = sorted(reports, key=lambda r: (r["source"], r["table"]))
    location = None
    lake = _lake(_config())
    if reports:
        day = date.fromisoformat(reports[0]["run_date"])
        html = html_report.render(day.isoformat(), reports)
        location = lake.put_text("runs", RUNS, "quality", day, f"{source}.html" if source else "report.html", html)
        if source is not None:
            doc = {"source": source, "report": location, "extracts": extracts or [], "reports": reports}
            lake.put_text("runs", RUNS, "ingest", day, f"{source}.json", json.dumps(doc, default=str))
    failures = [
        f"{r['source']}.{r['table']}: {f['name']} ({f['error'] or str(f['failed_rows']) + ' failing rows'})"
        for r in reports
        for f in r["critical_failures"]
    ]
    if failures:
        raise QualityGateError(
            "critical data-quality failure; no segment will be delivered for this run:\n  "
            + "\n  ".join(failures)
            + f"\nSee the data-quality report {location} and the quarantine zone; "
            "fix the source, then re-run the date."
        )
    warnings = [f"{r['source']}.{r['table']}: {w['name']}" for r in reports for w in r["warnings"]]
    if warnings:
        from tasks.alerts import send_alert

        send_alert(
            "data_quality_warning",
            f"{len(warnings)} data-quality warning(s) on {reports[0]['run_date']}",
            {"run date": reports[0]["run_date"], "warnings": "; ".join(sorted(set(warnings))[:10])},
            location,
        )
    return {"tables": len(reports), "warnings": len(warnings), "report": location}


def ingest_results(run_date: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Extract results, validation reports and report locations every source wrote for the date."""
    lake = _lake(_config())
    extracts: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    locations: list[str] = []
    for pair in {p["source"] for p in source_tables()}:
        try:
            doc = json.loads(lake.get_text("runs", RUNS, "ingest", date.fromisoformat(run_date), f"{pair}.json"))
        except (FileNotFoundError, KeyError):
            continue
        extracts += doc["extracts"]
        reports += doc["reports"]
        locations.append(doc["report"])
    return extracts, reports, sorted(locations)


def segment_run_date(requested: str | None, published: list[str]) -> str:
    """The business date a segments run answers for: a manual run's conf, else the sources' Assets."""
    if requested:
        return date.fromisoformat(str(requested)).isoformat()
    if published:
        dates = sorted(set(published))
        if len(dates) > 1:
            log.warning("sources published different dates %s; segmenting the latest", ", ".join(dates))
        return dates[-1]
    raise ValueError(
        "no business date: trigger customer_segments from its sources' Assets, or manually with "
        'conf {"run_date": "YYYY-MM-DD"}'
    )


def build_unified(run_date: str) -> dict[str, int]:
    cfg = _config()
    return unify(_lake(cfg), _window(cfg, run_date), _refs())


def features(run_date: str) -> dict[str, int]:
    cfg = _config()
    return build_features(_lake(cfg), _window(cfg, run_date), _refs())


def segments(run_date: str) -> list[str]:
    from tasks.segments.evaluate import evaluate, load_segments

    cfg = _config()
    lake = _lake(cfg)
    window = _window(cfg, run_date)
    refs = _refs()
    stores = current_frame(lake, refs["stores"].source, "stores", window.run_date)
    counts = evaluate(lake, window, load_segments(cfg.directory), stores=stores, backend=cfg.pipeline.engine)
    _alert_on_sizes(lake, window.run_date)
    return list(counts)


def _alert_on_sizes(lake: Lake, day: date) -> None:
    """audience_size_moved for every segment whose size moved more than the configured share."""
    from tasks.alerts import alert_if_size_moved, load_config
    from tasks.segments.history import size_history

    history = size_history(lake, day)
    earlier = sorted(d for d in set(history["run_date"]) if d < day.isoformat())
    if not earlier:
        return
    config = load_config()
    before = history[history["run_date"] == earlier[-1]].set_index("segment")["members"]
    now = history[history["run_date"] == day.isoformat()]
    for segment, members in zip(now["segment"], now["members"], strict=True):
        if segment in before.index:
            alert_if_size_moved(str(segment), int(before[segment]), int(members), day.isoformat(), config=config)


def preview_segment(segment: str, run_date: str | None) -> Any:
    """`audiences preview`: the segment as segments.yaml defines it now, on a stored feature table."""
    from tasks.segments.evaluate import load_segments
    from tasks.segments.preview import latest_run_date, preview

    cfg = _config()
    lake = _lake(cfg)
    day = latest_run_date(lake, date.fromisoformat(run_date) if run_date else None)
    stores = current_frame(lake, _refs()["stores"].source, "stores", day)
    return preview(lake, _window(cfg, day.isoformat()), load_segments(cfg.directory), segment, stores)


def explain_membership(customer_key: str, segment: str, run_date: str | None) -> Any:
    from tasks.segments.evaluate import load_segments
    from tasks.segments.preview import explain_customer, latest_run_date

    cfg = _config()
    lake = _lake(cfg)
    day = latest_run_date(lake, date.fromisoformat(run_date) if run_date else None)
    stores = current_frame(lake, _refs()["stores"].source, "stores", day)
    segments = load_segments(cfg.directory)
    return explain_customer(lake, _window(cfg, day.isoformat()), segments, customer_key, segment, stores)


def audience_for(segment: str, run_date: str) -> tuple[str, pd.DataFrame]:
    """The segment's title and its deliverable members (feature rows; hold-out groups excluded)."""
    from tasks.features.build import FEATURE_SOURCE, FEATURE_TABLE
    from tasks.segments.evaluate import MEMBERSHIP_TABLE, load_segments

    cfg = _config()
    lake = _lake(cfg)
    window = _window(cfg, run_date)
    configured = {s.name: s for s in load_segments(cfg.directory).segments}
    seg = configured.get(segment)  # None for data-driven (cluster) segments
    members = lake.read("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, window.run_date)
    members = members[members["segment"] == segment]
    title = seg.title if seg is not None else str(members["reasons"].iloc[0]) if len(members) else segment
    if seg is not None and seg.split is not None:  # hold-out groups are measured, never sent
        members = members[~members["group"].isin(seg.split.hold_out)]
    keys = members["customer_key"]
    feats = lake.read("features", FEATURE_SOURCE, FEATURE_TABLE, window.run_date)
    audience = feats[feats["customer_key"].isin(keys)].sort_values("customer_key").reset_index(drop=True)
    return title, audience


def sync_targets(segments: list[str]) -> list[dict[str, str]]:
    """Every (segment, destination) pair to deliver this run, from destinations.yaml."""
    cfg = _config()
    return [
        {"segment": segment, "destination": name}
        for name, dest_cfg in cfg.destinations.destinations.items()
        if dest_cfg.enabled
        for segment in segments
        if dest_cfg.segments == "all" or segment in dest_cfg.segments
    ]


def deliver_to(segment: str, destination: str, run_date: str, dry_run: bool = False) -> dict[str, Any]:
    """Deliver one segment to one destination: a file write, or a platform sync (plan -> apply)."""
    from tasks.destinations.audience import AudiencePlatform
    from tasks.sync.ledger import Ledger
    from tasks.sync.service import is_platform, sync, upstream_problems

    cfg = _config()
    dest_cfg = cfg.destinations.destinations[destination]
    dest = build_destination(destination, dest_cfg, cfg.directory / "destinations.yaml")
    title, audience = audience_for(segment, run_date)
    if not is_platform(dest):
        d = dest.deliver(segment, title, audience, _window(cfg, run_date))
        log.info("delivered segment %s to %s: %d members", segment, destination, d.members)
        out: dict[str, Any] = {
            "destination": d.destination,
            "segment": d.segment,
            "members": d.members,
            "location": d.location,
        }
        if d.link:
            out["link"] = d.link
        return out
    platform = cast("AudiencePlatform", dest)
    upstream = upstream_problems(_lake(cfg), _refs(), date.fromisoformat(run_date))
    try:
        plan = sync(Ledger(), destination, dest_cfg, platform, segment, title, run_date, audience, upstream, dry_run)
    finally:
        platform.close()
    _alert_on_sync(plan, run_date)
    return {
        "destination": destination,
        "segment": segment,
        "members": plan["expected_size"],
        "location": f"{dest_cfg.kind}:{plan['audience_id'] or '-'}",
        "plan_id": plan["plan_id"],
        "status": plan["status"],
        "added": plan["added"],
        "removed": plan["removed"],
        "failed": plan["failed"],
        "suppressed": plan["suppressed"],
        "hold_reason": plan["hold_reason"],
    }


def _alert_on_sync(plan: dict[str, Any], run_date: str) -> None:
    from tasks.alerts import alert_if_size_moved, send_alert

    label = f"{plan['segment']} -> {plan['destination']}"
    if plan["status"] == "held":
        send_alert(
            "sync_held",
            f"{label} is held for approval",
            {
                "plan": plan["plan_id"],
                "run date": run_date,
                "adds": plan["adds"],
                "removes": plan["removes"],
                "audience now": plan["current_size"],
                "reason": plan["hold_reason"] or "",
                "approve": f"audiences approve {plan['plan_id']} (or the approve_held_syncs task in Airflow)",
            },
        )
    elif plan["status"] == "applied" and plan["current_size"]:
        alert_if_size_moved(label, int(plan["current_size"]), int(plan["expected_size"]), run_date)


def deliver(segment: str, run_date: str) -> list[dict[str, Any]]:
    """Deliver one segment to every destination that receives it."""
    return [deliver_to(t["segment"], t["destination"], run_date) for t in sync_targets([segment])]


def summarize(
    run_date: str,
    extracts: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    deliveries: list[dict[str, Any]] | list[list[dict[str, Any]]],
    quality_reports: list[str] | None = None,
) -> dict[str, Any]:
    """Write the run's summary.json; ``quality_reports``: the per-source reports, when split by source."""
    cfg = _config()
    lake = _lake(cfg)
    window = _window(cfg, run_date)
    unparsed = {(e["source"], e["table"]): e["unparsed"] for e in extracts}
    share = cfg.pipeline.quarantine_alert_share
    tables = []
    for r in sorted(reports, key=lambda r: (r["source"], r["table"])):
        bad = r["quarantined"] + unparsed.get((r["source"], r["table"]), 0)
        tables.append(
            {
                "source": r["source"],
                "table": r["table"],
                "rows": r["rows"],
                "loaded": r["clean"],
                "quarantined": bad,
                "reasons": r["quarantine_reasons"],
                "over_alert_share": bool(r["rows"]) and bad / max(r["rows"], 1) > share,
            }
        )
    summary: dict[str, Any] = {
        "run_date": window.run_date.isoformat(),
        "as_of": window.as_of.isoformat(),
        "tables": tables,
        "segments": [d for item in deliveries for d in (item if isinstance(item, list) else [item])],
        "quarantine": lake.store.describe("quarantine/"),
        "quality_report": ", ".join(quality_reports) if quality_reports else quality_report_location(run_date),
        "warnings": sorted(
            {f"{r['source']}.{r['table']}: {w['name']}" for r in reports for w in r["warnings"]}
            | {f"{e['source']}.{e['table']}: {n}" for e in extracts for n in e.get("notes", [])}
        ),
    }
    summary["delivery_report"] = delivery_report(run_date)
    lake.put_text("runs", RUNS, "summary", window.run_date, "summary.json", json.dumps(summary, indent=2))
    return summary


def summarize_run(run_date: str, deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    """The segments run's summary, with every source's extract and validation results of the date."""
    extracts, reports, locations = ingest_results(run_date)
    return summarize(run_date, extracts, reports, [d for d in deliveries if d], quality_reports=locations)


def apply_held(held: list[dict[str, Any]], run_date: str, by: str) -> list[dict[str, Any]]:
    """Approve the held plans a human approved in Airflow and apply them now."""
    out = []
    for item in held:
        decide_sync(item["plan_id"], approve=True, by=by)
        out.append(deliver_to(item["segment"], item["destination"], run_date))
    return out


def delivery_report(run_date: str) -> str | None:
    """Write the marketers' run-history report (sizes over time, what each sync did); its location."""
    from tasks.sync.ledger import Ledger
    from tasks.sync.report import render

    plans = Ledger().plans()
    if plans.empty:
        return None
    plans = plans[plans["run_date"] <= run_date]
    return _lake(_config()).put_text(
        "runs", RUNS, "deliveries", date.fromisoformat(run_date), "report.html", render(plans, run_date)
    )


def decide_sync(plan_id: str, approve: bool, by: str) -> dict[str, Any]:
    """Approve or reject a held sync plan; an approved plan is applied by the next sync of its audience."""
    from tasks.sync.ledger import Ledger
    from tasks.sync.service import decide

    return decide(Ledger(), plan_id, approve, by)


def import_suppressions(path: str, reason: str, source: str) -> int:
    """Add the emails/phones of a CSV (columns email and/or phone) to the global suppression list."""
    from tasks.normalize.contact import normalize_email, normalize_phone
    from tasks.sync.ledger import Ledger
    from tasks.sync.plan import identifier_hashes

    frame = pd.read_csv(path, dtype="string", encoding="utf-8-sig")
    columns = [c for c in ("email", "phone") if c in frame.columns]
    if not columns:
        raise ValueError(f"{path}: needs a column named email or phone (found {', '.join(frame.columns)})")
    # Exports spell phones in any form: normalize as the profiles were, then key as the plan does.
    normalizers = {"email": normalize_email, "phone": normalize_phone}
    normalized = pd.DataFrame(
        {c: [normalizers[c](v) if isinstance(v, str) else None for v in frame[c]] for c in columns}
    )
    entries = [
        (h, kind, reason) for kind, hashes in identifier_hashes(normalized).items() for h in hashes.dropna().tolist()
    ]
    return Ledger().suppress(entries, source)

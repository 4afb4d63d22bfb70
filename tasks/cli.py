"""`audiences`: generate sample data, run the DAG for a date, or do both as a demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks import settings

DEFAULT_TZ = "Asia/Ho_Chi_Minh"


def _yesterday() -> date:
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(DEFAULT_TZ)).date() - timedelta(days=1)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-24") from None


def cmd_generate(end_date: date, scale: float, seed: int, out: Path) -> dict[str, Any]:
    from tasks.sample import generate, injected_counts, write

    started = time.monotonic()
    print(f"Generating sample data (scale {scale}, seed {seed}, ending {end_date}) into {out} ...", flush=True)
    data = generate(end_date=end_date, scale=scale, seed=seed)
    rows = write(data, out)
    bad = injected_counts(data)
    print(f"  wrote {', '.join(f'{t}={n:,}' for t, n in rows.items())} in {time.monotonic() - started:.1f}s")
    print(f"  injected bad rows: {', '.join(f'{k}={v}' for k, v in sorted(bad.items()))}")
    return {"rows": rows, "injected": bad}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nRun for business date {summary['run_date']} (as of {summary['as_of']})")
    print(f"\n  {'source.table':<24}{'rows':>9}{'loaded':>9}{'quarantined':>13}  reasons")
    for t in summary["tables"]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(t["reasons"].items())) or "-"
        flag = "  <- over alert share" if t["over_alert_share"] else ""
        print(
            f"  {t['source'] + '.' + t['table']:<24}{t['rows']:>9,}{t['loaded']:>9,}{t['quarantined']:>13,}"
            f"  {reasons}{flag}"
        )
    print(f"\n  {'segment':<38}{'members':>9}  destination")
    for s in summary["segments"]:
        sync = ""
        if "status" in s:
            sync = f"  {s['status']} (+{s['added']:,} -{s['removed']:,}, plan {s['plan_id']})"
            if s.get("hold_reason"):
                sync += f": {s['hold_reason']}"
            if s["status"] == "held":
                sync += f"; approve with `audiences approve {s['plan_id']}`"
        print(f"  {s['segment']:<38}{s['members']:>9,}  {s['location']}{sync}")
    for warning in summary.get("warnings", []):
        print(f"  warning: {warning}")
    print(f"\n  quarantined rows (with reasons): {summary['quarantine']}")
    print(f"  data-quality report: {summary['quality_report']}")
    if summary.get("delivery_report"):
        print(f"  delivery history report: {summary['delivery_report']}")


def cmd_run(run_date: date) -> int:
    from tasks.runner import run_dag

    started = time.monotonic()
    print(
        f"Running the ingest_<source> DAGs, then customer_segments, for {run_date} (home: {settings.home()}) ...",
        flush=True,
    )
    outcome = run_dag(run_date)
    elapsed = time.monotonic() - started
    if outcome.state != "success":
        print(
            f"\nDAG run {outcome.state} after {elapsed:.0f}s. "
            f"Failed or blocked tasks: {', '.join(outcome.failed_tasks)}",
            file=sys.stderr,
        )
        states = ", ".join(f"{task}={state}" for task, state in sorted(outcome.task_states.items()))
        print(f"Task states: {states}", file=sys.stderr)
        print(
            "The task log above says why; a failed quality_gate means source data must be fixed first "
            "(see the quarantine and validation zones of the lake). Re-run the same date when fixed.",
            file=sys.stderr,
        )
        return 1
    from tasks.config.models import AppConfig
    from tasks.lake import open_lake
    from tasks.pipeline import RUNS

    lake = open_lake(AppConfig().pipeline.lake_root)
    print_summary(json.loads(lake.get_text("runs", RUNS, "summary", run_date, "summary.json")))
    print(f"\nDone in {elapsed:.0f}s.")
    return 0


def cmd_sandbox_run(run_date: date) -> int:
    """The demo run with every shipped platform destination synced to its local contract server."""
    from tasks.sandbox.demo import sandbox

    with sandbox(settings.config_dir(), settings.home()) as config:
        os.environ["AUDIENCES_CONFIG"] = str(config)
        print(f"Email and ad platforms: local contract servers on 127.0.0.1 (config copy: {config})")
        return cmd_run(run_date)


def cmd_backfill(start: date, end: date) -> int:
    """Run each business date of [start, end] in order; stop at the first failure.

    In order, because incremental sources build each date's state on the one before. Under the
    scheduler the same is `airflow backfill create --dag-id customer_segments --from-date ... --to-date ...`.
    """
    if end < start:
        print(f"error: --end {end} is before --start {start}", file=sys.stderr)
        return 2
    day = start
    while day <= end:
        code = cmd_run(day)
        if code != 0:
            print(f"backfill stopped at {day}; dates after it were not run", file=sys.stderr)
            return code
        day += timedelta(days=1)
    return 0


def cmd_preview(segment: str, day: date | None) -> int:
    from tasks.pipeline import preview_segment

    started = time.monotonic()
    p = preview_segment(segment, day.isoformat() if day else None)
    print(f"Segment {p.segment} on {p.run_date}: {p.size:,} members")
    if p.entered is not None:
        print(f"  since the previous run: +{p.entered:,} entered, -{p.left:,} left")
    if p.overlap:
        top = list(p.overlap.items())[:8]
        print("  overlap: " + ", ".join(f"{s} {n:,} ({n / max(p.size, 1):.0%})" for s, n in top))
    for key, reasons in zip(p.sample["customer_key"], p.sample["reasons"], strict=True):
        print(f"  {key}: {reasons}")
    print(f"({time.monotonic() - started:.1f}s)")
    return 0


def cmd_explain(customer: str, segment: str, day: date | None) -> int:
    from tasks.pipeline import explain_membership

    e = explain_membership(customer, segment, day.isoformat() if day else None)
    print(f"{e.customer_key} is {'IN' if e.member else 'NOT in'} {e.segment}")
    for text, value in e.clauses:
        print(f"  [{'x' if value else ' '}] {text}")
    print(f"deciding: {e.deciding or '-'}")
    return 0


def cmd_syncs(segment: str | None, destination: str | None, limit: int) -> int:
    from tasks.sync.ledger import Ledger

    plans = Ledger().plans(destination, segment).tail(limit)
    if plans.empty:
        print("no syncs yet")
        return 0
    print(f"{'plan':<26}{'destination':<22}{'segment':<28}{'status':<12}{'+add':>8}{'-rem':>8}{'size':>9}  note")
    for p in plans.to_dict("records"):
        note = p["hold_reason"] or p["error"] or ""
        print(
            f"{p['plan_id']:<26}{p['destination']:<22}{p['segment']:<28}{p['status']:<12}"
            f"{p['adds']:>8,}{p['removes']:>8,}{p['expected_size']:>9,}  {note}"
        )
    return 0


def cmd_decide(plan_id: str, approve: bool, by: str) -> int:
    from tasks.pipeline import decide_sync

    plan = decide_sync(plan_id, approve, by)
    verb = "approved: the next sync of this audience applies it" if approve else "rejected: nothing will be sent"
    print(f"plan {plan['plan_id']} ({plan['destination']}/{plan['segment']}) {verb}")
    return 0


def cmd_sync(segment: str, destination: str, day: date, dry_run: bool) -> int:
    from tasks.pipeline import deliver_to

    result = deliver_to(segment, destination, day.isoformat(), dry_run=dry_run)
    print(json.dumps(result, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiences", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write realistic sample sources (POS DB, GA4 files, CRM CSV)")
    run = sub.add_parser("run", help="run the DAG in-process for one business date")
    demo = sub.add_parser("demo", help="generate sample data and run the DAG for it")
    prev = sub.add_parser("preview", help="size, sample, overlap and change of a segment as defined now")
    prev.add_argument("segment")
    expl = sub.add_parser("explain", help="which clauses put a customer in (or out of) a segment")
    expl.add_argument("customer")
    expl.add_argument("segment")
    for p in (prev, expl):
        p.add_argument("--date", type=_date, default=None, help="run date (default: the latest in the lake)")
    back = sub.add_parser("backfill", help="run the DAG for every business date of a range, in order")
    back.add_argument("--start", type=_date, required=True)
    back.add_argument("--end", type=_date, required=True)
    syncs = sub.add_parser("syncs", help="recent audience syncs (plans) with their status and counts")
    syncs.add_argument("--segment", default=None)
    syncs.add_argument("--destination", default=None)
    syncs.add_argument("--limit", type=int, default=30)
    approve = sub.add_parser("approve", help="approve a sync held for approval (applied by its next sync)")
    reject = sub.add_parser("reject", help="reject a sync held for approval (nothing is sent)")
    for p in (approve, reject):
        p.add_argument("plan_id")
        p.add_argument("--by", default=os.environ.get("USER", "cli"), help="who decided (kept in the history)")
    sync = sub.add_parser("sync", help="plan and apply one segment to one destination now")
    sync.add_argument("segment")
    sync.add_argument("destination")
    sync.add_argument("--dry-run", action="store_true", help="write the plan only; send nothing")
    sub.add_parser("pools", help="the Airflow pools platform syncs run in, as JSON for `airflow pools import`")
    supp = sub.add_parser("suppress", help="add a CSV of emails/phones to the global suppression list")
    supp.add_argument("file", type=Path)
    supp.add_argument("--reason", default="unsubscribed")
    demo.add_argument(
        "--no-sandbox", action="store_true", help="skip the platform syncs to local contract servers (files only)"
    )
    for p in (gen, demo):
        p.add_argument("--scale", type=float, default=1.0, help="1.0 = about 2,000 customers")
        p.add_argument("--seed", type=int, default=42)
    for p in (gen, run, demo, sync):
        p.add_argument("--date", type=_date, default=None, help="business date (default: yesterday, Asia/Ho_Chi_Minh)")
    gen.add_argument("--out", type=Path, default=None, help="folder (default: $AUDIENCES_HOME/sample)")
    args = parser.parse_args(argv)
    day = getattr(args, "date", None) or _yesterday()
    try:
        if args.command == "backfill":
            return cmd_backfill(args.start, args.end)
        if args.command == "preview":
            return cmd_preview(args.segment, args.date)
        if args.command == "explain":
            return cmd_explain(args.customer, args.segment, args.date)
        if args.command == "syncs":
            return cmd_syncs(args.segment, args.destination, args.limit)
        if args.command in ("approve", "reject"):
            return cmd_decide(args.plan_id, args.command == "approve", args.by)
        if args.command == "sync":
            return cmd_sync(args.segment, args.destination, day, args.dry_run)
        if args.command == "pools":
            from tasks import topology

            print(json.dumps(topology.pools(), indent=2))
            return 0
        if args.command == "suppress":
            from tasks.pipeline import import_suppressions

            added = import_suppressions(str(args.file), args.reason, f"file:{args.file.name}")
            print(f"{added:,} new suppressions (stored as hashes only)")
            return 0
        if args.command == "generate":
            cmd_generate(day, args.scale, args.seed, args.out or settings.home() / "sample")
            return 0
        if args.command == "demo":
            cmd_generate(day, args.scale, args.seed, settings.home() / "sample")
            if not args.no_sandbox:
                return cmd_sandbox_run(day)
        return cmd_run(day)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

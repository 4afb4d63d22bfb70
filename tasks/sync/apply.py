"""Apply a plan: send its batches within the platform's limits and record each accepted batch.

The ledger is the resume point. A batch is committed (ledger rows + batch row, one transaction)
only after the platform accepted it, and a batch already committed is never sent again, so a
crash between batches resumes without resending. Adds go before removes: an audience that must
stay above a platform minimum (TikTok 1,000) never dips below it half-way through a sync.

A batch the platform refuses for its content is split in halves until the offending rows are
isolated; those rows are recorded as failed (retried next run) and the rest go through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from tasks.destinations.audience import (
    AudiencePlatform,
    BatchRef,
    BatchRejected,
    BatchResult,
    DestinationError,
)
from tasks.destinations.http import redact
from tasks.sync.ledger import Consent, Ledger
from tasks.sync.plan import identifier_hashes

log = logging.getLogger(__name__)


def _retries(platform: AudiencePlatform) -> int:
    """Retries the client's HTTP layer made (clients expose ``retries`` or their ``http`` client)."""
    value = getattr(platform, "retries", None)
    if value is None:
        value = getattr(getattr(platform, "http", None), "retries", 0)
    return int(value or 0)


OPERATIONS = ("add", "replace", "remove")


def _merge(a: BatchResult, b: BatchResult) -> BatchResult:
    return BatchResult(
        {**a.accepted, **b.accepted},
        {**a.failed, **b.failed},
        {**a.suppressed, **b.suppressed},
        a.unmatched + b.unmatched,
    )


def send_isolating(
    call: Callable[[pd.DataFrame, BatchRef], BatchResult], frame: pd.DataFrame, ref: BatchRef
) -> BatchResult:
    """Send a batch; when the platform rejects it whole, split until the bad rows stand alone.

    Each half is sent as its own one-batch session (a fresh ``BatchRef``): reusing the original
    position would let the half marked "last" close a Meta session the other half still needs.
    """
    try:
        return call(frame, ref)
    except BatchRejected as exc:
        if len(frame) <= 1:
            keys = frame["customer_key"].astype(str).tolist()
            return BatchResult(failed={k: f"rejected by the platform: {redact(str(exc))}" for k in keys})
        mid = len(frame) // 2
        log.info(
            "batch %d of %s rejected; splitting %d rows to isolate the bad ones", ref.seq, ref.operation, len(frame)
        )
        halves = [frame.iloc[:mid], frame.iloc[mid:]]
        results = [
            send_isolating(call, half, BatchRef(f"{ref.plan_id}/{ref.seq}.{i}", ref.operation, 1, 1, len(half)))
            for i, half in enumerate(halves)
        ]
        return _merge(results[0], results[1])


def _suppression_entries(frame: pd.DataFrame, keys: dict[str, str], source: str) -> list[tuple[str, str, str]]:
    """Platform-reported unsubscribes join the global list (as hashes), so no platform gets them again."""
    rows = frame[frame["customer_key"].astype(str).isin(list(keys))]
    out: list[tuple[str, str, str]] = []
    for kind, hashes in identifier_hashes(rows).items():
        for key, h in zip(rows["customer_key"].astype(str), hashes, strict=True):
            if isinstance(h, str):
                reason = keys[key].split(":", 1)[0][:40] or "unsubscribed"
                out.append((h, kind, f"{reason}|{source}"))
    return out


def apply_plan(
    ledger: Ledger,
    plan_id: str,
    platform: AudiencePlatform,
    members: pd.DataFrame,
    title: str,
    consent: Consent | None,
) -> dict[str, Any]:
    """Send every batch of the plan not yet accepted; returns the plan's final row."""
    plan = ledger.plan(plan_id)
    if plan is None:
        raise KeyError(f"no sync plan {plan_id!r}")
    if plan["status"] not in ("planned", "approved", "applying", "failed"):
        raise ValueError(f"plan {plan_id} is {plan['status']}; only planned or approved plans are applied")
    started = time.monotonic()
    ledger.update_plan(plan_id, status="applying", started_at=datetime.now(UTC), error=None)
    dest, seg = plan["destination"], plan["segment"]
    by_key = members.assign(customer_key=members["customer_key"].astype(str)).set_index("customer_key", drop=False)
    try:
        audience_id = platform.ensure_audience(seg, title, plan["audience_id"] or ledger.audience_id(dest, seg))
        ledger.update_plan(plan_id, audience_id=audience_id)
        for operation in OPERATIONS:
            batches = ledger.batch_keys(plan_id, operation)
            if not batches:
                continue
            done = ledger.accepted_batches(plan_id, operation)
            total = sum(len(k) for k in batches.values())
            for seq in sorted(batches):
                if seq in done:
                    continue  # accepted before a crash: never sent twice
                keys = batches[seq]
                ref = BatchRef(plan_id, operation, seq, len(batches), total)  # type: ignore[arg-type]
                if operation == "remove":
                    frame = ledger.refs(dest, seg, keys)
                    result = send_isolating(lambda f, r: platform.remove(audience_id, f, r), frame, ref)
                else:
                    frame = by_key.loc[by_key.index.intersection(keys)].reset_index(drop=True)
                    call = platform.replace if operation == "replace" else platform.add
                    result = send_isolating(lambda f, r, c=call: c(audience_id, f, r), frame, ref)  # type: ignore[misc]
                suppress = (
                    _suppression_entries(frame, result.suppressed, f"{plan['kind']}:{dest}")
                    if result.suppressed and operation != "remove"
                    else None
                )
                ledger.commit_batch(
                    plan,
                    operation,
                    seq,
                    len(frame),
                    result.accepted,
                    result.failed,
                    result.suppressed,
                    result.unmatched,
                    consent,
                    suppress,
                )
                log.info(
                    "%s/%s plan %s: %s batch %d/%d accepted %d, failed %d, suppressed %d",
                    dest,
                    seg,
                    plan_id,
                    operation,
                    seq,
                    len(batches),
                    len(result.accepted),
                    len(result.failed),
                    len(result.suppressed),
                )
            if operation == "replace":
                ledger.drop_outside(dest, seg, plan_id)
    except DestinationError as exc:
        ledger.update_plan(
            plan_id,
            status="failed",
            error=redact(str(exc), 1000),
            retries=_retries(platform),
            finished_at=datetime.now(UTC),
            **ledger.batch_totals(plan_id),
        )
        raise
    ledger.update_plan(
        plan_id,
        status="applied",
        retries=_retries(platform),
        finished_at=datetime.now(UTC),
        **ledger.batch_totals(plan_id),
    )
    log.info("%s/%s plan %s applied in %.1f s", dest, seg, plan_id, time.monotonic() - started)
    final = ledger.plan(plan_id)
    assert final is not None
    return final

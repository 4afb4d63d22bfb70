"""One audience sync, end to end: members -> plan (written first) -> apply, or hold for approval.

Re-planning is how a sync resumes: the ledger already holds every batch a crashed or failed apply
got accepted, so a new plan contains exactly what is still missing, and a re-run of a date that
was fully applied plans nothing and sends nothing. An older plan still open (held, failed, half
applied) is marked ``superseded`` by the new one, so only one plan per audience is ever live.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from tasks.config.models import DestinationConfig
from tasks.destinations.audience import MEMBER_COLUMNS, AudiencePlatform
from tasks.lake import Lake
from tasks.normalize.hashing import split_vietnamese_name
from tasks.sync.apply import apply_plan
from tasks.sync.ledger import Consent, Ledger
from tasks.sync.plan import CONSENT_FIELDS, make_plan

log = logging.getLogger(__name__)

DEFAULT_COUNTRY = "VN"


class SyncBusy(RuntimeError):
    """Another process is syncing the same (destination, segment) right now."""


def is_platform(destination: object) -> bool:
    return hasattr(type(destination), "capabilities")


def to_members(audience: pd.DataFrame) -> pd.DataFrame:
    """Feature rows -> the member frame every platform client reads (``MEMBER_COLUMNS``)."""
    out = pd.DataFrame({"customer_key": audience["customer_key"].astype(str).to_numpy()})
    for column in ("email", "phone", "gender", "birthday", "email_opt_in", "sms_opt_in", "ads_opt_in"):
        out[column] = audience[column].to_numpy() if column in audience else pd.NA
    names = (
        split_vietnamese_name(audience["full_name"].astype("string"))
        if "full_name" in audience
        else pd.DataFrame({"first_name": [pd.NA] * len(audience), "last_name": [pd.NA] * len(audience)})
    )
    out["first_name"] = names["first_name"].to_numpy()
    out["last_name"] = names["last_name"].to_numpy()
    out["city"] = audience["province"].to_numpy() if "province" in audience else pd.NA
    out["postal_code"] = pd.NA
    out["country"] = DEFAULT_COUNTRY
    for column in ("email", "phone"):  # empty strings are "missing", not an identifier
        values = out[column].astype("string")
        out[column] = values.where(values.str.len() > 0)
    return out[MEMBER_COLUMNS]


def upstream_problems(lake: Lake, refs: dict[str, Any], day: date) -> list[str]:
    """Sources whose snapshot for this run is empty: a sync must not shrink audiences on that."""
    problems = []
    for table, ref in sorted(refs.items()):
        history = lake.history("raw", ref.source, table, day)
        today = [p for p in history if p.day == day]
        empty_now = bool(today) and today[-1].mode == "snapshot" and today[-1].rows == 0
        if empty_now and any(p.day < day and p.rows > 0 for p in history):
            problems.append(f"{ref.source}.{table} delivered an empty snapshot")
    return problems


def sync(
    ledger: Ledger,
    name: str,
    cfg: DestinationConfig,
    platform: AudiencePlatform,
    segment: str,
    title: str,
    run_date: str,
    audience: pd.DataFrame,
    upstream: list[str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Plan one (segment, destination) and apply it unless it must be held, blocked or dry-run.

    One sync per audience at a time (the CLI and the scheduler may both ask): a second caller gets
    ``SyncBusy`` (Airflow retries the task later) instead of sending the same members twice.
    """
    with ledger.audience_lock(name, segment) as mine:
        if not mine:
            raise SyncBusy(
                f"{name}/{segment}: another sync of this audience is running (the CLI or another task); "
                "retry when it finishes — nothing was sent"
            )
        return _sync(ledger, name, cfg, platform, segment, title, run_date, audience, upstream, dry_run)


def _sync(
    ledger: Ledger,
    name: str,
    cfg: DestinationConfig,
    platform: AudiencePlatform,
    segment: str,
    title: str,
    run_date: str,
    audience: pd.DataFrame,
    upstream: list[str] | None,
    dry_run: bool,
) -> dict[str, Any]:
    members = to_members(audience)
    policy = cfg.sync.model_copy(update={"dry_run": True}) if dry_run else cfg.sync
    approved = [p for p in ledger.open_plans(name, segment) if p["status"] == "approved"]
    if approved and not dry_run:
        # A human approved a held plan: apply exactly that plan (it was checked against this ledger).
        return apply_plan(ledger, approved[-1]["plan_id"], platform, members, title, _consent(cfg, platform, run_date))
    plan = make_plan(
        destination=name,
        kind=cfg.kind,
        segment=segment,
        run_date=run_date,
        members=members,
        holdings=ledger.holdings(name, segment),
        capabilities=platform.capabilities,
        policy=policy,
        suppressed=ledger.suppressed_hashes(),
        upstream_problems=upstream,
    )
    if plan.status != "dry_run":
        for old in ledger.open_plans(name, segment):
            ledger.update_plan(old["plan_id"], status="superseded", finished_at=datetime.now(UTC))
    ledger.insert_plan(plan.row(), plan.items(platform.capabilities))
    if plan.stale_failed:
        ledger.forget(name, segment, plan.stale_failed)
    log.info(
        "%s/%s plan %s: %s; +%d -%d =%d -> %d members%s",
        name,
        segment,
        plan.plan_id,
        plan.status,
        len(plan.adds) + len(plan.replace),
        len(plan.removes),
        plan.unchanged,
        plan.expected_size,
        f" ({plan.hold_reason})" if plan.hold_reason else "",
    )
    if plan.status != "planned":
        row = ledger.plan(plan.plan_id)
        assert row is not None
        return row
    return apply_plan(ledger, plan.plan_id, platform, members, title, _consent(cfg, platform, run_date))


def _consent(cfg: DestinationConfig, platform: AudiencePlatform, run_date: str) -> Consent | None:
    purpose = cfg.sync.purpose or platform.capabilities.purpose
    field = CONSENT_FIELDS.get(purpose)
    if field is None:
        return None
    return Consent(
        purpose=purpose, field=field, source=f"customer profile (CRM consent flags) as of {run_date}", as_of=run_date
    )


def decide(ledger: Ledger, plan_id: str, approve: bool, by: str) -> dict[str, Any]:
    """Approve or reject a held plan. An approved plan is applied by the next sync of its audience."""
    plan = ledger.plan(plan_id)
    if plan is None:
        raise KeyError(f"no sync plan {plan_id!r}; `audiences syncs` lists plans and their ids")
    if plan["status"] != "held":
        raise ValueError(f"plan {plan_id} is {plan['status']}, not held; only held plans can be approved or rejected")
    newer = [p for p in ledger.open_plans(plan["destination"], plan["segment"]) if p["created_at"] > plan["created_at"]]
    if newer:
        raise ValueError(f"plan {plan_id} was superseded by {newer[-1]['plan_id']}; decide on that one")
    ledger.update_plan(plan_id, status="approved" if approve else "rejected", decided_by=by[:128])
    result = ledger.plan(plan_id)
    assert result is not None
    return result

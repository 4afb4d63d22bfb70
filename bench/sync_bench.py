"""Planning a 1,000,000-member segment against a 1,000,000-member ledger with 5% change.

Times what a sync does before sending anything: read the ledger, apply consent and suppression,
diff, and write the plan with its members (adds and removes by batch) to the state database.
Setting up the 1M-row ledger is not timed. Target: under 10 s on this 2-core machine.

Run: ``python -m bench.sync_bench [--members 1000000] [--change 0.05]``
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_S = 10.0


def _ledger_rows(keys: np.ndarray) -> list[tuple[object, ...]]:
    now = datetime.now(UTC).isoformat(sep=" ")
    return [
        ("mailchimp_main", "vip", k, "member", f"user{k}@example.com", "bench-plan", None, None, None, None, None, now)
        for k in keys
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--change", type=float, default=0.05)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    url = f"sqlite:///{work / 'state.db'}"
    os.environ["AUDIENCES_STATE_DB_URL"] = url
    from tasks.config.models import SyncPolicy
    from tasks.destinations.audience import Capabilities
    from tasks.sync.ledger import Ledger
    from tasks.sync.plan import make_plan

    n, changed = args.members, int(args.members * args.change)
    rng = np.random.default_rng(7)
    ledger = Ledger(url)  # creates the tables
    held = np.array([f"C{i:09d}" for i in range(n)], dtype=object)
    t = time.perf_counter()
    with sqlite3.connect(work / "state.db") as conn:
        conn.executemany("INSERT INTO audience_ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", _ledger_rows(held))
    setup = time.perf_counter() - t
    # 5% of the ledger left the segment, the same number joined.
    gone = rng.choice(n, size=changed, replace=False)
    keep = np.ones(n, dtype=bool)
    keep[gone] = False
    new = np.array([f"N{i:09d}" for i in range(changed)], dtype=object)
    keys = np.concatenate([held[keep], new])
    members = pd.DataFrame(
        {
            "customer_key": keys,
            "email": [f"user{k}@example.com" for k in keys],
            "phone": [f"+849{i % 100_000_000:08d}" for i in range(len(keys))],
            "email_opt_in": True,
            "sms_opt_in": True,
            "ads_opt_in": True,
        }
    )
    # A realistic global suppression list (1% of the audience) so the hash check really runs.
    import hashlib

    suppressed = {hashlib.sha256(f"user{k}@example.com".lower().encode()).hexdigest() for k in keys[: n // 100]}
    caps = Capabilities(purpose="email_marketing", max_batch=500)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    holdings = ledger.holdings("mailchimp_main", "vip")
    timings["read ledger"] = time.perf_counter() - t0
    t = time.perf_counter()
    plan = make_plan(
        destination="mailchimp_main",
        kind="mailchimp",
        segment="vip",
        run_date="2026-11-24",
        members=members,
        holdings=holdings,
        capabilities=caps,
        policy=SyncPolicy(),
        suppressed=suppressed,
    )
    timings["consent + suppression + diff"] = time.perf_counter() - t
    t = time.perf_counter()
    ledger.insert_plan(plan.row(), plan.items(caps))
    timings["write plan"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nSync plan: {len(members):,}-member segment vs {n:,}-member ledger ({args.change:.0%} change)")
    print(f"  (ledger set-up, not timed: {setup:.1f} s)")
    for name, seconds in timings.items():
        print(f"  {name:<32}{seconds:>8.2f} s")
    print(f"  {'total':<32}{total:>8.2f} s   target {TARGET_S:.0f} s   ratio {total / TARGET_S:.2f}")
    print(
        f"  plan: +{len(plan.adds):,} -{len(plan.removes):,} ={plan.unchanged:,} "
        f"suppressed {plan.excluded_suppressed:,}; peak memory {peak:,.0f} MiB"
    )
    # Suppressed members still in the ledger must leave the audience too.
    expected = (changed, changed + n // 100, n - changed - n // 100)
    if (len(plan.adds), len(plan.removes), plan.unchanged) != expected:
        print(f"error: plan counts are wrong; expected +{expected[0]} -{expected[1]} ={expected[2]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validate one day's increment of 1,000,000 POS order lines, as issue 3's target asks (< 30 s).

Runs the real validate stage (cast + Great Expectations suite + quarantine + clean write) on a
synthetic increment with a realistic, small share of bad rows, in a fresh process so the peak RSS
is this stage's own. Prints seconds, rows/s and peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

ROWS = int(os.environ.get("BENCH_LINES", "1000000"))
DAY = date(2026, 11, 24)


def increment(rows: int, orders: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(42)
    order_ids = np.array([f"ORD-{i:08d}" for i in range(orders)])
    orders_frame = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": [f"CUS-{i % 50000:06d}" for i in range(orders)],
            "store_id": "ST-01",
            "channel": "store",
            "ordered_at": "2026-11-24T05:00:00Z",
            "subtotal_vnd": 500000,
            "discount_vnd": 0,
            "total_vnd": 500000,
            "updated_at": "2026-11-24T05:00:00Z",
            "_source": "pos:orders",
            "_row": np.arange(1, orders + 1),
        }
    )
    qty = rng.integers(1, 4, rows)
    price = rng.integers(100, 2500, rows) * 1000
    lines = pd.DataFrame(
        {
            "order_id": order_ids[rng.integers(0, orders, rows)],
            "line_no": np.arange(rows) % 5 + 1,
            "product_id": [f"P-{i:03d}" for i in rng.integers(0, 120, rows)],
            "quantity": qty,
            "unit_price_vnd": price,
            "discount_vnd": 0,
            "line_total_vnd": qty * price,
            "_source": "pos:order_lines",
            "_row": np.arange(1, rows + 1),
        }
    )
    lines["line_no"] = lines.groupby("order_id").cumcount() + 1
    bad = rng.choice(rows, size=rows // 2000, replace=False)  # 0.05% negative totals
    lines.loc[bad, "line_total_vnd"] = -1
    return orders_frame, lines


def main() -> None:
    os.environ["AUDIENCES_HOME"] = tempfile.mkdtemp(prefix="bench-1m-")
    from tasks.lake import Lake
    from tasks.settings import RunWindow
    from tasks.tables import TableRef
    from tasks.validate.expectations import _context
    from tasks.validate.stage import validate_table

    lake = Lake.local(Path(os.environ["AUDIENCES_HOME"]) / "lake")
    window = RunWindow(DAY, ZoneInfo("Asia/Ho_Chi_Minh"))
    refs = {"orders": TableRef("pos", "orders"), "order_lines": TableRef("pos", "order_lines")}
    orders, lines = increment(ROWS, ROWS // 3)
    lake.write("raw", "pos", "orders", DAY, orders)
    lake.write("raw", "pos", "order_lines", DAY, lines)
    validate_table(lake, "pos", "orders", window, refs)
    _context()  # GX start-up is paid once per worker process, not per increment
    started = time.perf_counter()
    report = validate_table(lake, "pos", "order_lines", window, refs)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"rows": report["rows"], "seconds": seconds, "rows_per_s": report["rows"] / seconds,
              "quarantined": report["quarantined"], "peak_rss_mib": peak_mib, "target_s": 30.0}  # fmt: skip
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

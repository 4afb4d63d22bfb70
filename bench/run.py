"""`make bench`: how long the demo takes and how the stages scale, measured in one run.

The machine is shared and noisy, so figures are reported with ratios measured in the same run
(stage time at 4x data over 1x; demo time over its 2-minute budget) rather than as absolute
pass/fail thresholds inside the test suite.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

RUN_DATE = date(2026, 11, 24)
ROOT = Path(__file__).resolve().parents[1]
DEMO_BUDGET_S = 120.0


def stage_times(home: Path, scale: float) -> dict[str, float]:
    os.environ["AUDIENCES_HOME"] = str(home)
    os.environ["AUDIENCES_CONFIG"] = str(ROOT / "config")
    from tasks import pipeline
    from tasks.sample import generate, write

    run = RUN_DATE.isoformat()
    times: dict[str, float] = {}
    t = time.perf_counter()
    write(generate(end_date=RUN_DATE, scale=scale), home / "sample")
    times["generate"] = time.perf_counter() - t
    pairs = pipeline.source_tables()
    t = time.perf_counter()
    for p in pairs:
        pipeline.extract(p["source"], p["table"], run)
    times["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    reports = [pipeline.validate(p["source"], p["table"], run) for p in pairs]
    times["validate"] = time.perf_counter() - t
    rows = sum(r["rows"] for r in reports)
    pipeline.gate(reports)
    t = time.perf_counter()
    pipeline.build_unified(run)
    times["unify"] = time.perf_counter() - t
    t = time.perf_counter()
    pipeline.features(run)
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    segments = pipeline.segments(run)
    times["segments"] = time.perf_counter() - t
    t = time.perf_counter()
    for s in segments:
        pipeline.deliver(s, run)
    times["deliver"] = time.perf_counter() - t
    times["rows"] = float(rows)
    return times


def demo_seconds(home: Path) -> tuple[float, float]:
    """Wall time of `audiences demo` (generate + real DAG run), first with a fresh Airflow DB, then warm."""
    env = os.environ | {"AUDIENCES_HOME": str(home), "AUDIENCES_CONFIG": str(ROOT / "config")}
    out = []
    for _ in range(2):
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "demo", "--date", RUN_DATE.isoformat()],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"demo failed:\n{proc.stderr[-3000:]}")
        out.append(time.perf_counter() - t)
    return out[0], out[1]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="audiences-bench-"))
    try:
        print("Benchmark (one run; ratios compare figures measured side by side)\n", flush=True)
        cold, warm = demo_seconds(work / "demo")
        print(
            f"demo at scale 1 (generate + DAG via dag.test): cold {cold:.1f}s (incl. Airflow DB migration), "
            f"warm {warm:.1f}s; warm/budget = {warm / DEMO_BUDGET_S:.2f} of {DEMO_BUDGET_S:.0f}s",
            flush=True,
        )
        stage_times(work / "warmup", 0.1)  # pays one-time imports (GX, Ibis) outside the measured runs
        small = stage_times(work / "s1", 1.0)
        large = stage_times(work / "s4", 4.0)
        print(f"\n{'stage':<10}{'scale 1 (s)':>12}{'scale 4 (s)':>12}{'4x/1x':>8}")
        for stage in ("generate", "extract", "validate", "unify", "features", "segments", "deliver"):
            print(f"{stage:<10}{small[stage]:>12.2f}{large[stage]:>12.2f}{large[stage] / small[stage]:>8.2f}")
        print(f"{'rows':<10}{small['rows']:>12,.0f}{large['rows']:>12,.0f}{large['rows'] / small['rows']:>8.2f}")
        rate = large["rows"] / large["validate"]
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"\nvalidation throughput at scale 4: {rate:,.0f} rows/s; "
            f"peak RSS of the stage process: {peak_mib:,.0f} MiB"
        )
        proc = subprocess.run([sys.executable, "-m", "bench.validate_1m"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"1M-line validation bench failed:\n{proc.stderr[-3000:]}")
        one_m = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"validate one day's increment of {one_m['rows']:,} POS order lines: {one_m['seconds']:.1f}s "
            f"({one_m['seconds'] / one_m['target_s']:.2f} of the 30 s target), {one_m['quarantined']:,} quarantined, "
            f"peak RSS {one_m['peak_rss_mib']:,.0f} MiB (process incl. generating the increment)"
        )
        results = {
            "validate_1m_lines": one_m,
            "demo_cold_s": cold,
            "demo_warm_s": warm,
            "scale1": small,
            "scale4": large,
            "validate_rows_per_s": rate,
            "peak_rss_mib": peak_mib,
        }
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"\nresults: {out / 'results.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

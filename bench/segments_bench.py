"""Segment-engine benchmark (issue 4): features, segments and membership diff at sizes S, M and L.

``python -m bench.segments_bench --size S`` generates (or reuses) the synthetic lake of that size
(``bench.segdata``) and measures, in the same run, each stage in a FRESH child process, so the peak
RSS reported is that stage's own and one stage's caches cannot speed up another:

* ``product``  - ``write_features`` (every feature, as the pipeline writes them) on views over the files;
* ``pandas``   - the same features in idiomatic pandas (``bench.pandas_features``);
* ``floor``    - the same features in one hand-written DuckDB query straight over the files
  (``bench.floor_features``);
* ``check``    - asserts the three agree on every column and row, so the comparison is honest;
* ``segments`` - every segment of ``config/segments.yaml`` on the product's feature table, done as
  ``tasks.segments.evaluate.evaluate`` does it (compile, truth table, reasons, ``finalize``) minus the lake;
* ``diff``     - ``membership_changes`` against a previous run with about 5 % of memberships changed.

The machine is shared and noisy, so the comparisons are ratios of figures measured side by side in
one run; absolute seconds are context. The segment stage, whose target is absolute (50 segments in
5 s), runs three times and reports the median. All three feature variants compute the whole feature table (the
catalog's columns and the configured CRM attributes) and write it to Parquet. Results go to
``var/bench/segments_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import segdata
from bench.pandas_features import all_columns, all_features
from tasks.settings import RunWindow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
OUT = ROOT / "var" / "bench"
WINDOW = RunWindow(segdata.RUN_DATE, segdata.TZ)
FEATURE_VARIANTS = ("floor", "product", "pandas")
VARIANTS = (*FEATURE_VARIANTS, "check", "segments", "diff")
CHANGED_SHARE = 0.05
# Stages that read another stage's output; the work folder is emptied at the start of every run.
NEEDS = {"segments": "product", "diff": "segments"}
REPEATS = {"segments": 3}  # runs of a stage, median reported (see ``repeated``)
TARGETS = {"speedup_vs_pandas": 4.0, "over_floor": 1.5, "peak_mib": 3 * 1024, "segments_s": 5.0, "segments_n": 50}


def _rss_mib(field: str = "VmRSS") -> float:
    """Current resident set, to tell the stage's own memory from the interpreter and its imports."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    """This process's peak resident set since it started its program (VmHWM).

    Not ``ru_maxrss``: Linux carries that over exec from the forking parent, so a stage spawned by a
    parent that had just generated the data reported the parent's peak (1.6 GiB at size S) as its own.
    """
    peak = _rss_mib("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------
# Variants (each runs in its own child process)
# --------------------------------------------------------------------------------------


def _extras() -> Any:
    from tasks.features.catalog import crm_features, load_features_config

    return crm_features(load_features_config(CONFIG))


def run_product(data: Path, work: Path) -> dict[str, Any]:
    """The product as the pipeline runs it, minus the lake: views over the inputs, the staged query and
    DuckDB's own Parquet write (``write_features``)."""
    import duckdb

    from tasks.features.build import configure_connection, write_features

    extras = _extras()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    configure_connection(con)  # as build_features does
    for view in segdata.TABLES:
        con.read_parquet(segdata.files(data, view)).create_view(view)
    started = time.perf_counter()
    written = write_features(con, WINDOW, work / "product.parquet", extras)
    done = time.perf_counter()
    con.close()
    return {
        "seconds": done - started,
        "rows": written.rows,
        "columns": len(written.schema),
        "stages_s": written.seconds,
    }


def run_pandas(data: Path, work: Path) -> dict[str, Any]:
    extras = _extras()
    started = time.perf_counter()
    frame = all_features(data, WINDOW, extras)
    frame.to_parquet(work / "pandas.parquet", index=False)
    return {"seconds": time.perf_counter() - started, "rows": len(frame), "columns": len(frame.columns)}


def run_floor(data: Path, work: Path) -> dict[str, Any]:
    from bench.floor_features import run_floor as floor

    extras = _extras()
    started = time.perf_counter()
    floor(data, work / "floor.parquet", WINDOW, extras)
    return {"seconds": time.perf_counter() - started, "columns": len(all_columns(extras))}


def _mismatches(a: pd.Series, b: pd.Series) -> int:
    """Rows where two versions of a column differ (both empty counts as equal; numbers to 1e-9)."""
    both_empty = a.isna().to_numpy() & b.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
        x, y = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
        return int((~np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)).sum())
    if pd.api.types.is_datetime64_any_dtype(a) or pd.api.types.is_datetime64_any_dtype(b):
        a, b = pd.to_datetime(a), pd.to_datetime(b)  # a date and the same day as a timestamp are equal
    same = (a.astype(object) == b.astype(object)).fillna(False).to_numpy(dtype=bool)
    return int((~(same | both_empty)).sum())


def run_check(data: Path, work: Path) -> dict[str, Any]:
    """Assert that pandas and the floor (those that ran) compute the product's values in every column and row."""
    columns = all_columns(_extras())
    ran = [name for name in FEATURE_VARIANTS if (work / f"{name}.parquet").exists()]
    assert "product" in ran, "the product's features did not run"
    frames = {
        name: pd.read_parquet(work / f"{name}.parquet").sort_values("customer_key").reset_index(drop=True)
        for name in ran
    }
    product = frames["product"]
    assert list(product.columns) == columns, "the product's columns are not the catalog's"
    report: dict[str, dict[str, int]] = {}
    for name in (n for n in ran if n != "product"):
        other = frames[name]
        assert list(other.columns) == columns, f"{name}: columns differ from the product's"
        assert len(other) == len(product), f"{name}: {len(other)} rows, product {len(product)}"
        assert (other["customer_key"] == product["customer_key"]).all(), f"{name}: different customers"
        report[name] = {c: _mismatches(product[c], other[c]) for c in columns[1:]}
    bad = {name: {c: n for c, n in cols.items() if n} for name, cols in report.items()}
    assert not any(bad.values()), f"features differ from the product's (rows per column): {bad}"
    buyers = int((product["orders"] > 0).sum())
    return {"seconds": 0.0, "rows": len(product), "checked": sorted(report), "columns_checked": len(columns) - 1,
            "buyers": buyers}  # fmt: skip


def run_segments(data: Path, work: Path) -> dict[str, Any]:
    """``evaluate`` without the lake: the same loop over ``in_dependency_order`` and ``finalize``."""
    import ibis

    from tasks.segments.compile import Compiler
    from tasks.segments.evaluate import evaluate_all, finalize, load_segments

    segments = load_segments(CONFIG)
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    features = con.read_parquet(work / "product.parquet", table_name="features")
    purchases = con.read_parquet(segdata.files(data, "purchases"), table_name="purchases")
    events = con.read_parquet(segdata.files(data, segdata.UNIFIED_EVENTS), table_name="events")
    # unified/orders carries customer_key (tasks/unify/profiles.py); in this synthetic lake every id is
    # already its customer's key.
    con.raw_sql(
        "CREATE VIEW orders AS SELECT customer_id AS customer_key, * EXCLUDE (customer_id) "
        f"FROM read_parquet('{segdata.files(data, 'orders')}')"
    )
    stores = con.read_parquet(segdata.files(data, "stores"), table_name="stores")
    compiler = Compiler(
        features,
        purchases,
        WINDOW,
        orders=con.table("orders"),
        events=events,
        stores=stores,
        segments={s.name: s.rule for s in segments.segments},
    )
    started = time.perf_counter()
    evaluation = evaluate_all(compiler, features, segments)  # one query for all leaves, then numpy
    t3 = time.perf_counter()
    memberships = finalize(segments, evaluation)  # priority groups, splits, reasons
    done = time.perf_counter()
    memberships.to_parquet(work / "memberships.parquet", index=False)
    return {
        "seconds": done - started,
        "segments": len(segments.segments),
        "memberships": len(memberships),
        "evaluate_all_s": t3 - started,
        "finalize_s": done - t3,
    }


def previous_run(current: pd.DataFrame, share: float, seed: int = 7) -> pd.DataFrame:
    """``current`` with the customer key of ``share`` of its rows swapped for another one, so the diff
    finds that share "entered" (the current key) and as many "left" (the swapped-in key)."""
    rng = np.random.default_rng(seed)
    changed = rng.random(len(current)) < share
    previous = current.copy()
    previous.loc[changed, "customer_key"] = previous.loc[changed, "customer_key"] + "-before"
    return previous


def run_diff(data: Path, work: Path) -> dict[str, Any]:
    from tasks.segments.history import membership_changes

    current = pd.read_parquet(work / "memberships.parquet")
    previous = previous_run(current, CHANGED_SHARE)
    started = time.perf_counter()
    changes = membership_changes(current, previous)
    seconds = time.perf_counter() - started
    moved = changes["change"].value_counts()
    return {
        "seconds": seconds,
        "current": len(current),
        "previous": len(previous),
        "entered": int(moved.get("entered", 0)),
        "left": int(moved.get("left", 0)),
    }


RUNNERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "product": run_product,
    "pandas": run_pandas,
    "floor": run_floor,
    "check": run_check,
    "segments": run_segments,
    "diff": run_diff,
}


def child(variant: str, data: Path, work: Path) -> None:
    """Run one variant and print its result as the last line of stdout (JSON)."""
    baseline = _rss_mib()
    result = RUNNERS[variant](data, work)
    result |= {
        "variant": variant,
        "peak_rss_mib": _peak_mib(),
        "baseline_rss_mib": baseline,
    }
    print(json.dumps(result))


# --------------------------------------------------------------------------------------
# Parent: one size, every variant in a fresh process, one table
# --------------------------------------------------------------------------------------


def spawn(size: str, variant: str, data: Path, work: Path, timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.segments_bench", "--size", size, "--variant", variant]
    cmd += ["--data", str(data), "--work", str(work)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"variant": variant, "error": tail[0], "returncode": proc.returncode, "wall_s": wall}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def repeated(size: str, variant: str, data: Path, work: Path, timeout: float | None) -> dict[str, Any]:
    """``spawn`` once, or ``REPEATS[variant]`` times reporting the median run (every run's seconds in
    ``runs_s``). A stage of a few seconds moves by a second or more with the shared machine's load, and
    its target is absolute (the others are ratios of long stages), so one run says too little."""
    n = REPEATS.get(variant, 1)
    runs = [spawn(size, variant, data, work, timeout) for _ in range(n)]
    if n == 1 or any("error" in r for r in runs):
        return next((r for r in runs if "error" in r), runs[0])
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[n // 2])
    median["runs_s"] = [r["seconds"] for r in runs]
    median["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    return median


def warm_cache(data: Path) -> float:
    """Read every input file once so each variant finds them in the page cache, not only the first."""
    started = time.perf_counter()
    for path in sorted(data.rglob("*.parquet")):
        with path.open("rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - started


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def report(size: str, gen: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the table and the targets; return the JSON document."""
    secs = {v: r.get("seconds") for v, r in results.items() if "error" not in r}
    product, pandas_s, floor = secs.get("product"), secs.get("pandas"), secs.get("floor")
    speedup = pandas_s / product if product and pandas_s else None
    over_floor = product / floor if product and floor else None
    rows = gen["rows"]
    print(
        f"\nsize {size}: {rows['customers']:,} customers, {rows['purchases']:,} POS lines "
        f"({rows['orders']:,} orders), {rows['web_events']:,} web events; "
        f"generated in {gen['seconds']:.1f}s{' (cached)' if gen.get('cached') else ''}, "
        f"{gen['bytes'] / 2**20:,.0f} MiB Parquet"
    )
    print("pandas and the hand-written floor compute the same feature table as the product (check stage)\n")
    header = f"{'size':<5}{'stage':<34}{'seconds':>9}{'peak MiB':>10}{'pandas/product':>16}{'product/floor':>15}"
    print(header)
    print("-" * len(header))
    labels = {
        "product": f"features: product ({results.get('product', {}).get('columns', '?')} cols)",
        "pandas": "features: pandas (same table)",
        "floor": "features: DuckDB floor (same table)",
        "segments": f"segments ({results.get('segments', {}).get('segments', '?')} evaluated)",
        "diff": "membership diff (~5 % changed)",
    }
    for variant, label in labels.items():
        r = results.get(variant, {})
        if "error" in r:
            print(f"{size:<5}{label:<34}  FAILED: {r['error']}")
            continue
        ratio_p = _fmt(speedup, ".2f") + "x" if variant == "product" and speedup else ""
        ratio_f = _fmt(over_floor, ".2f") + "x" if variant == "product" and over_floor else ""
        print(
            f"{size:<5}{label:<34}{_fmt(r.get('seconds'), '.2f'):>9}{_fmt(r.get('peak_rss_mib'), ',.0f'):>10}"
            f"{ratio_p:>16}{ratio_f:>15}"
        )
    stages = results.get("product", {}).get("stages_s")
    if stages:
        parts = ", ".join(f"{k.removeprefix('features_')} {v:.1f}s" for k, v in stages.items())
        print(f"\nproduct feature stages: {parts}")
    seg = results.get("segments", {})
    if "error" not in seg and seg:
        print(
            f"\nsegments: {seg['memberships']:,} memberships; one query for all clauses + boolean algebra and "
            f"reasons {seg['evaluate_all_s']:.2f}s, finalize (priorities, splits, reasons) {seg['finalize_s']:.2f}s"
        )
    product_stages = [results.get(v, {}).get("peak_rss_mib") for v in ("product", "segments", "diff")]
    peak = max((p for p in product_stages if p is not None), default=None)
    checks = {
        "speed-up over pandas >= 4x": (speedup, speedup is not None and speedup >= TARGETS["speedup_vs_pandas"]),
        "product/floor <= 1.5x": (over_floor, over_floor is not None and over_floor <= TARGETS["over_floor"]),
        "peak memory < 3 GiB": (peak, peak is not None and peak < TARGETS["peak_mib"]),
        "50+ segments < 5 s": (
            seg.get("seconds"),
            seg.get("seconds") is not None
            and seg.get("segments", 0) >= TARGETS["segments_n"]
            and seg["seconds"] < TARGETS["segments_s"],
        ),
    }
    if "check" in results:
        check = results["check"]
        verdict = "FAILED: " + check["error"] if "error" in check else "equal"
        print(f"features, {' and '.join(check.get('checked', ['pandas', 'floor']))} vs product: {verdict}")
    print("\ntargets (issue 4, stated for size M):")
    for name, (value, ok) in checks.items():
        print(f"  {name:<30}{_fmt(value, '.2f'):>10}  {'met' if ok else 'NOT met'}")
    return {
        "size": size,
        "run_date": WINDOW.run_date.isoformat(),
        "cpus": os.cpu_count(),
        "data": gen,
        "results": results,
        "speedup_vs_pandas": speedup,
        "product_over_floor": over_floor,
        "peak_rss_mib_product_stages": peak,
        "targets": {name: {"value": value, "met": ok} for name, (value, ok) in checks.items()},
    }


def parent(size: str, variants: list[str], timeout: float | None, keep: bool) -> None:
    print(f"Segment-engine benchmark, size {size} (each stage in a fresh process; ratios from this run)", flush=True)
    data, gen = segdata.ensure(size)
    work = OUT / "work" / size
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    warm = warm_cache(data)
    made = "cached" if gen["cached"] else f"generated in {gen['seconds']:.1f}s"
    print(f"data ready ({made}); page cache warmed in {warm:.1f}s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for variant in variants:
            results[variant] = repeated(size, variant, data, work, timeout)
            r = results[variant]
            status = r.get("error") or f"{r['seconds']:.2f}s, peak {r['peak_rss_mib']:,.0f} MiB"
            runs = r.get("runs_s")
            print(f"  {variant:<9} {status}" + (f" (median of {', '.join(f'{x:.2f}' for x in runs)})" if runs else ""))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = report(size, gen, results)
    path = OUT / f"segments_{size}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nresults: {path}")


def main() -> None:
    os.environ.setdefault("AUDIENCES_CONFIG", str(CONFIG))  # the rule compiler's field catalog
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(segdata.SIZES), default="S")
    parser.add_argument("--variant", choices=VARIANTS, help="internal: run one stage in this process")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="stages to run (default: all)")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--timeout", type=float, help="seconds allowed per stage")
    parser.add_argument("--keep", action="store_true", help="keep the stage outputs under var/bench/work")
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.data, args.work)
    else:
        variants = args.only or list(VARIANTS)
        for stage, needed in NEEDS.items():
            if stage in variants and needed not in variants:
                parser.error(
                    f"the {stage} stage reads the {needed} stage's output from the same run: add {needed} to --only"
                )
        parent(args.size, variants, args.timeout, args.keep)


if __name__ == "__main__":
    main()

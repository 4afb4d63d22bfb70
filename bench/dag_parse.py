"""`python -m bench.dag_parse`: how long each DAG file takes to parse, measured the way Airflow's DAG
processor parses it.

Why: the DAG processor re-parses every file every `min_file_process_interval` (30 s by default) and
gives up on one after `dagbag_import_timeout`; a DAG file that imports pandas or reads config at
parse time slows every scheduler loop and every worker start. Airflow's guidance is to keep a file's
parse well under a second, so that is the target here.

How: the processor's parent has Airflow and the Airflow modules the file names already imported
(`parsing_pre_import_modules`), then forks a child that builds a DagBag of the one file and
serializes its DAGs. Each measurement here is a fresh subprocess that does the same — so the file's
own imports (the `tasks` package, anything heavy it pulls in) are counted every time, as in a
fresh child — repeated N times; the table shows medians.

Exit status: 1 when a file fails to import (or, with --strict, when a file misses the target).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
HEAVY = ("pandas", "duckdb", "great_expectations", "ibis", "pyarrow", "pyspark", "sklearn", "boto3")

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import importlib
from airflow.configuration import conf
from airflow.utils.file import iter_airflow_imports
path, bundle = sys.argv[1], sys.argv[2]
if conf.getboolean("dag_processor", "parsing_pre_import_modules", fallback=True):
    for module in iter_airflow_imports(path):
        try:
            importlib.import_module(module)
        except Exception:
            pass
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.serialization.serialized_objects import DagSerialization
heavy = [m for m in sys.argv[3].split(",") if m in sys.modules]
t1 = time.perf_counter()
bag = BundleDagBag(dag_folder=path, bundle_path=bundle, bundle_name="dags-folder", load_op_links=False)
t2 = time.perf_counter()
errors = dict(bag.import_errors)
for dag in bag.dags.values():
    try:
        DagSerialization.to_dict(dag)
    except Exception as exc:
        errors[dag.fileloc] = f"serialization: {type(exc).__name__}: {exc}"
t3 = time.perf_counter()
print(json.dumps({
    "airflow_s": t1 - t0,
    "parse_s": t2 - t1,
    "serialize_s": t3 - t2,
    "dags": len(bag.dags),
    "tasks": sum(len(d.tasks) for d in bag.dags.values()),
    "errors": {k: str(v) for k, v in errors.items()},
    "heavy": sorted(m for m in sys.argv[3].split(",") if m in sys.modules and m not in heavy),
}))
"""


def probe_env(work: Path) -> dict[str, str]:
    """A private Airflow home and working area: parsing must not need the user's, nor write to them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AUDIENCES_HOME"))}
    return env | {
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "AUDIENCES_HOME": str(work / "home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def dag_files(dags: Path, env: dict[str, str]) -> list[Path]:
    """The files the DAG processor would parse (Airflow's own listing: .airflowignore, safe mode)."""
    code = (
        "import sys\n"
        "from airflow.dag_processing.importers import get_importer_registry\n"
        "print('\\n'.join(get_importer_registry().list_dag_files(sys.argv[1], safe_mode=True)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(dags)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"could not list DAG files in {dags}:\n{proc.stderr[-2000:]}")
    return sorted(Path(line) for line in proc.stdout.splitlines() if line.strip())


def measure(path: Path, dags: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(dags), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"errors": {str(path): proc.stderr[-2000:]}, "process_s": wall}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dag_parse", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per file (median reported)")
    parser.add_argument("--dags", type=Path, default=ROOT / "dags", help="DAG folder (default: dags/)")
    parser.add_argument("--target", type=float, default=TARGET_S, help="seconds per file (default: 1.0)")
    parser.add_argument("--strict", action="store_true", help="also exit 1 when a file misses the target")
    args = parser.parse_args(argv)
    dags = args.dags.resolve()

    with tempfile.TemporaryDirectory(prefix="dag-parse-") as tmp:
        env = probe_env(Path(tmp))
        files = dag_files(dags, env)
        if not files:
            print(f"no DAG files in {dags}", file=sys.stderr)
            return 1
        runs = {path: [measure(path, dags, env) for _ in range(args.repeat)] for path in files}

    print(
        f"DAG parse time: median of {args.repeat} fresh processes per file, each parsing as the DAG processor's\n"
        f"child does (Airflow pre-imported; the file's own imports counted). Target: < {args.target:.1f} s per file.\n"
    )
    header = f"{'file':<32}{'dags':>5}{'tasks':>6}{'parse s':>9}{'serial. s':>10}{'total s':>9}"
    print(f"{header}{'target s':>9}{'ratio':>7}{'process s':>10}  heavy imports")
    failed, slow = False, False
    for path, results in runs.items():
        name = str(path.relative_to(dags))
        errors = {k: v for r in results for k, v in r.get("errors", {}).items()}
        if errors:
            failed = True
            print(f"{name:<32}  IMPORT ERROR")
            for where, text in errors.items():
                print(f"  {where}:\n    " + "\n    ".join(text.strip().splitlines()[-8:]))
            continue
        parse = statistics.median(r["parse_s"] for r in results)
        serialize = statistics.median(r["serialize_s"] for r in results)
        total = statistics.median(r["parse_s"] + r["serialize_s"] for r in results)
        process = statistics.median(r["process_s"] for r in results)
        heavy = sorted({m for r in results for m in r["heavy"]})
        ratio = total / args.target
        slow = slow or ratio >= 1
        print(
            f"{name:<32}{results[0]['dags']:>5}{results[0]['tasks']:>6}{parse:>9.3f}{serialize:>10.3f}{total:>9.3f}"
            f"{args.target:>9.1f}{ratio:>7.2f}{process:>10.2f}  {', '.join(heavy) or '-'}"
            + ("  <- over target" if ratio >= 1 else "")
        )
    print(
        "\nparse = DagBag import of the file; serial. = DAG serialization; total = parse + serial. (what the\n"
        "target applies to); process = the whole fresh interpreter incl. importing Airflow, for reference."
    )
    if failed:
        return 1
    return 1 if (slow and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())

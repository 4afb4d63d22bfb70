"""The engines a segment definition can run on: DuckDB embedded (default) or Spark for big lakes.

Segments are compiled once, by :class:`tasks.segments.compile.Compiler`, into Ibis expressions; this
module only decides *where* those expressions run. Keeping engine choice out of the compiler means
every rule kind added there runs on both engines without a second implementation, and the parity
test (tests/segments/test_engine_parity.py) proves the memberships agree.

Switching engine: set ``engine: spark`` in ``config/pipeline.yaml`` (default ``duckdb``). The Spark
engine uses, in order of preference:

1. the cluster named by ``AUDIENCES_SPARK_MASTER`` (e.g. ``spark://host:7077``, ``yarn``,
   ``k8s://https://...``), with ``AUDIENCES_SPARK_DRIVER_MEMORY`` (default ``1g``) for the driver;
2. a SparkSession already active in the process (spark-submit, Databricks, a notebook);
3. an embedded ``local[1]`` session bound to loopback, with the Spark UI off (Java 17+ required).

Both engines evaluate timestamps in UTC, the time zone the lake stores them in; business-day windows
arrive as absolute instants from :class:`tasks.settings.RunWindow`, so the session zone never shifts
a window boundary, but pinning it keeps any zone-dependent conversion identical on both engines.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import ibis
import ibis.expr.types as ir

from tasks.segments.compile import Compiler
from tasks.segments.rules import Segment, SegmentsConfig
from tasks.settings import RunWindow

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

Engine = Literal["duckdb", "spark"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
DEFAULT_ENGINE: Engine = "duckdb"

SPARK_MASTER_ENV = "AUDIENCES_SPARK_MASTER"
SPARK_DRIVER_MEMORY_ENV = "AUDIENCES_SPARK_DRIVER_MEMORY"
_LOCAL_MASTER = "local[1]"

PathLike = str | Path
Paths = PathLike | Sequence[PathLike]


def connect(engine: Engine, *, session: SparkSession | None = None) -> ibis.BaseBackend:
    """An Ibis backend for ``engine``, configured so both engines read the lake's instants in UTC.

    ``session`` lets a caller that already owns a SparkSession (a test module, a notebook) reuse it;
    starting a JVM costs seconds, so one session should serve many evaluations. ``disconnect()`` on
    the Spark backend stops the session.
    """
    if engine == "duckdb":
        con = ibis.duckdb.connect()
        con.raw_sql("SET TimeZone = 'UTC'")
        return con
    if engine == "spark":
        return ibis.pyspark.connect(session if session is not None else spark_session())
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def spark_session(master: str | None = None, app_name: str = "audiences-segments") -> SparkSession:
    """Start (or join) the SparkSession the Spark engine runs on.

    A cluster named in the environment wins, so operators can redirect a deployment without editing
    config; otherwise an active session is reused (spark-submit and notebooks create one before our
    code runs), and only as a last resort an embedded one is started. The embedded session binds to
    loopback and keeps the UI off: a pipeline worker must not open ports or reach the network.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - pyspark is a declared dependency
        raise RuntimeError("the Spark engine needs pyspark: install ibis-framework[pyspark]") from exc

    master = master or os.environ.get(SPARK_MASTER_ENV) or None
    if master is None:
        active = SparkSession.getActiveSession()
        if active is not None:
            log.info("spark engine: reusing the active SparkSession (%s)", active.sparkContext.master)
            return active
        master = _LOCAL_MASTER
    if master.startswith("local"):
        _require_java()
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get(SPARK_DRIVER_MEMORY_ENV, "1g"))
        .config("spark.ui.enabled", "false")
    )
    if master.startswith("local"):
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            # A single local core gains nothing from 200 shuffle partitions; it only pays for them.
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "4")
        )
    log.info("spark engine: starting a SparkSession on %s", master)
    return builder.getOrCreate()


def _require_java() -> None:
    """Fail with a readable message instead of py4j's "Java gateway process exited"."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise RuntimeError(
            "the Spark engine needs a Java runtime (17 or newer) on PATH or in JAVA_HOME; "
            "install one (e.g. apt-get install openjdk-17-jre-headless) or use engine: duckdb"
        )
    try:
        subprocess.run([java, "-version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"the Spark engine needs a working Java runtime; {java} -version failed: {exc}") from exc


def read_parquet(con: ibis.BaseBackend, paths: Paths) -> ir.Table:
    """One table over the given Parquet files, whichever backend ``con`` is.

    The lake hands over an explicit file list (the partition manifest), never a directory, because
    a directory may hold files of failed attempts. DuckDB scans a list natively; Ibis' PySpark
    ``read_parquet`` takes one path, so several files become a UNION ALL of one scan each.
    """
    files = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
    if not files:
        raise ValueError("no Parquet files to read")
    if con.name != "pyspark":
        return con.read_parquet(files if len(files) > 1 else files[0])
    tables = [con.read_parquet(f) for f in files]
    return tables[0] if len(tables) == 1 else ibis.union(*tables, distinct=False)


def evaluate_memberships(
    con: ibis.BaseBackend,
    features_path: Paths,
    purchases_path: Paths,
    window: RunWindow,
    segments: SegmentsConfig | Iterable[Segment],
    *,
    orders_path: Paths | None = None,
    events_path: Paths | None = None,
    stores_path: Paths | None = None,
) -> dict[str, set[str]]:
    """Raw members of every segment (before priority groups and splits), computed on ``con``'s engine.

    The same path as a pipeline run (``evaluate.evaluate_all``: every clause of every segment in one
    query, event clauses sharing their scans), so parity is proven for what runs. Priority groups and
    splits are applied afterwards in Python (``evaluate.finalize``), identically for every engine, so
    only this part needs parity. A rule that is NULL for a customer (missing value) leaves them out.
    Orders, web events and stores are optional here; rules that need a missing one fail when
    compiled. Sets, because engines guarantee no row order.
    """
    from tasks.segments.evaluate import evaluate_all  # evaluate imports this module

    segs = segments if isinstance(segments, SegmentsConfig) else SegmentsConfig(segments=list(segments))
    features = read_parquet(con, features_path)
    compiler = Compiler(
        features,
        read_parquet(con, purchases_path),
        window,
        orders=read_parquet(con, orders_path) if orders_path is not None else None,
        events=read_parquet(con, events_path) if events_path is not None else None,
        stores=read_parquet(con, stores_path) if stores_path is not None else None,
        segments={s.name: s.rule for s in segs.segments},
    )
    try:
        evaluation = evaluate_all(compiler, features, segs)
    except Exception as exc:
        # Engine errors quote generated SQL, not the rules; say which run failed.
        names = ", ".join(s.name for s in segs.segments)
        raise RuntimeError(f"segments could not be evaluated on {con.name} ({names}): {exc}") from exc
    out = {seg.name: set(evaluation.members(seg.name)) - {None} for seg in segs.segments}
    for name, members in out.items():
        log.info("segment %s on %s: %d members", name, con.name, len(members))
    return out

"""Evaluate every configured segment against the run's feature table."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config.loader import load_model
from tasks.features.build import FEATURE_SOURCE, FEATURE_TABLE
from tasks.lake import Lake
from tasks.segments import engines, explain, history
from tasks.segments.compile import Compiler
from tasks.segments.engines import Engine
from tasks.segments.rules import ClusterConfig, InSegment, Segment, SegmentsConfig
from tasks.settings import RunWindow
from tasks.unify.profiles import UNIFIED

log = logging.getLogger(__name__)

MEMBERSHIP_TABLE = "memberships"
MEMBERSHIP_COLUMNS = ["segment", "customer_key", "group"]


def load_segments(config_dir: Path) -> SegmentsConfig:
    return load_model(config_dir / "segments.yaml", SegmentsConfig)


@contextmanager
def engine(
    lake: Lake,
    window: RunWindow,
    segments: SegmentsConfig,
    stores: pd.DataFrame | None = None,
    backend: Engine = "duckdb",
) -> Iterator[tuple[Compiler, Any]]:
    """A compiler and the feature table for the run date, on the configured engine (embedded DuckDB
    by default; ``spark`` runs the same expressions on a Spark session, see segments/engines.py).

    ``stores`` (store_id, latitude, longitude) is only needed by ``near: {store: ...}`` rules. Web
    events are read from the unified zone when that partition exists; rules that need them fail
    otherwise rather than treating every customer as "never did it".
    """
    day = window.run_date
    con = engines.connect(backend)
    try:
        with tempfile.TemporaryDirectory(prefix="segments-") as tmp:
            features = engines.read_parquet(con, lake.local_files("features", FEATURE_SOURCE, FEATURE_TABLE, day))
            purchases = engines.read_parquet(con, lake.local_files("unified", UNIFIED, "purchases", day))
            events = None
            if lake.exists("unified", UNIFIED, "web_events", day):
                events = engines.read_parquet(con, lake.local_files("unified", UNIFIED, "web_events", day))
            store_table = None
            if stores is not None:
                # Parquet rather than an in-memory table: ibis 12 memtables emit SQL DuckDB 2.0 rejects.
                path = Path(tmp) / "stores.parquet"
                stores[["store_id", "latitude", "longitude"]].to_parquet(path)
                store_table = engines.read_parquet(con, [path])
            compiler = Compiler(
                features,
                purchases,
                window,
                events=events,
                stores=store_table,
                segments={s.name: s.rule for s in segments.segments},
            )
            yield compiler, features
    finally:
        con.disconnect()


def evaluate(
    lake: Lake,
    window: RunWindow,
    segments: SegmentsConfig,
    stores: pd.DataFrame | None = None,
    backend: Engine = "duckdb",
) -> dict[str, int]:
    """Write memberships (segment, customer_key, group, reasons) for the run date, and the run's
    entered/left changes and sizes; returns members per segment."""
    day = window.run_date
    with engine(lake, window, segments, stores, backend) as (compiler, features):
        raw, reasons = evaluate_all(compiler, features, segments)
    memberships = finalize(segments, raw)
    memberships = attach_reasons(memberships, reasons)
    names = [s.name for s in segments.segments]
    if segments.clusters is not None:
        clustered = cluster_memberships(lake.read("features", FEATURE_SOURCE, FEATURE_TABLE, day), segments.clusters)
        memberships = pd.concat([memberships, clustered], ignore_index=True)
        names += list(dict.fromkeys(clustered["segment"]))
    for seg in segments.segments:
        log.info("segment %s: %d members", seg.name, int((memberships["segment"] == seg.name).sum()))
    lake.write("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, day, memberships)
    history.record(lake, day, memberships, names)
    return {name: int((memberships["segment"] == name).sum()) for name in names}


def evaluate_all(
    compiler: Compiler, features: Any, segments: SegmentsConfig
) -> tuple[dict[str, list[str]], dict[str, pd.Series]]:
    """Every segment's members and their deciding clauses, from ONE engine query.

    Each distinct leaf clause of all segments becomes one boolean column of a single query over the
    feature table (an order-of-magnitude fewer scans than a query per segment); the all/any/not
    structure, ``in_segment`` references (the other segment's rule outcome) and the explanations are
    then evaluated on those columns with vectorised boolean algebra.
    """
    ordered = segments.in_dependency_order()
    columns: dict[str, Any] = {}
    column_of: dict[str, str] = {}
    for seg in ordered:
        for leaf in explain.leaves(seg.rule):
            if isinstance(leaf.node, InSegment):
                continue
            node: Any = leaf.node
            key = node.model_dump_json()
            if key not in column_of:
                column_of[key] = f"leaf_{len(column_of)}"
                columns[column_of[key]] = compiler.compile(node).fill_null(False)
    table = features.select(features.customer_key, **columns).to_pandas()
    keys = table["customer_key"].astype(str).to_numpy()
    values = {name: table[name].fillna(False).to_numpy(dtype=bool) for name in columns}
    outcome: dict[str, np.ndarray] = {}
    raw: dict[str, list[str]] = {}
    reasons: dict[str, pd.Series] = {}
    for seg in ordered:
        arrays = {
            leaf.path: outcome[leaf.node.in_segment]
            if isinstance(leaf.node, InSegment)
            else values[column_of[leaf.node.model_dump_json()]]
            for leaf in explain.leaves(seg.rule)
        }
        hit = explain.value(seg.rule, arrays)
        outcome[seg.name] = hit
        members = {path: a[hit] for path, a in arrays.items()}
        text = explain.deciding_text(seg.rule, members, int(hit.sum()))
        raw[seg.name] = sorted(keys[hit].tolist())
        reasons[seg.name] = pd.Series(text, index=keys[hit])
    return raw, reasons


def cluster_memberships(features: pd.DataFrame, cfg: ClusterConfig) -> pd.DataFrame:
    """One segment per k-means cluster; the reason column carries the cluster's readable profile."""
    from tasks.segments.clusters import cluster_customers

    result = cluster_customers(features, cfg.columns, k_range=range(2, cfg.max_clusters + 1), seed=cfg.seed)
    names = result.names()
    frame = pd.DataFrame(
        {
            "segment": [f"{cfg.prefix}{'none' if c < 0 else c}" for c in result.assignments],
            "customer_key": result.assignments.index.astype(str),
            "group": None,
            "reasons": [names.get(int(c), "") for c in result.assignments],
        }
    )
    log.info("clusters: k=%d chosen by silhouette (%s)", result.k, ", ".join(f"{n}" for n in names.values()))
    return frame.sort_values(["segment", "customer_key"]).astype("string").reset_index(drop=True)


def attach_reasons(memberships: pd.DataFrame, reasons: dict[str, pd.Series]) -> pd.DataFrame:
    """Add each member's deciding clauses (``reasons[segment]`` is indexed by customer_key).

    A lookup per segment rather than a merge on (segment, customer_key) of two string tables: the same
    result (members without a reason get ""), several times faster at a million memberships. Reasons
    indexed by a customer more than once (which a merge would multiply) take the merge.
    """
    index = {name: r.index.astype(str) for name, r in reasons.items()}
    if any(not i.is_unique for i in index.values()):
        return _merge_reasons(memberships, reasons)
    keys = pa.array(memberships["customer_key"].array, pa.large_string())
    at = np.full(len(memberships), -1, dtype=np.int64)  # row of every member's reason in ``texts``
    texts: list[pa.Array] = []
    offset = 0
    for name, pos in memberships.groupby("segment", sort=False, observed=True).indices.items():
        why = reasons.get(str(name))
        if why is None or why.empty:
            continue
        found = pc.index_in(keys.take(pa.array(pos)), value_set=pa.array(index[str(name)], pa.large_string()))
        rows = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        at[pos] = np.where(rows >= 0, rows + offset, -1)
        texts.append(pa.array(why.to_numpy(dtype=object), pa.large_string(), from_pandas=True))
        offset += len(why)
    if texts:
        text = pa.concat_arrays(texts).take(pa.array(at, mask=at < 0)).fill_null("")
    else:
        text = pa.array([""] * len(memberships), pa.large_string())
    out = memberships.reset_index(drop=True)
    out["reasons"] = pd.array(text, dtype="string")
    return out


def _merge_reasons(memberships: pd.DataFrame, reasons: dict[str, pd.Series]) -> pd.DataFrame:
    why = pd.concat(
        [
            pd.DataFrame({"segment": n, "customer_key": r.index.astype(str), "reasons": r.to_numpy()})
            for n, r in reasons.items()
        ],
        ignore_index=True,
    ).astype("string")
    out = memberships.merge(why, on=["segment", "customer_key"], how="left")
    out["reasons"] = out["reasons"].fillna("")
    return out


def resolve_priorities(segments: SegmentsConfig, members: dict[str, list[str]]) -> dict[str, list[str]]:
    """Keep each customer only in the highest-priority (lowest number) segment of each priority group."""
    out = dict(members)
    groups: dict[str, list[Segment]] = {}
    for seg in segments.segments:
        if seg.priority_group is not None:
            groups.setdefault(seg.priority_group.name, []).append(seg)
    for group in groups.values():
        taken: set[str] = set()
        for seg in sorted(group, key=lambda s: s.priority_group.priority if s.priority_group else 0):
            out[seg.name] = [k for k in members.get(seg.name, []) if k not in taken]
            taken.update(out[seg.name])
    return out


def finalize(segments: SegmentsConfig, members: dict[str, list[str]]) -> pd.DataFrame:
    """Memberships after priority groups and splits, in config order; ``group`` is empty without a split.

    The column is always present so the table keeps one schema whether or not any segment splits.
    """
    kept = resolve_priorities(segments, members)
    if not segments.segments:
        return pd.DataFrame(columns=MEMBERSHIP_COLUMNS).astype(dict.fromkeys(MEMBERSHIP_COLUMNS, "string"))
    # Columns built as whole Arrow arrays, converted once: not a frame per segment, concatenated and
    # cast to strings, which at millions of memberships costs more than everything else here.
    counts, keys, groups = [], [], []
    for seg in segments.segments:
        seg_keys = sorted(kept.get(seg.name, []))
        counts.append(len(seg_keys))
        keys.extend(seg_keys)
        if seg.split:  # hashing only for splits
            groups.append(pa.array([seg.split.group_of(k) for k in seg_keys], pa.large_string()))
        else:
            groups.append(pa.nulls(len(seg_keys), pa.large_string()))
    names = pa.array([seg.name for seg in segments.segments], pa.large_string())
    which = pa.array(np.repeat(np.arange(len(counts), dtype=np.int32), counts))
    return pd.DataFrame(
        {
            "segment": pd.array(pa.DictionaryArray.from_arrays(which, names).dictionary_decode(), dtype="string"),
            "customer_key": pd.array(pa.array(keys, pa.large_string()), dtype="string"),
            "group": pd.array(pa.concat_arrays(groups), dtype="string"),
        }
    )

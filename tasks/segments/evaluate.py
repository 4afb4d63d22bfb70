"""Evaluate every configured segment against the run's feature table."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import union_categoricals

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
# Arrow-backed strings: the membership columns come from Arrow and go to Parquet, so no Python objects.
STRING = pd.StringDtype("pyarrow")
# Columns with a handful of distinct values over millions of rows: categorical (a small code per row).
# At a million customers the 12M memberships took 1.35 GiB as strings, 731 MiB of it 64 distinct reasons.
CATEGORICAL = ("segment", "group", "reasons")


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
            orders = engines.read_parquet(con, lake.local_files("unified", UNIFIED, "orders", day))
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
                orders=orders,
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
        evaluation = evaluate_all(compiler, features, segments)
    memberships = finalize(segments, evaluation)
    names = [s.name for s in segments.segments]
    if segments.clusters is not None:
        clustered = cluster_memberships(lake.read("features", FEATURE_SOURCE, FEATURE_TABLE, day), segments.clusters)
        memberships = concat_memberships([memberships, clustered])
        names += list(dict.fromkeys(clustered["segment"]))
    for seg in segments.segments:
        log.info("segment %s: %d members", seg.name, int((memberships["segment"] == seg.name).sum()))
    lake.write("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, day, memberships)
    history.record(lake, day, memberships, names)
    return {name: int((memberships["segment"] == name).sum()) for name in names}


@dataclass(frozen=True)
class Evaluation:
    """Every segment's outcome over one list of customers, before priority groups and splits.

    Outcomes are boolean masks over ``keys`` (sorted, unique) rather than lists of keys: a run at a
    million customers has millions of memberships, and masks make priority groups, sorting and the
    membership table array operations instead of per-key Python work. ``reasons[segment]`` is a code
    per member (in key order) and the text of each code.
    """

    keys: pa.Array
    hits: dict[str, np.ndarray]
    reasons: dict[str, tuple[np.ndarray, list[str]]]

    def keys_at(self, at: np.ndarray) -> pa.Array:
        """The keys at positions ``at``, as a plain string array.

        Decoded from a dictionary array over ``keys`` rather than with ``take``: for the 12M memberships
        of a million customers Arrow's string ``take`` cost 0.6 to 0.8 s, the decode 0.1 s, the same values.
        """
        return pa.DictionaryArray.from_arrays(pa.array(at), self.keys).cast(self.keys.type)

    @classmethod
    def of(cls, members: dict[str, list[str]]) -> Evaluation:
        """From member lists (without reasons), e.g. segments computed elsewhere."""
        keys = np.array(sorted({k for ks in members.values() for k in ks}), dtype=object)
        hits = {name: np.isin(keys, np.array(ks, dtype=object)) for name, ks in members.items()}
        reasons = {name: (np.zeros(int(h.sum()), dtype=np.int64), [""]) for name, h in hits.items()}
        return cls(pa.array(keys, pa.large_string()), hits, reasons)

    def members(self, segment: str) -> list[str]:
        return self.keys.filter(pa.array(self.hits[segment])).to_pylist()


def evaluate_all(compiler: Compiler, features: Any, segments: SegmentsConfig) -> Evaluation:
    """Every segment's members and their deciding clauses, from ONE engine query.

    Each distinct leaf clause of all segments becomes one boolean column of a single query over the
    feature table (an order-of-magnitude fewer scans than a query per segment); the all/any/not
    structure, ``in_segment`` references (the other segment's rule outcome) and the explanations are
    then evaluated on those columns with vectorised boolean algebra.
    """
    ordered = segments.in_dependency_order()
    nodes: dict[str, Any] = {}
    column_of: dict[str, str] = {}
    for seg in ordered:
        for leaf in explain.leaves(seg.rule):
            if isinstance(leaf.node, InSegment):
                continue
            key = leaf.node.model_dump_json()
            if key not in column_of:
                column_of[key] = f"leaf_{len(column_of)}"
                nodes[column_of[key]] = leaf.node
    columns = compiler.compile_many(nodes)
    query = features.select(features.customer_key, **{n: c.fill_null(False) for n, c in columns.items()})
    table = query.order_by("customer_key").to_pyarrow()
    keys = table.column("customer_key").combine_chunks().cast(pa.large_string())
    values = {name: table.column(name).fill_null(False).to_numpy().astype(bool, copy=False) for name in columns}
    outcome: dict[str, np.ndarray] = {}
    reasons: dict[str, tuple[np.ndarray, list[str]]] = {}
    for seg in ordered:
        arrays = {
            leaf.path: outcome[leaf.node.in_segment]
            if isinstance(leaf.node, InSegment)
            else values[column_of[leaf.node.model_dump_json()]]
            for leaf in explain.leaves(seg.rule)
        }
        hit = explain.value(seg.rule, arrays)
        outcome[seg.name] = hit
        at = np.flatnonzero(hit)  # taking members by index costs their number, a mask the whole table
        members = {path: a.take(at) for path, a in arrays.items()}
        reasons[seg.name] = explain.deciding_codes(seg.rule, members, len(at))
    return Evaluation(keys, outcome, reasons)


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
    frame = frame.sort_values(["segment", "customer_key"]).reset_index(drop=True)
    return pd.DataFrame({c: _text_categorical(v) if c in CATEGORICAL else v.astype(STRING) for c, v in frame.items()})


def _text_categorical(values: Any) -> pd.Categorical:
    """Categorical with text categories of one dtype (STRING), whatever the values were, so any two
    membership tables' columns can be combined."""
    cat = pd.Categorical(values)
    return pd.Categorical.from_codes(cat.codes, pd.Index(cat.categories, dtype=STRING))


def concat_memberships(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Membership tables one after the other, categorical columns staying categorical (``pd.concat`` turns
    categoricals with different categories into objects, one Python string per row)."""
    out = {}
    for col in frames[0].columns:
        parts = [f[col] for f in frames]
        if col in CATEGORICAL:
            out[col] = pd.Series(union_categoricals([_text_categorical(p) for p in parts]))
        else:
            out[col] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(out)


def resolve_priorities(segments: SegmentsConfig, hits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep each customer only in the highest-priority (lowest number) segment of each priority group."""
    out = dict(hits)
    groups: dict[str, list[Segment]] = {}
    for seg in segments.segments:
        if seg.priority_group is not None:
            groups.setdefault(seg.priority_group.name, []).append(seg)
    for group in groups.values():
        taken: np.ndarray | None = None
        for seg in sorted(group, key=lambda s: s.priority_group.priority if s.priority_group else 0):
            if seg.name not in hits:
                continue
            out[seg.name] = hits[seg.name] if taken is None else hits[seg.name] & ~taken
            taken = out[seg.name] if taken is None else taken | out[seg.name]
    return out


def finalize(segments: SegmentsConfig, evaluation: Evaluation) -> pd.DataFrame:
    """Memberships (segment, customer_key, group, reasons) after priority groups and splits, in config
    order and by customer key; ``group`` is empty without a split, ``reasons`` names the deciding clauses.

    The columns are always present so the table keeps one schema whether or not any segment splits.
    Built as whole Arrow arrays (keys taken by index, reasons decoded from per-segment codes), not a
    frame per segment concatenated and merged, which at millions of memberships cost more than the
    segment query itself.
    """
    kept = resolve_priorities(segments, evaluation.hits)
    columns = [*MEMBERSHIP_COLUMNS, "reasons"]
    if not segments.segments:
        return pd.DataFrame(
            {c: _text_categorical([]) if c in CATEGORICAL else pd.array([], dtype=STRING) for c in columns}
        )
    # Every column is written into one preallocated array of the narrowest integer type: at 12M memberships
    # each array of int64 is 100 MB whose first touch alone (page faults) cost about 0.1 s.
    counts = [0 if kept.get(seg.name) is None else int(np.count_nonzero(kept[seg.name])) for seg in segments.segments]
    total = sum(counts)
    taken = np.empty(total, dtype=explain.code_type(len(evaluation.keys)))
    most_groups = sum(len(seg.split.groups) for seg in segments.segments if seg.split)
    group_codes = np.full(total, -1, dtype=explain.code_type(most_groups))  # -1: no group
    texts: list[str] = []
    most_texts = sum(len(evaluation.reasons[seg.name][1]) for seg in segments.segments if seg.name in kept)
    reason_codes = np.empty(total, dtype=explain.code_type(most_texts))
    group_names: dict[str, int] = {}  # group -> category code
    start = 0
    for seg, count in zip(segments.segments, counts, strict=True):
        hit = kept.get(seg.name)
        if hit is None:
            continue
        at = np.flatnonzero(hit)
        rows = slice(start, start + count)
        taken[rows] = at
        if seg.split:  # hashing only for splits
            index = seg.split.group_indices(evaluation.keys_at(at))
            names = list(seg.split.groups)
            codes_of = np.full(len(names), -1, dtype=group_codes.dtype)
            for i in np.unique(index):  # only groups someone is in become categories
                codes_of[i] = group_names.setdefault(names[i], len(group_names))
            group_codes[rows] = codes_of[index]
        seg_codes, seg_texts = evaluation.reasons[seg.name]
        original = evaluation.hits[seg.name]
        reason_codes[rows] = seg_codes[hit[original]]  # members a priority group took away drop out
        reason_codes[rows] += len(texts)
        texts.extend(seg_texts)
        start += count
    # equal texts of different segments become one category
    text_codes, unique_texts = pd.factorize(pd.Series(texts or [""], dtype=object))
    return pd.DataFrame(
        {
            "segment": pd.Categorical.from_codes(
                np.repeat(np.arange(len(counts), dtype=explain.code_type(len(counts))), counts),
                pd.Index([seg.name for seg in segments.segments], dtype=STRING),
            ),
            "customer_key": pd.array(evaluation.keys_at(taken), dtype=STRING),
            "group": pd.Categorical.from_codes(group_codes, pd.Index(list(group_names), dtype=STRING)),
            "reasons": pd.Categorical.from_codes(
                text_codes.astype(explain.code_type(len(unique_texts)))[reason_codes],
                pd.Index(unique_texts, dtype=STRING),
            ),
        }
    )

"""Evaluate every configured segment against the run's feature table."""

from __future__ import annotations

import logging
from pathlib import Path

import ibis
import pandas as pd

from tasks.config.loader import load_model
from tasks.features.build import FEATURE_SOURCE, FEATURE_TABLE
from tasks.lake import Lake
from tasks.segments.compile import Compiler
from tasks.segments.rules import SegmentsConfig
from tasks.settings import RunWindow
from tasks.unify.profiles import UNIFIED

log = logging.getLogger(__name__)

MEMBERSHIP_TABLE = "memberships"


def load_segments(config_dir: Path) -> SegmentsConfig:
    return load_model(config_dir / "segments.yaml", SegmentsConfig)


def evaluate(lake: Lake, window: RunWindow, segments: SegmentsConfig) -> dict[str, int]:
    day = window.run_date
    con = ibis.duckdb.connect()
    try:
        con.raw_sql("SET TimeZone = 'UTC'")
        features = con.read_parquet(lake.local_files("features", FEATURE_SOURCE, FEATURE_TABLE, day))
        purchases = con.read_parquet(lake.local_files("unified", UNIFIED, "purchases", day))
        compiler = Compiler(features, purchases, window)
        parts = []
        for seg in segments.segments:
            expr = compiler.compile(seg.rule).fill_null(False)
            keys = features.filter(expr).select("customer_key").order_by("customer_key").to_pandas()
            keys.insert(0, "segment", seg.name)
            parts.append(keys)
            log.info("segment %s: %d members", seg.name, len(keys))
    finally:
        con.disconnect()
    memberships = pd.concat(parts, ignore_index=True)
    lake.write("segments", FEATURE_SOURCE, MEMBERSHIP_TABLE, day, memberships)
    return {seg.name: int((memberships["segment"] == seg.name).sum()) for seg in segments.segments}

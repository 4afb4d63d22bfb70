"""The stage functions the DAG calls, run in-process: config alone changes what marketers receive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tasks import pipeline

RUN = "2026-11-24"
RunStages = Callable[..., dict[str, Any]]


def members(home: Path, segment: str) -> set[str]:
    path = home / "outbox" / RUN / f"{segment}.csv"
    return set(pd.read_csv(path, encoding="utf-8-sig", dtype=str)["customer_key"])


def test_changing_a_threshold_in_yaml_changes_the_audience(sample_home: Path, run_stages: RunStages) -> None:
    segments = run_stages(RUN)["segments"]
    assert "repeat_buyers" in segments
    pipeline.deliver("repeat_buyers", RUN)
    three_plus = members(sample_home, "repeat_buyers")

    config = sample_home / "config" / "segments.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    for seg in doc["segments"]:
        if seg["name"] == "repeat_buyers":
            seg["rule"]["value"] = 5
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")

    pipeline.segments(RUN)
    pipeline.deliver("repeat_buyers", RUN)
    five_plus = members(sample_home, "repeat_buyers")

    features = pd.read_parquet(sample_home / "lake" / "features" / "source=audiences" / "table=customer_features")
    assert five_plus == set(features.loc[features["orders"] >= 5, "customer_key"])
    assert five_plus < three_plus, "raising the threshold must shrink the audience"


def test_summary_counts_loaded_and_quarantined_rows(sample_home: Path, run_stages: RunStages) -> None:
    done = run_stages(RUN, until="features")
    summary = pipeline.summarize(RUN, done["extracts"], done["reports"], [])
    by_table = {t["table"]: t for t in summary["tables"]}
    assert by_table["orders"]["quarantined"] == 9
    assert by_table["orders"]["loaded"] + 9 == by_table["orders"]["rows"]
    assert by_table["contacts"]["reasons"] == {"contacts.email_well_formed": 3}
    assert (
        sample_home / "lake" / "runs" / "source=audiences" / "table=summary" / f"dt={RUN}" / "summary.json"
    ).is_file()


def test_sources_must_cover_every_canonical_table(home: Path) -> None:
    config = home / "config" / "sources.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    del doc["sources"]["web"]
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="no source provides table\\(s\\) web_events") as exc:
        pipeline.source_tables()
    assert str(config) in str(exc.value)


def test_survey_file_answers_feed_nps_features(sample_home: Path, small_sample: object, run_stages: RunStages) -> None:
    from tasks.sample import SampleData

    assert isinstance(small_sample, SampleData)
    run_stages(RUN)
    features = pd.read_parquet(sample_home / "lake" / "features" / "source=audiences" / "table=customer_features")
    answers = small_sample.survey_responses
    bad_rows = {r.row for r in small_sample.injected if r.table == "survey_responses"}
    good = answers[~answers["_row"].isin(bad_rows)].copy()
    good["nps"] = pd.to_numeric(good["nps_score"], errors="coerce")
    expected = good.dropna(subset=["nps"]).groupby("customer_id")["nps"].mean()
    got = features.set_index("customer_id").loc[expected.index, "nps_avg"]
    assert len(expected) > 10
    assert (got - expected).abs().max() < 1e-9
    latest = good.dropna(subset=["nps"]).sort_values("answered_at").groupby("customer_id")["nps"].last()
    assert (features.set_index("customer_id").loc[latest.index, "nps_latest"] == latest).all()


def test_preview_and_explain_answer_from_the_stored_features(sample_home: Path, run_stages: RunStages) -> None:
    run_stages(RUN)
    features = pd.read_parquet(sample_home / "lake" / "features" / "source=audiences" / "table=customer_features")
    repeat = set(features.loc[features["orders"] >= 3, "customer_key"])
    shown = pipeline.preview_segment("repeat_buyers", RUN)
    assert shown.size == len(repeat)
    assert set(shown.sample["customer_key"]) <= repeat
    assert (shown.sample["reasons"] == "orders ≥ 3").all()
    assert shown.overlap["big_spenders"] > 0
    member = sorted(repeat)[0]
    why = pipeline.explain_membership(member, "repeat_buyers", None)
    assert why.member and why.deciding == "orders ≥ 3" and why.clauses == [("orders ≥ 3", True)]
    outsider = sorted(set(features["customer_key"]) - repeat)[0]
    assert not pipeline.explain_membership(outsider, "repeat_buyers", RUN).member
    with pytest.raises(KeyError, match="not in the feature table"):
        pipeline.explain_membership("NOBODY", "repeat_buyers", RUN)


def test_clusters_become_segments_with_readable_names(sample_home: Path, run_stages: RunStages) -> None:
    run_stages(RUN)
    members = pd.read_parquet(sample_home / "lake" / "segments" / "source=audiences" / "table=memberships")
    clusters = members[members["segment"].str.startswith("cluster_")]
    features = pd.read_parquet(sample_home / "lake" / "features" / "source=audiences" / "table=customer_features")
    assert set(clusters["customer_key"]) == set(features["customer_key"]), "every customer is in one cluster"
    assert clusters["customer_key"].is_unique
    non_buyers = set(features.loc[features["orders"] == 0, "customer_key"])
    assert set(clusters.loc[clusters["segment"] == "cluster_none", "customer_key"]) == non_buyers
    named = clusters[clusters["segment"] != "cluster_none"]
    assert named["segment"].nunique() >= 2 and named["reasons"].str.len().gt(0).all()
    sizes = pd.read_parquet(sample_home / "lake" / "segments" / "source=audiences" / "table=sizes")
    assert set(named["segment"]) <= set(sizes["segment"])


def test_scheduled_runs_answer_for_the_day_before_their_trigger_time(home: Path) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    at_midnight = datetime(2026, 11, 25, 0, 0, tzinfo=tz)
    half_past = datetime(2026, 11, 25, 0, 30, tzinfo=tz)  # a source that lands later (web, 00:30)
    assert pipeline.run_date_for(at_midnight, "Asia/Ho_Chi_Minh", scheduled=True) == "2026-11-24"
    assert pipeline.run_date_for(half_past, "Asia/Ho_Chi_Minh", scheduled=True) == "2026-11-24"
    assert pipeline.run_date_for(at_midnight, "Asia/Ho_Chi_Minh") == "2026-11-24"
    assert pipeline.run_date_for(half_past, "Asia/Ho_Chi_Minh") == "2026-11-25", "a manual run answers for today"
    with pytest.raises(ValueError, match="AUDIENCES_TIMEZONE"):
        pipeline.run_date_for(at_midnight, "UTC")


def test_segments_run_date_comes_from_conf_or_the_sources_assets() -> None:
    assert pipeline.segment_run_date("2026-11-20", ["2026-11-24"]) == "2026-11-20"
    assert pipeline.segment_run_date(None, ["2026-11-23", "2026-11-24", "2026-11-24"]) == "2026-11-24"
    with pytest.raises(ValueError, match="run_date"):
        pipeline.segment_run_date(None, [])

"""The whole stage chain on an S3 lake (loopback S3 server): the code does not care where the lake is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import yaml

from tasks import pipeline

RUN = "2026-11-24"


def test_stages_run_on_an_s3_lake(
    sample_home: Path, s3_bucket: str, s3_endpoint: str, run_stages: Callable[..., dict[str, Any]]
) -> None:
    config = sample_home / "config" / "pipeline.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["lake_root"] = f"s3://{s3_bucket}/lake"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")

    done = run_stages(RUN)
    delivered = [pipeline.deliver(s, RUN) for s in done["segments"]]
    summary = pipeline.summarize(RUN, done["extracts"], done["reports"], delivered)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [
        o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket) for o in page["Contents"]
    ]
    assert not (sample_home / "lake").exists(), "nothing may be written to the local lake folder"
    for zone in ("raw", "clean", "quarantine", "features", "segments"):
        assert any(k.startswith(f"lake/{zone}/") and k.endswith("_manifest.json") for k in keys), zone
    assert f"lake/runs/source=audiences/table=summary/dt={RUN}/summary.json" in keys
    assert summary["quality_report"].startswith(f"s3://{s3_bucket}/lake/runs/")
    members = pd.read_csv(sample_home / "outbox" / RUN / "repeat_buyers.csv", encoding="utf-8-sig")
    assert len(members) > 0
    assert date.fromisoformat(summary["run_date"]) == date(2026, 11, 24)

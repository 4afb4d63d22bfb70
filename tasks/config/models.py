"""Typed models of pipeline.yaml, sources.yaml and destinations.yaml."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks import settings
from tasks.config.loader import load_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(Strict):
    business_timezone: str = "Asia/Ho_Chi_Minh"
    lake_root: str = "lake"
    quarantine_alert_share: float = Field(0.02, ge=0, le=1)
    # Segment engine: the embedded DuckDB, or Spark (AUDIENCES_SPARK_MASTER) for data beyond one machine.
    engine: Literal["duckdb", "spark"] = "duckdb"

    @field_validator("business_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Asia/Ho_Chi_Minh") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)


class SourceConfig(Strict):
    """One configured source; ``kind`` picks the registered class, ``options`` are its settings."""

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    # When its ingestion DAG runs (cron, business time zone); the segments DAG waits for every source.
    schedule: str = Field(default="0 0 * * *", pattern=r"^\S+( \S+){4}$")


class SourcesConfig(Strict):
    sources: dict[str, SourceConfig]


class SyncPolicy(Strict):
    """How an audience platform sync may change what the platform holds (the ``sync:`` block)."""

    mode: Literal["diff", "replace"] = "diff"  # replace: full replacement (Meta usersreplace) when asked
    # A plan removing more than this share of the audience is held for approval instead of applied.
    max_remove_share: float = Field(default=0.2, ge=0, le=1)
    hold_on_empty: bool = True  # an empty segment never silently empties a live audience
    dry_run: bool = False  # plan only: write the plan and send nothing
    # The consent a member must have; default is the platform's (email_marketing, ad_personalization).
    purpose: Literal["email_marketing", "sms_marketing", "ad_personalization", "none"] | None = None


class DestinationConfig(Strict):
    kind: str
    segments: list[str] | Literal["all"] = "all"
    options: dict[str, Any] = Field(default_factory=dict)
    sync: SyncPolicy = SyncPolicy()
    enabled: bool = True


class DestinationsConfig(Strict):
    destinations: dict[str, DestinationConfig]


class AppConfig:
    """All config files of one config folder, loaded lazily so a task reads only what it needs."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or settings.config_dir()

    @cached_property
    def pipeline(self) -> PipelineConfig:
        """pipeline.yaml, with ``AUDIENCES_LAKE`` (e.g. s3://lake/audiences in docker-compose) overriding lake_root."""
        cfg = load_model(self.directory / "pipeline.yaml", PipelineConfig)
        lake = os.environ.get("AUDIENCES_LAKE", "").strip()
        return cfg.model_copy(update={"lake_root": lake}) if lake else cfg

    @cached_property
    def sources(self) -> SourcesConfig:
        return load_model(self.directory / "sources.yaml", SourcesConfig)

    @cached_property
    def destinations(self) -> DestinationsConfig:
        return load_model(self.directory / "destinations.yaml", DestinationsConfig)

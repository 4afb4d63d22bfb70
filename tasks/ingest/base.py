"""The source protocol and its registry.

A source maps one external system onto canonical tables. It declares its typed options (validated
against sources.yaml with messages that name the key) and yields one frame per canonical table,
each row tagged with ``_source``/``_row`` so a bad row can be traced to its file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict

from tasks.config.models import SourceConfig
from tasks.lake import Mode
from tasks.registry import Registry
from tasks.settings import RunWindow
from tasks.state.store import StateStore


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ExtractContext:
    """What a source may know about the run: the business day, and state kept between runs."""

    window: RunWindow
    state: StateStore
    # True when the lake holds no snapshot of this table before the run date: the partition written
    # now is the base of the table's state, so an incremental source must read it whole.
    needs_snapshot: bool = False


@dataclass
class Extract:
    """One canonical table as read from a source, plus rows that could not even be parsed.

    ``mode`` says whether ``frame`` is the whole table (snapshot) or only what changed (increment).
    ``on_commit`` callbacks (advance a watermark, record processed files) run only after the raw
    partition is durably written, so a crash in between re-reads the data instead of losing it.
    """

    frame: pd.DataFrame
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {_source, _row, _raw, _reason}
    mode: Mode = "snapshot"
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported in the run summary (no personal data)
    # For increments read with a lookback: rows whose values in these columns (e.g. primary key +
    # updated_at) were already loaded by an earlier date are dropped, so only real changes arrive.
    dedupe_on: tuple[str, ...] = ()


class Source(Protocol):
    kind: ClassVar[str]
    name: str

    def tables(self) -> list[str]: ...

    def extract(self, table: str, ctx: ExtractContext) -> Extract: ...


SOURCES = Registry(
    "sources",
    builtins=("tasks.ingest.crm", "tasks.ingest.crm_api", "tasks.ingest.files", "tasks.ingest.pos", "tasks.ingest.web"),
)
register = SOURCES.register


def build_source(name: str, cfg: SourceConfig, config_file: Path) -> Source:
    source: Source = SOURCES.build(name, cfg.kind, cfg.options, config_file)
    return source

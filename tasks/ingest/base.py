"""The source protocol and its registry.

A source maps one external system onto canonical tables. It declares its typed options (validated
against sources.yaml with messages that name the key) and yields one frame per canonical table,
each row tagged with ``_source``/``_row`` so a bad row can be traced to its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict

from tasks.config.models import SourceConfig
from tasks.registry import Registry
from tasks.settings import RunWindow


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Extract:
    """One canonical table as read from a source, plus rows that could not even be parsed."""

    frame: pd.DataFrame
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {_source, _row, _raw, _reason}


class Source(Protocol):
    kind: ClassVar[str]
    name: str

    def tables(self) -> list[str]: ...

    def extract(self, table: str, window: RunWindow) -> Extract: ...


SOURCES = Registry("sources", builtins=("tasks.ingest.crm", "tasks.ingest.pos", "tasks.ingest.web"))
register = SOURCES.register


def build_source(name: str, cfg: SourceConfig, config_file: Path) -> Source:
    source: Source = SOURCES.build(name, cfg.kind, cfg.options, config_file)
    return source

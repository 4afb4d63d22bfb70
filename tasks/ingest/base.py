"""The source protocol and its registry.

A source maps one external system onto canonical tables. It declares its typed options (validated
against sources.yaml with messages that name the key) and yields one frame per canonical table,
each row tagged with ``_source``/``_row`` so a bad row can be traced to its file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.config.loader import ConfigError, format_loc
from tasks.config.models import SourceConfig
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


S = TypeVar("S", bound=type)
REGISTRY: dict[str, type] = {}


def register(kind: str) -> Callable[[S], S]:
    def deco(cls: S) -> S:
        REGISTRY[kind] = cls
        cls.kind = kind  # type: ignore[attr-defined]
        return cls

    return deco


def _load_builtin_sources() -> None:
    # Imported for their @register side effect; kept here so the registry is complete on first use.
    from tasks.ingest import crm, pos, web  # noqa: F401


def build_source(name: str, cfg: SourceConfig, config_file: Path) -> Source:
    _load_builtin_sources()
    if cfg.kind not in REGISTRY:
        from tasks.segments.rules import suggest

        raise ConfigError(
            config_file, [f"sources.{name}.kind: unknown kind {cfg.kind!r}" + suggest(cfg.kind, list(REGISTRY))]
        )
    cls: Any = REGISTRY[cfg.kind]
    try:
        options = cls.Options.model_validate(cfg.options)
    except ValidationError as exc:
        problems = [f"sources.{name}.options.{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(config_file, problems) from None
    source: Source = cls(name, options)
    return source

"""The destination protocol and its registry.

A destination receives one segment's audience (members with the profile columns it may use) and
reports what it delivered. Platform destinations (issue 5) add plan/apply and a ledger behind the
same ``deliver`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.config.loader import ConfigError, format_loc
from tasks.config.models import DestinationConfig
from tasks.settings import RunWindow


class DestinationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Delivery:
    destination: str
    segment: str
    members: int
    location: str


class Destination(Protocol):
    kind: ClassVar[str]
    name: str

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery: ...


D = TypeVar("D", bound=type)
REGISTRY: dict[str, type] = {}


def register(kind: str) -> Callable[[D], D]:
    def deco(cls: D) -> D:
        REGISTRY[kind] = cls
        cls.kind = kind  # type: ignore[attr-defined]
        return cls

    return deco


def build_destination(name: str, cfg: DestinationConfig, config_file: Path) -> Destination:
    from tasks.destinations import files  # noqa: F401  (registers built-in kinds)

    if cfg.kind not in REGISTRY:
        from tasks.segments.rules import suggest

        raise ConfigError(
            config_file, [f"destinations.{name}.kind: unknown kind {cfg.kind!r}" + suggest(cfg.kind, list(REGISTRY))]
        )
    cls: Any = REGISTRY[cfg.kind]
    try:
        options = cls.Options.model_validate(cfg.options)
    except ValidationError as exc:
        problems = [f"destinations.{name}.options.{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(config_file, problems) from None
    dest: Destination = cls(name, options)
    return dest

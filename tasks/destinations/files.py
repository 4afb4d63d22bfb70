"""Audience files for marketers: one CSV per segment in a local outbox folder.

UTF-8 with a byte-order mark, because Excel on Windows (what most marketers open these in)
otherwise shows Vietnamese diacritics as mojibake.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field, field_validator

from tasks import settings
from tasks.config.loader import suggest
from tasks.destinations.base import Delivery, DestinationOptions, register
from tasks.features import catalog
from tasks.settings import RunWindow

DEFAULT_COLUMNS = [
    "customer_key",
    "customer_id",
    "full_name",
    "email",
    "phone",
    "province",
    "orders",
    "monetary_total",
    "last_purchase_at",
    "email_opt_in",
    "sms_opt_in",
    "ads_opt_in",
]


class CsvOutboxOptions(DestinationOptions):
    path: str = "outbox"
    columns: list[str] = Field(default_factory=lambda: list(DEFAULT_COLUMNS), min_length=1)

    @field_validator("columns")
    @classmethod
    def _known(cls, columns: list[str]) -> list[str]:
        for c in columns:
            known = catalog.known()
            if c not in known:
                raise ValueError(f"unknown column {c!r}" + suggest(c, list(known)))
        return columns


@register("csv_outbox")
class CsvOutbox:
    kind: ClassVar[str]
    Options = CsvOutboxOptions

    def __init__(self, name: str, options: CsvOutboxOptions) -> None:
        self.name = name
        self.options = options

    def path_for(self, segment: str, window: RunWindow) -> Path:
        return settings.resolve(self.options.path) / window.run_date.isoformat() / f"{segment}.csv"

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery:
        path = self.path_for(segment, window)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        audience[self.options.columns].to_csv(tmp, index=False, encoding="utf-8-sig")
        os.replace(tmp, path)  # a re-run replaces the file whole; readers never see half of it
        return Delivery(self.name, segment, len(audience), str(path))

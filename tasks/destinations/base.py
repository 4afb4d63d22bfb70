"""The destination protocol and its registry.

A destination receives one segment's audience (members with the profile columns it may use) and
reports what it delivered. Platform destinations (issue 5) add plan/apply and a ledger behind the
same ``deliver`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict

from tasks.config.models import DestinationConfig
from tasks.registry import Registry
from tasks.settings import RunWindow


class DestinationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Delivery:
    destination: str
    segment: str
    members: int
    location: str
    link: str | None = None  # a shareable link (S3 presigned URL) when the destination makes one


class Destination(Protocol):
    kind: ClassVar[str]
    name: str

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery: ...


DESTINATIONS = Registry(
    "destinations",
    builtins=(
        "tasks.destinations.files",
        "tasks.destinations.s3_files",
        "tasks.destinations.sftp",
        "tasks.destinations.email",
        "tasks.destinations.mailchimp",
        "tasks.destinations.klaviyo",
        "tasks.destinations.sendgrid",
        "tasks.destinations.brevo",
        "tasks.destinations.meta",
        "tasks.destinations.google",
        "tasks.destinations.tiktok",
    ),
)
register = DESTINATIONS.register


def build_destination(name: str, cfg: DestinationConfig, config_file: Path) -> Destination:
    destination: Destination = DESTINATIONS.build(name, cfg.kind, cfg.options, config_file)
    return destination

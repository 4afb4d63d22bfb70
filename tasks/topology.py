"""What the DAG files generate, read from config at parse time — cheaply.

The scheduler parses DAG files every few seconds, so this module reads only the two small YAML
files that shape the DAGs (which sources, on which schedule; which destinations) with
``yaml.safe_load`` and imports nothing heavy: no pydantic models, no registry, no pandas. The
full validation of the same files happens when a task runs (``tasks.config``), where an error
fails that task with the file and key; here a broken file shows as a DAG import error in the UI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SCHEDULE = "0 0 * * *"  # after each business day closes, in the business time zone
# Platform kinds sync through an API; each gets an Airflow pool so its rate limit holds across
# parallel tasks and DAG runs. Slots: Mailchimp allows 10 concurrent connections per key; the
# others publish request rates rather than concurrency, so a few parallel syncs are plenty.
POOL_SLOTS = {
    "mailchimp": 8,
    "klaviyo": 4,
    "sendgrid": 4,
    "brevo": 4,
    "meta_custom_audience": 2,  # one replace session per audience at a time
    "google_customer_match": 4,
    "tiktok_customer_file": 2,
}
PLATFORM_KINDS = frozenset(POOL_SLOTS)


@dataclass(frozen=True)
class Ingestion:
    source: str
    schedule: str

    @property
    def dag_id(self) -> str:
        return f"ingest_{self.source}"

    @property
    def asset_uri(self) -> str:
        return f"audiences://validated/{self.source}"


@dataclass(frozen=True)
class Delivery:
    destination: str
    kind: str

    @property
    def pool(self) -> str | None:
        return f"audiences_{self.kind}" if self.kind in PLATFORM_KINDS else None


def _config_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("AUDIENCES_CONFIG", root / "config"))


def _load(name: str) -> dict[str, Any]:
    path = _config_dir() / name
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return doc


def ingestions() -> list[Ingestion]:
    sources = _load("sources.yaml").get("sources") or {}
    return [
        Ingestion(name, str(spec.get("schedule") or DEFAULT_SCHEDULE))
        for name, spec in sources.items()
        if isinstance(spec, dict) and spec.get("enabled", True)
    ]


def deliveries() -> list[Delivery]:
    destinations = _load("destinations.yaml").get("destinations") or {}
    return [
        Delivery(name, str(spec.get("kind")))
        for name, spec in destinations.items()
        if isinstance(spec, dict) and spec.get("enabled", True)
    ]


def pools() -> dict[str, dict[str, Any]]:
    """Pools for every platform kind, in ``airflow pools import`` format."""
    return {
        f"audiences_{kind}": {"slots": slots, "description": f"rate limit of {kind} syncs", "include_deferred": False}
        for kind, slots in POOL_SLOTS.items()
    }

"""The Parquet lake: zones partitioned by source, table and business date.

Each partition is committed by writing its manifest (``_manifest.json``) last: data files carry a
fresh attempt id, so a killed writer leaves only unreferenced files and the previous manifest still
names the previous, complete data. Re-running a date writes a new attempt and replaces the manifest;
older attempts are then removed. Raw data is never rewritten except by re-running its own date.

A partition is either a ``snapshot`` (the whole table as of that date) or an ``increment`` (rows
changed since the previous load); :meth:`Lake.history` gives the partitions that make up a table's
state as of a date.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tasks.storage import LocalStore, ObjectStore

Zone = Literal["raw", "clean", "quarantine", "unified", "features", "segments", "validation", "runs"]
Mode = Literal["snapshot", "increment"]
MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Partition:
    day: date
    mode: Mode
    rows: int
    files: list[str]


class Lake:
    def __init__(self, store: ObjectStore, cache_dir: Path | None = None) -> None:
        self.store = store
        self.cache_dir = cache_dir

    @classmethod
    def local(cls, root: Path) -> Lake:
        return cls(LocalStore(root))

    @property
    def root(self) -> str:
        return self.store.describe("")

    @staticmethod
    def prefix(zone: Zone, source: str, table: str, day: date | None = None) -> str:
        base = f"{zone}/source={source}/table={table}/"
        return base if day is None else f"{base}dt={day.isoformat()}/"

    def location(self, zone: Zone, source: str, table: str, day: date) -> str:
        return self.store.describe(self.prefix(zone, source, table, day))

    def write(
        self, zone: Zone, source: str, table: str, day: date, frame: pd.DataFrame, mode: Mode = "snapshot"
    ) -> str:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        schema = {str(c): ("null" if frame[c].isna().all() else str(t)) for c, t in frame.dtypes.items()}
        return self._commit(zone, source, table, day, buf.getvalue(), len(frame), schema, mode)

    def write_file(
        self,
        zone: Zone,
        source: str,
        table: str,
        day: date,
        path: Path,
        rows: int,
        schema: dict[str, str],
        mode: Mode = "snapshot",
    ) -> str:
        """Commit a Parquet file an engine already wrote (``rows`` and ``schema`` as ``write`` records them),
        for tables too large to pass through pandas."""
        return self._commit(zone, source, table, day, path.read_bytes(), rows, schema, mode)

    def _commit(
        self, zone: Zone, source: str, table: str, day: date, data: bytes, rows: int, schema: dict[str, str], mode: Mode
    ) -> str:
        prefix = self.prefix(zone, source, table, day)
        attempt = uuid.uuid4().hex
        key = f"{prefix}part-{attempt}-00000.parquet"
        self.store.put(key, data)
        manifest = {
            "files": [key.removeprefix(prefix)],
            "rows": rows,
            "mode": mode,
            "schema": schema,
            "attempt": attempt,
            "written_at": datetime.now(UTC).isoformat(),
        }
        self.store.put(prefix + MANIFEST, json.dumps(manifest).encode())  # the commit point
        stale = [k for k in self.store.list(prefix) if k.endswith(".parquet") and attempt not in k]
        self.store.delete(stale)
        return self.store.describe(prefix)

    def manifest(self, zone: Zone, source: str, table: str, day: date) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.store.get(self.prefix(zone, source, table, day) + MANIFEST))
        except FileNotFoundError:
            return None
        return doc

    def exists(self, zone: Zone, source: str, table: str, day: date) -> bool:
        return self.manifest(zone, source, table, day) is not None

    def _manifest_or_raise(self, zone: Zone, source: str, table: str, day: date) -> dict[str, Any]:
        doc = self.manifest(zone, source, table, day)
        if doc is None:
            raise FileNotFoundError(
                f"lake partition {self.location(zone, source, table, day)} is missing; "
                "run the stage that writes it for this date first"
            )
        return doc

    def local_files(self, zone: Zone, source: str, table: str, day: date) -> list[str]:
        """Paths an engine (DuckDB, Ibis) can scan; objects from remote stores are cached locally."""
        prefix = self.prefix(zone, source, table, day)
        return [self._local(prefix + name) for name in self._manifest_or_raise(zone, source, table, day)["files"]]

    def _local(self, key: str) -> str:
        path = self.store.local_path(key)
        if path is not None:
            return str(path)
        if self.cache_dir is None:
            raise RuntimeError("a remote lake needs a cache_dir to hand files to the engine")
        cached = self.cache_dir / key  # data files are immutable (unique attempt ids): safe to cache
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(self.store.get(key))
            tmp.replace(cached)
        return str(cached)

    def read(self, zone: Zone, source: str, table: str, day: date) -> pd.DataFrame:
        files = self.local_files(zone, source, table, day)
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def partitions(self, zone: Zone, source: str, table: str) -> list[date]:
        base = self.prefix(zone, source, table)
        days = set()
        for key in self.store.list(base):
            if key.endswith("/" + MANIFEST):
                part = key.removeprefix(base).split("/")[0]
                if part.startswith("dt="):
                    days.add(date.fromisoformat(part.removeprefix("dt=")))
        return sorted(days)

    def history(self, zone: Zone, source: str, table: str, day: date) -> list[Partition]:
        """Partitions that make up the table as of ``day``: the latest snapshot on or before it, then
        every increment after that snapshot (or all increments when no snapshot exists)."""
        parts = []
        for d in self.partitions(zone, source, table):
            if d > day:
                continue
            doc = self._manifest_or_raise(zone, source, table, d)
            prefix = self.prefix(zone, source, table, d)
            files = [self._local(prefix + name) for name in doc["files"]]
            parts.append(Partition(d, doc.get("mode", "snapshot"), int(doc["rows"]), files))
        snapshots = [i for i, p in enumerate(parts) if p.mode == "snapshot"]
        return parts[snapshots[-1] :] if snapshots else parts

    def put_text(self, zone: Zone, source: str, table: str, day: date, name: str, text: str) -> str:
        key = self.prefix(zone, source, table, day) + name
        self.store.put(key, text.encode("utf-8"))
        return self.store.describe(key)

    def get_text(self, zone: Zone, source: str, table: str, day: date, name: str) -> str:
        return self.store.get(self.prefix(zone, source, table, day) + name).decode("utf-8")


def open_lake(root: str) -> Lake:
    """The lake named by ``lake_root`` in pipeline.yaml: a folder, or ``s3://bucket/prefix``."""
    from tasks import settings

    if root.startswith("s3://"):
        from tasks.storage_s3 import S3Store

        return Lake(S3Store.from_url(root), cache_dir=settings.home() / "cache" / "lake")
    return Lake.local(settings.resolve(root))

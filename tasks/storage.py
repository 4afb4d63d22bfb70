"""Object storage under the lake: a local folder by default, an S3 bucket in production.

The lake only needs five operations, all of which S3 offers atomically per object; keeping the
interface that small is what lets the same lake code run on a laptop folder and on a bucket.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Write one object whole; readers see the old or the new content, never a mix."""

    def get(self, key: str) -> bytes:
        """Raise FileNotFoundError when the key does not exist."""

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive), sorted."""

    def delete(self, keys: Iterable[str]) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """A path engines can read directly, when the object lives on this machine."""

    def describe(self, key: str) -> str:
        """Where a key lives, for messages (a path or an s3:// URL)."""


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return path.read_bytes()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def describe(self, key: str) -> str:
        return str(self._path(key))

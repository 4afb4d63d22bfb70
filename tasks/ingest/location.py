"""Where file-based sources read from: a local folder or an ``s3://bucket/prefix``.

File sources only list and read objects through :class:`~tasks.storage.ObjectStore`, so a shop that
moves its exports from a shared folder to a bucket changes one line of sources.yaml, and the
skip/re-delivery/reject behaviour stays identical. Sources never write or delete here: the
delivered files remain the source of truth.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tasks import settings
from tasks.storage import LocalStore, ObjectStore
from tasks.tables import ROW_COL, SOURCE_COL

S3_SCHEME = "s3://"


def open_location(location: str) -> ObjectStore:
    """The store behind a configured ``location``; relative folders resolve under AUDIENCES_HOME."""
    if location.startswith(S3_SCHEME):
        # Imported lazily: boto3 is slow to import and only S3 deployments need it.
        from tasks.storage_s3 import S3Store

        store: ObjectStore = S3Store.from_url(location)
        return store
    return LocalStore(settings.resolve(location))


def location_label(location: str) -> str:
    """Short, credential-free name for lineage: the folder's or prefix's last segment (else the bucket)."""
    if location.startswith(S3_SCHEME):
        parts = [p for p in location[len(S3_SCHEME) :].split("/") if p]
        return parts[-1] if parts else ""
    return settings.resolve(location).name


def require_location(store: ObjectStore, source: str, location: str) -> None:
    """Fail loudly when a local folder is missing: an empty result would look like 'no new files'.

    An S3 prefix cannot be missing (it is just an empty listing), so only local stores are checked.
    """
    root = store.local_path("")
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"source {source!r}: folder {root} not found; fix its location in sources.yaml")


def top_level(key: str) -> bool:
    """Files directly in the location; sub-folders (archives, temp uploads) are not deliveries."""
    return "/" not in key and not PurePosixPath(key).name.startswith(".")


def unreadable(label: str, data: bytes, reason: str) -> dict[str, Any]:
    """One reject standing for a whole file, so nothing is lost silently and the file is named."""
    return {SOURCE_COL: label, ROW_COL: 0, "_raw": repr(data[:200]), "_reason": f"unreadable file: {reason}"}

"""Audience files for marketers: one CSV or XLSX per segment in a local outbox folder.

The folder is what a shared drive, a sync client or a mail robot picks files up from, so a reader
must never see half a file: each file is written under a temporary name in the same folder and
moved into place (``os.replace`` is atomic on one file system), and a re-run of the same date
replaces the file whole. How the bytes look (BOM, sheet names, timestamps) is in ``rendering``.

``csv_outbox`` is the original kind and keeps its behaviour (CSV unless ``format: xlsx``); ``files``
is the same destination under a name that reads right when the format is XLSX.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import ClassVar

import pandas as pd

from tasks import settings
from tasks.destinations.base import Delivery, register
from tasks.destinations.rendering import DEFAULT_COLUMNS, FileOptions, file_name, render
from tasks.settings import RunWindow

__all__ = ["DEFAULT_COLUMNS", "CsvOutbox", "CsvOutboxOptions", "LocalFiles"]


class CsvOutboxOptions(FileOptions):
    path: str = "outbox"


@register("csv_outbox")
class CsvOutbox:
    kind: ClassVar[str]
    Options = CsvOutboxOptions

    def __init__(self, name: str, options: CsvOutboxOptions) -> None:
        self.name = name
        self.options = options

    def path_for(self, segment: str, window: RunWindow) -> Path:
        return (
            settings.resolve(self.options.path) / window.run_date.isoformat() / file_name(segment, self.options.format)
        )

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery:
        data = render(audience, self.options.columns, self.options.format, title=title)
        path = self.path_for(segment, window)
        write_atomic(path, data)
        return Delivery(self.name, segment, len(audience), str(path))


@register("files")
class LocalFiles(CsvOutbox):
    """``kind: files`` -- the same outbox, for configs that deliver XLSX."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: two writers never share one
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise

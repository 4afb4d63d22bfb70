"""CRM contacts from a CSV export (the REST API source arrives with issue 3)."""

from __future__ import annotations

from typing import ClassVar

import pandas as pd
from pydantic import Field

from tasks import settings
from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.tables import ROW_COL, SOURCE_COL


class CsvOptions(SourceOptions):
    path: str
    table: str = "contacts"
    encoding: str = "utf-8-sig"
    delimiter: str = Field(",", min_length=1, max_length=1)
    columns: dict[str, str] = Field(default_factory=dict, description="source column -> canonical column")


@register("csv_export")
class CsvExport:
    kind: ClassVar[str]
    Options = CsvOptions

    def __init__(self, name: str, options: CsvOptions) -> None:
        self.name = name
        self.options = options

    def tables(self) -> list[str]:
        return [self.options.table]

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        path = settings.resolve(self.options.path)
        if not path.is_file():
            raise FileNotFoundError(f"source {self.name!r}: CSV export {path} not found; fix sources.yaml or export it")
        try:
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding=self.options.encoding,
                sep=self.options.delimiter,
            )
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: byte {exc.start} is not valid {self.options.encoding}; set "
                f"sources.{self.name}.options.encoding to the file's encoding (e.g. utf-16, cp1258)"
            ) from None
        frame = frame.rename(columns=self.options.columns)
        frame = frame.replace({"": None})
        frame[SOURCE_COL] = f"{path.parent.name}/{path.name}"
        frame[ROW_COL] = range(1, len(frame) + 1)
        return Extract(frame)

"""Point-of-sale database through SQLAlchemy: SQLite in the demo, PostgreSQL in production."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, model_validator

from tasks import settings
from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.tables import ROW_COL, SOURCE_COL

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class PosOptions(SourceOptions):
    url: str | None = None
    url_env: str | None = Field(None, description="Environment variable holding the URL (with credentials).")
    tables: dict[str, str] = Field(
        default_factory=lambda: {t: t for t in ("stores", "products", "orders", "order_lines")},
        description="canonical table -> table name in the source database",
    )
    row_id_column: str = "id"

    @model_validator(mode="after")
    def _one_url(self) -> PosOptions:
        if bool(self.url) == bool(self.url_env):
            raise ValueError("set exactly one of 'url' or 'url_env'")
        for name in self.tables.values():
            if not _IDENT.match(name):
                raise ValueError(f"table name {name!r} is not a plain identifier")
        return self


@register("sql_database")
class PosDatabase:
    kind: ClassVar[str]
    Options = PosOptions

    def __init__(self, name: str, options: PosOptions) -> None:
        self.name = name
        self.options = options

    def _url(self) -> sa.URL:
        raw = self.options.url or os.environ.get(self.options.url_env or "", "")
        if not raw:
            raise RuntimeError(f"source {self.name!r}: environment variable {self.options.url_env} is not set")
        url = sa.make_url(raw)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_absolute():
            url = url.set(database=str(settings.resolve(url.database)))
        return url

    def _label(self, url: sa.URL) -> str:
        # Names the database in row lineage without its credentials.
        return Path(url.database or "").name if url.get_backend_name() == "sqlite" else str(url.database)

    def tables(self) -> list[str]:
        return list(self.options.tables)

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        url = self._url()
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            raise FileNotFoundError(
                f"source {self.name!r}: SQLite database {url.database} not found; "
                "run `audiences generate` or fix sources.yaml"
            )
        source_table = self.options.tables[table]
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                tbl = sa.Table(source_table, sa.MetaData(), autoload_with=conn)
                query = sa.select(tbl)
                if self.options.row_id_column in tbl.c:
                    query = query.order_by(tbl.c[self.options.row_id_column])
                frame = pd.read_sql(query, conn)
        finally:
            engine.dispose()
        label = f"{self._label(url)}:{source_table}"
        row_col = self.options.row_id_column
        rows = frame.pop(row_col) if row_col in frame.columns else pd.Series(range(1, len(frame) + 1))
        frame[SOURCE_COL] = label
        frame[ROW_COL] = rows.astype("int64").to_numpy()
        return Extract(frame)

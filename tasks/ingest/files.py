"""Shops whose POS can only export files: CSV or Parquet deltas dropped in a folder or S3 prefix.

Every delivered file is loaded exactly once. The state database remembers each (name, content hash)
processed, so a sender re-uploading yesterday's file under a new name does not double the orders,
while a corrected file under the same name is loaded again. A file that cannot be read at all is
quarantined as one reject naming it and is *not* marked processed, so a fixed re-delivery is picked
up by the next run without anyone touching the state database.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.ingest.location import location_label, open_location, require_location, top_level, unreadable
from tasks.state.store import ProcessedFile, StateStore
from tasks.tables import ROW_COL, SOURCE_COL, TABLES

Format = Literal["csv", "parquet"]
_BY_SUFFIX: dict[str, Format] = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class FileDropOptions(SourceOptions):
    location: str = Field(description="folder (relative to AUDIENCES_HOME or absolute) or s3://bucket/prefix")
    tables: dict[str, str] = Field(
        min_length=1,
        description="canonical table -> glob pattern of file names in the location, e.g. orders_*.csv",
    )
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: by file extension")
    columns: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="canonical table -> {source column: canonical column}"
    )
    encoding: str = "utf-8-sig"
    delimiter: str = Field(",", min_length=1, max_length=1)

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: dict[str, str]) -> dict[str, str]:
        for table, pattern in value.items():
            if table not in TABLES:
                raise ValueError(f"unknown canonical table {table!r}; canonical tables are {', '.join(TABLES)}")
            if not pattern.strip():
                raise ValueError(f"empty file pattern for table {table!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; use e.g. utf-8-sig, utf-16, cp1258") from None
        return value

    @model_validator(mode="after")
    def _columns_for_configured_tables(self) -> FileDropOptions:
        extra = sorted(set(self.columns) - set(self.tables))
        if extra:
            raise ValueError(f"columns given for table(s) {', '.join(extra)} that are not listed under 'tables'")
        return self


class UnreadableFile(Exception):
    """The whole file cannot be parsed; the message says why and what the sender should do."""


@dataclass(frozen=True)
class _Parsed:
    frame: pd.DataFrame
    rejects: list[dict[str, Any]]


def _matches(key: str, pattern: str) -> bool:
    # A pattern without a folder only matches files directly in the location, so archive/ or
    # tmp/ sub-folders are never picked up by accident.
    if "/" not in pattern and not top_level(key):
        return False
    return fnmatchcase(key, pattern) and not PurePosixPath(key).name.startswith(".")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def _harmonize(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing Python types (CSV text and Parquet numbers) become text, so Parquet can store them.

    Conformance casts every column to its canonical type afterwards, so nothing is lost.
    """
    for col in frame.columns:
        if frame[col].dtype == object and len({type(v) for v in frame[col] if not _missing(v)}) > 1:
            frame[col] = frame[col].map(lambda v: None if _missing(v) else str(v))
    return frame


@register("file_drop")
class FileDrop:
    kind: ClassVar[str]
    Options = FileDropOptions

    def __init__(self, name: str, options: FileDropOptions) -> None:
        self.name = name
        self.options = options

    def tables(self) -> list[str]:
        return list(self.options.tables)

    def _format(self, key: str) -> Format:
        if self.options.format != "auto":
            return self.options.format
        suffix = PurePosixPath(key).suffix.lower()
        if suffix not in _BY_SUFFIX:
            raise UnreadableFile(
                f"cannot tell the format of a {suffix or 'extension-less'} file; "
                f"set sources.{self.name}.options.format to csv or parquet, or rename the file"
            )
        return _BY_SUFFIX[suffix]

    def _read_csv(self, label: str, data: bytes) -> _Parsed:
        try:
            text = data.decode(self.options.encoding)
        except UnicodeDecodeError as exc:
            raise UnreadableFile(
                f"byte {exc.start} is not valid {self.options.encoding}; set sources.{self.name}.options.encoding "
                "to the file's encoding (e.g. utf-16, cp1258) or ask the sender to re-export it as UTF-8"
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter)
        records: list[list[str]] = []
        rows: list[int] = []
        rejects: list[dict[str, Any]] = []
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise UnreadableFile("the first line has no column names; ask the sender to re-export with a header")
            if len(set(header)) != len(header):
                raise UnreadableFile("the header repeats a column name; ask the sender to fix the export")
            for row_no, record in enumerate(reader, start=1):
                if not record:
                    continue  # a blank line is not a row; numbering still counts it so _row stays positional
                if len(record) != len(header):
                    raw = io.StringIO()
                    csv.writer(raw, delimiter=self.options.delimiter, lineterminator="").writerow(record)
                    rejects.append(
                        {
                            SOURCE_COL: label,
                            ROW_COL: row_no,
                            "_raw": raw.getvalue(),
                            "_reason": f"row {row_no} has {len(record)} fields but the header has {len(header)}; "
                            "check for an unquoted delimiter in a value",
                        }
                    )
                    continue
                records.append(record)
                rows.append(row_no)
        except csv.Error as exc:
            raise UnreadableFile(
                f"CSV syntax error near line {reader.line_num}: {exc}; ask the sender to re-export"
            ) from None
        frame = pd.DataFrame(records, columns=header, dtype=object)
        frame = frame.replace({"": None})
        frame[ROW_COL] = pd.array(rows, dtype="int64")
        return _Parsed(frame, rejects)

    @staticmethod
    def _read_parquet(data: bytes) -> _Parsed:
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UnreadableFile(
                f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]}); it is probably truncated "
                "or still uploading: ask the sender to re-deliver it"
            ) from None
        frame = table.to_pandas()
        frame[ROW_COL] = pd.array(range(1, len(frame) + 1), dtype="int64")
        return _Parsed(frame, [])

    def _parse(self, key: str, label: str, data: bytes) -> _Parsed:
        if not data:
            raise UnreadableFile("the file is empty (0 bytes); ask the sender to re-deliver it")
        if self._format(key) == "csv":
            return self._read_csv(label, data)
        return self._read_parquet(data)

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        location = self.options.location
        store = open_location(location)
        require_location(store, self.name, location)
        prefix = location_label(location)
        state_key = f"{self.name}.{table}"
        run_date = ctx.window.run_date.isoformat()
        ctx.state.forget_files(state_key, run_date)  # a re-run of this date re-reads what it took

        frames: list[pd.DataFrame] = []
        rejects: list[dict[str, Any]] = []
        notes: list[str] = []
        pending: list[ProcessedFile] = []
        this_run: dict[str, str] = {}  # sha256 -> name, for duplicates delivered together
        pattern = self.options.tables[table]
        for key in (k for k in store.list("") if _matches(k, pattern)):
            data = store.get(key)
            sha = hashlib.sha256(data).hexdigest()
            label = f"{prefix}/{key}" if prefix else key
            note = self._already_processed(ctx.state, state_key, key, sha, this_run, run_date)
            if note == "":
                continue
            processed = ProcessedFile(state_key, key, sha, len(data), run_date)
            if note is not None and note.startswith("re-delivered"):
                # Recorded too, so later runs skip it silently instead of repeating the note.
                notes.append(note)
                pending.append(processed)
                continue
            try:
                parsed = self._parse(key, label, data)
            except UnreadableFile as exc:
                rejects.append(unreadable(label, data, str(exc)))
                continue
            if note is not None:
                notes.append(note)
            frame = parsed.frame.rename(columns=self.options.columns.get(table, {}))
            frame[SOURCE_COL] = label
            frames.append(frame)
            rejects.extend(parsed.rejects)
            this_run[sha] = key
            pending.append(processed)

        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(frames) > 1:
            frame = _harmonize(frame)
        if len(frame.columns):
            frame = frame[[c for c in frame.columns if c not in (SOURCE_COL, ROW_COL)] + [SOURCE_COL, ROW_COL]]

        def record() -> None:
            for f in pending:
                ctx.state.record_file(f)

        return Extract(frame, rejects, mode="increment", on_commit=[record], notes=notes)

    @staticmethod
    def _already_processed(
        state: StateStore, state_key: str, key: str, sha: str, this_run: dict[str, str], run_date: str
    ) -> str | None:
        """``""`` to skip silently, a note to report, or None for a plain new file."""
        versions = state.files_seen(state_key, key)
        if any(v.sha256 == sha for v in versions):
            return ""
        if sha in this_run:
            return f"re-delivered: {key} has the same content as {this_run[sha]} (processed for {run_date})"
        earlier = [f for f in state.hash_seen(state_key, sha) if f.path != key]
        if earlier:
            first = min(earlier, key=lambda f: (f.run_date, f.path))
            return f"re-delivered: {key} has the same content as {first.path} (processed for {first.run_date})"
        if versions:
            last = max(v.run_date for v in versions)
            return f"corrected: {key} changed since it was processed for {last}; its new content is loaded"
        return None

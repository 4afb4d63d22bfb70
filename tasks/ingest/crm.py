"""CRM contacts from a CSV export (the REST API source is ``crm_api`` in crm_api.py).

Exports come from whatever tool a CRM admin has at hand: Excel on Windows writes UTF-16 or the
Vietnamese code page 1258 and often ``;`` as separator, other tools write UTF-8 with ``,``. With
``encoding``/``delimiter`` left at ``auto`` the file says which it is, so a changed export setting does
not fail the nightly run; an explicit value still wins.
"""

from __future__ import annotations

import codecs
import io
import unicodedata
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field, field_validator

from tasks import settings
from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.tables import ROW_COL, SOURCE_COL

AUTO = "auto"
DELIMITERS = (",", ";", "\t", "|")  # sniffing order also breaks ties
FALLBACK_ENCODING = "cp1258"  # Windows Vietnamese: what a legacy export is when it is not UTF-8


class CsvOptions(SourceOptions):
    path: str
    table: str = "contacts"
    encoding: str = Field(AUTO, description="'auto' (BOM / UTF-8 / cp1258) or a Python codec name")
    delimiter: str = Field(AUTO, description="'auto' (sniff , ; tab | from the header) or one character")
    columns: dict[str, str] = Field(default_factory=dict, description="source column -> canonical column")

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value != AUTO:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; use 'auto' or e.g. utf-8, utf-16, cp1258") from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if value != AUTO and len(value) != 1:
            raise ValueError("must be 'auto' or a single character such as ',' or ';'")
        return value


def detect_encoding(data: bytes) -> tuple[str, str | None]:
    """The codec for ``data`` and, when it had to be guessed, a note saying so."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", None  # the codec reads the BOM for byte order and drops it
    head = data[:4096]
    if head.count(0) > len(head) // 4:  # UTF-16 without a BOM: every other byte of ASCII text is zero
        codec = "utf-16-le" if head[1::2].count(0) >= head[0::2].count(0) else "utf-16-be"
        return codec, f"no byte-order mark but NUL bytes: read as {codec}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return (
            FALLBACK_ENCODING,
            f"not UTF-8: read as {FALLBACK_ENCODING} (Windows Vietnamese); set encoding to confirm",
        )
    return "utf-8", None


def sniff_delimiter(header: str) -> str:
    """The candidate occurring most often outside quotes in the header line (``,`` for a one-column file)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])  # max keeps the first of equal counts
    return best if counts[best] else ","


@register("csv_export")
class CsvExport:
    kind: ClassVar[str]
    Options = CsvOptions

    def __init__(self, name: str, options: CsvOptions) -> None:
        self.name = name
        self.options = options

    def tables(self) -> list[str]:
        return [self.options.table]

    def _decode(self, path: Path, data: bytes, notes: list[str]) -> str:
        encoding, note = detect_encoding(data) if self.options.encoding == AUTO else (self.options.encoding, None)
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: byte {exc.start} is not valid {encoding}; set "
                f"sources.{self.name}.options.encoding to the file's encoding (e.g. utf-16, cp1258)"
            ) from None
        if note:
            notes.append(f"{path.parent.name}/{path.name}: {note}")
        if codecs.lookup(encoding).name == FALLBACK_ENCODING:
            # cp1258 stores most Vietnamese letters as base letter + combining tone mark; compose them
            # so "Nguyễn" from this file equals "Nguyễn" from a UTF-8 one.
            text = unicodedata.normalize("NFC", text)
        return text.removeprefix("\ufeff")

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        path = settings.resolve(self.options.path)
        if not path.is_file():
            raise FileNotFoundError(f"source {self.name!r}: CSV export {path} not found; fix sources.yaml or export it")
        notes: list[str] = []
        text = self._decode(path, path.read_bytes(), notes)
        if not text.strip():
            raise ValueError(
                f"{path}: the CSV export is empty (not even a header line); the export probably failed or was "
                "still being written: export it again, then re-run the date"
            )
        delimiter = self.options.delimiter
        if delimiter == AUTO:
            delimiter = sniff_delimiter(text.split("\n", 1)[0])
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=delimiter)
        frame = frame.rename(columns=self.options.columns)
        frame = frame.replace({"": None})
        frame[SOURCE_COL] = f"{path.parent.name}/{path.name}"
        frame[ROW_COL] = pd.Series(range(1, len(frame) + 1), index=frame.index, dtype="int64")
        return Extract(frame, notes=notes)

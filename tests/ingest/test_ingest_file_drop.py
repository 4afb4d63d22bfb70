"""File drops: each delivered file loads exactly once, bad files are quarantined by name, local and S3 alike."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import SourceConfig
from tasks.ingest.base import Extract, ExtractContext, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAY = date(2026, 11, 24)
CONFIG_FILE = Path("config/sources.yaml")
HEADER = "order_id,customer_id,total_vnd\n"


def _ctx(tmp_path: Path, day: date = DAY) -> ExtractContext:
    return ExtractContext(RunWindow(day, TZ), StateStore(f"sqlite:///{tmp_path}/state.db"))


def _source(location: str, **options: Any) -> Any:
    opts: dict[str, Any] = {"location": location, "tables": {"orders": "orders_*.csv"}}
    opts.update(options)
    return build_source("shop", SourceConfig(kind="file_drop", options=opts), CONFIG_FILE)


def _run(source: Any, ctx: ExtractContext, table: str = "orders") -> Extract:
    """Extract and commit, as the pipeline does after the raw partition is written."""
    result: Extract = source.extract(table, ctx)
    for commit in result.on_commit:
        commit()
    return result


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return buf.getvalue()


@pytest.fixture
def drops(home: Path) -> Path:
    folder = home / "drops"
    folder.mkdir()
    (folder / "orders_20261123.csv").write_text(HEADER + "O1,C1,100\nO2,C2,200\n", encoding="utf-8")
    (folder / "orders_20261124.csv").write_text(HEADER + "O3,C3,300\n", encoding="utf-8")
    return folder


def test_two_csv_files_load_with_lineage(drops: Path, tmp_path: Path) -> None:
    result = _run(_source("drops"), _ctx(tmp_path))
    frame = result.frame
    assert result.mode == "increment"
    assert result.dedupe_on == ()
    assert frame["order_id"].tolist() == ["O1", "O2", "O3"]
    assert frame["total_vnd"].tolist() == ["100", "200", "300"]
    assert frame["_source"].tolist() == ["drops/orders_20261123.csv"] * 2 + ["drops/orders_20261124.csv"]
    assert frame["_row"].tolist() == [1, 2, 1]
    assert result.rejects == []
    assert result.notes == []


def test_next_date_loads_only_new_file(drops: Path, tmp_path: Path) -> None:
    source = _source("drops")
    _run(source, _ctx(tmp_path))
    (drops / "orders_20261125.csv").write_text(HEADER + "O4,C4,400\n", encoding="utf-8")
    result = _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    assert result.frame["order_id"].tolist() == ["O4"]
    assert result.notes == []
    nothing = _run(source, _ctx(tmp_path, DAY + timedelta(days=2)))
    assert len(nothing.frame) == 0 and nothing.rejects == [] and nothing.notes == []


def test_same_content_under_new_name_is_skipped_with_note(drops: Path, tmp_path: Path) -> None:
    source = _source("drops")
    _run(source, _ctx(tmp_path))
    (drops / "orders_20261123_resend.csv").write_bytes((drops / "orders_20261123.csv").read_bytes())
    result = _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    assert len(result.frame) == 0
    assert result.notes == [
        "re-delivered: orders_20261123_resend.csv has the same content as orders_20261123.csv "
        "(processed for 2026-11-24)"
    ]
    # Recorded as seen, so the next run does not repeat the note.
    assert _run(source, _ctx(tmp_path, DAY + timedelta(days=2))).notes == []


def test_duplicate_delivered_in_the_same_run_loads_once(drops: Path, tmp_path: Path) -> None:
    (drops / "orders_20261124_copy.csv").write_bytes((drops / "orders_20261124.csv").read_bytes())
    result = _run(_source("drops"), _ctx(tmp_path))
    assert result.frame["order_id"].tolist() == ["O1", "O2", "O3"]
    assert len(result.notes) == 1 and "orders_20261124_copy.csv" in result.notes[0]


def test_changed_file_under_same_name_is_reprocessed_with_note(drops: Path, tmp_path: Path) -> None:
    source = _source("drops")
    _run(source, _ctx(tmp_path))
    (drops / "orders_20261124.csv").write_text(HEADER + "O3,C3,310\n", encoding="utf-8")
    result = _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    assert result.frame["total_vnd"].tolist() == ["310"]
    assert len(result.notes) == 1
    assert "corrected: orders_20261124.csv" in result.notes[0] and "2026-11-24" in result.notes[0]


def test_rerunning_a_date_rereads_its_files(drops: Path, tmp_path: Path) -> None:
    source = _source("drops")
    first = _run(source, _ctx(tmp_path))
    (drops / "orders_20261125.csv").write_text(HEADER + "O4,C4,400\n", encoding="utf-8")
    _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    again = _run(source, _ctx(tmp_path))
    pd.testing.assert_frame_equal(again.frame, first.frame)
    # The next date's file stays with the next date, and is still recorded there.
    assert len(_run(source, _ctx(tmp_path, DAY + timedelta(days=1))).frame) == 1
    assert len(_run(source, _ctx(tmp_path, DAY + timedelta(days=2))).frame) == 0


def test_ledger_is_written_only_by_the_commit_callback(drops: Path, tmp_path: Path) -> None:
    source = _source("drops")
    uncommitted = source.extract("orders", _ctx(tmp_path))
    assert len(uncommitted.frame) == 3
    assert len(uncommitted.on_commit) == 1
    pending = source.extract("orders", _ctx(tmp_path, DAY + timedelta(days=1)))
    assert pending.frame["order_id"].tolist() == ["O1", "O2", "O3"]
    for commit in pending.on_commit:
        commit()
    assert len(source.extract("orders", _ctx(tmp_path, DAY + timedelta(days=2))).frame) == 0


def test_bad_files_are_rejects_naming_them_and_others_load(drops: Path, tmp_path: Path) -> None:
    (drops / "orders_empty.csv").write_bytes(b"")
    (drops / "orders_ragged.csv").write_text(HEADER + "O5,C5,500\nO6,C6,600,extra\nO7,C7,700\n", encoding="utf-8")
    (drops / "orders_latin.csv").write_bytes(HEADER.encode() + "O8,Nguyễn,800\n".encode("utf-16-le"))
    full = _parquet_bytes(pd.DataFrame({"order_id": [f"P{i}" for i in range(50)], "total_vnd": range(50)}))
    (drops / "orders_cut.parquet").write_bytes(full[: len(full) // 2])
    source = _source("drops", tables={"orders": "orders_*"})
    result = _run(source, _ctx(tmp_path))

    assert result.frame["order_id"].tolist() == ["O1", "O2", "O3", "O5", "O7"]
    assert result.frame.loc[result.frame["order_id"] == "O7", "_row"].item() == 3
    by_source = {r["_source"]: r for r in result.rejects}
    assert set(by_source) == {
        "drops/orders_empty.csv",
        "drops/orders_ragged.csv",
        "drops/orders_latin.csv",
        "drops/orders_cut.parquet",
    }
    assert by_source["drops/orders_empty.csv"]["_row"] == 0
    assert "empty (0 bytes)" in by_source["drops/orders_empty.csv"]["_reason"]
    assert by_source["drops/orders_empty.csv"]["_raw"] == "b''"
    ragged = by_source["drops/orders_ragged.csv"]
    assert ragged["_row"] == 2
    assert ragged["_raw"] == "O6,C6,600,extra"
    assert "row 2 has 4 fields but the header has 3" in ragged["_reason"]
    assert by_source["drops/orders_latin.csv"]["_reason"].startswith("unreadable file: byte")
    assert "encoding" in by_source["drops/orders_latin.csv"]["_reason"]
    cut = by_source["drops/orders_cut.parquet"]
    assert cut["_reason"].startswith("unreadable file: not a readable Parquet file")
    assert cut["_raw"] == repr(full[:200])

    # Unreadable files are not marked processed: once fixed, the next run picks them up.
    (drops / "orders_cut.parquet").write_bytes(full)
    (drops / "orders_empty.csv").write_text(HEADER + "O9,C9,900\n", encoding="utf-8")
    fixed = _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    assert sorted(fixed.frame["_source"].unique()) == ["drops/orders_cut.parquet", "drops/orders_empty.csv"]
    assert len(fixed.frame) == 51
    assert [r["_source"] for r in fixed.rejects] == ["drops/orders_latin.csv"]


def test_parquet_files_keep_types_and_columns_are_renamed(home: Path, tmp_path: Path) -> None:
    folder = home / "exports"
    folder.mkdir()
    lines = pd.DataFrame(
        {
            "OrderNo": ["O1", "O1", "O2"],
            "line_no": pd.array([1, 2, 1], dtype="int64"),
            "qty": pd.array([2, 1, 5], dtype="int64"),
            "unit_price_vnd": [10.5, 20.0, 3.25],
        }
    )
    (folder / "order_lines_20261124.parquet").write_bytes(_parquet_bytes(lines))
    (folder / "orders_20261124.csv").write_text("so_don;tong\nO1;41\nO2;16\n", encoding="utf-8-sig")
    source = _source(
        "exports",
        tables={"orders": "orders_*.csv", "order_lines": "order_lines_*.parquet"},
        columns={"order_lines": {"OrderNo": "order_id", "qty": "quantity"}, "orders": {"so_don": "order_id"}},
        delimiter=";",
    )
    assert source.tables() == ["orders", "order_lines"]
    result = _run(source, _ctx(tmp_path), "order_lines")
    frame = result.frame
    assert list(frame.columns) == ["order_id", "line_no", "quantity", "unit_price_vnd", "_source", "_row"]
    assert frame["quantity"].dtype == "int64"
    assert frame["unit_price_vnd"].tolist() == [10.5, 20.0, 3.25]
    assert frame["_row"].tolist() == [1, 2, 3]
    assert set(frame["_source"]) == {"exports/order_lines_20261124.parquet"}
    orders = _run(source, _ctx(tmp_path), "orders").frame
    assert orders["order_id"].tolist() == ["O1", "O2"]
    assert orders["tong"].tolist() == ["41", "16"]


def test_csv_and_parquet_in_one_table_can_be_written_to_parquet(home: Path, tmp_path: Path) -> None:
    folder = home / "mixed"
    folder.mkdir()
    (folder / "orders_a.csv").write_text(HEADER + "O1,C1,100\n", encoding="utf-8")
    typed = pd.DataFrame({"order_id": ["O2"], "customer_id": ["C2"], "total_vnd": pd.array([200], dtype="int64")})
    (folder / "orders_b.parquet").write_bytes(_parquet_bytes(typed))
    frame = _run(_source("mixed", tables={"orders": "orders_*"}), _ctx(tmp_path)).frame
    assert frame["total_vnd"].tolist() == ["100", "200"]
    assert len(pd.read_parquet(io.BytesIO(frame.to_parquet(index=False)))) == 2


def test_tables_do_not_share_a_ledger(home: Path, tmp_path: Path) -> None:
    folder = home / "both"
    folder.mkdir()
    content = HEADER + "O1,C1,100\n"
    (folder / "orders_1.csv").write_text(content, encoding="utf-8")
    (folder / "stores_1.csv").write_text(content, encoding="utf-8")
    source = _source("both", tables={"orders": "orders_*.csv", "stores": "stores_*.csv"})
    assert len(_run(source, _ctx(tmp_path), "orders").frame) == 1
    stores = _run(source, _ctx(tmp_path), "stores")
    assert len(stores.frame) == 1 and stores.notes == []


def test_subfolders_and_hidden_files_are_not_deliveries(drops: Path, tmp_path: Path) -> None:
    (drops / "archive").mkdir()
    (drops / "archive" / "orders_old.csv").write_text(HEADER + "X1,C,1\n", encoding="utf-8")
    (drops / ".orders_partial.csv").write_text(HEADER + "X2,C,1\n", encoding="utf-8")
    assert _run(_source("drops"), _ctx(tmp_path)).frame["order_id"].tolist() == ["O1", "O2", "O3"]


def test_missing_folder_and_bad_options_are_named(home: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _source("nowhere").extract("orders", _ctx(tmp_path))
    with pytest.raises(ConfigError, match="unknown canonical table 'ordres'"):
        _source("drops", tables={"ordres": "*.csv"})
    with pytest.raises(ConfigError, match="unknown encoding"):
        _source("drops", encoding="utf-99")


# -- the same flow on S3 ----------------------------------------------------------------------------


def _upload(bucket: str, endpoint: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_drop_loads_skips_redelivery_and_rejects_truncated(
    s3_bucket: str, s3_endpoint: str, tmp_path: Path, home: Path
) -> None:
    _upload(s3_bucket, s3_endpoint, "drops/orders_1.csv", (HEADER + "O1,C1,100\nO2,C2,200\n").encode())
    _upload(s3_bucket, s3_endpoint, "drops/orders_2.csv", (HEADER + "O3,C3,300\n").encode())
    _upload(s3_bucket, s3_endpoint, "drops2/orders_9.csv", (HEADER + "X,X,1\n").encode())  # a sibling prefix
    source = _source(f"s3://{s3_bucket}/drops/", tables={"orders": "orders_*"})
    first = _run(source, _ctx(tmp_path))
    assert first.frame["order_id"].tolist() == ["O1", "O2", "O3"]
    assert first.frame["_source"].tolist() == ["drops/orders_1.csv"] * 2 + ["drops/orders_2.csv"]
    assert first.frame["_row"].tolist() == [1, 2, 1]

    full = _parquet_bytes(pd.DataFrame({"order_id": [f"P{i}" for i in range(50)]}))
    _upload(s3_bucket, s3_endpoint, "drops/orders_3.parquet", full[: len(full) // 2])
    _upload(s3_bucket, s3_endpoint, "drops/orders_2_again.csv", (HEADER + "O3,C3,300\n").encode())
    _upload(s3_bucket, s3_endpoint, "drops/orders_4.csv", (HEADER + "O4,C4,400\n").encode())
    second = _run(source, _ctx(tmp_path, DAY + timedelta(days=1)))
    assert second.frame["order_id"].tolist() == ["O4"]
    assert second.notes == [
        "re-delivered: orders_2_again.csv has the same content as orders_2.csv (processed for 2026-11-24)"
    ]
    assert [(r["_source"], r["_row"]) for r in second.rejects] == [("drops/orders_3.parquet", 0)]
    assert "not a readable Parquet file" in second.rejects[0]["_reason"]

"""The lake's commit protocol, on a local folder and on S3: a partition is visible only when complete,
re-running a date replaces it, and a writer killed mid-way leaves readers on the previous data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tasks import settings
from tasks.lake import MANIFEST, Lake
from tasks.storage import ObjectStore
from tasks.storage_s3 import S3Store

D1, D2, D3, D4 = date(2026, 11, 21), date(2026, 11, 22), date(2026, 11, 23), date(2026, 11, 24)
TABLE = ("raw", "crm", "customers")


def _frame(ids: list[str]) -> pd.DataFrame:
    names = ["Nguyễn Thị Hương", None, "Trần Văn Đức", "Lê Ánh"]
    return pd.DataFrame(
        {
            "customer_id": ids,
            "full_name": [names[i % len(names)] for i in range(len(ids))],
            "spend": [None if i % 2 else 1.5 * i for i in range(len(ids))],
            "seen_at": pd.to_datetime([f"2026-11-2{i % 4}T17:30:00Z" for i in range(len(ids))], utc=True).tz_convert(
                "Asia/Ho_Chi_Minh"
            ),
        }
    )


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return Lake.local(tmp_path / "lake")
    bucket = request.getfixturevalue("s3_bucket")
    return Lake(S3Store(bucket, prefix="lake"), cache_dir=tmp_path / "cache")


class DiesBeforeManifest:
    """A store whose writer "dies" right before the commit point: data is written, the manifest is not."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def put(self, key: str, data: bytes) -> None:
        if key.endswith(MANIFEST):
            raise KeyboardInterrupt("writer killed before committing")
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)


def _parquet_files(lake: Lake, day: date) -> list[str]:
    return [k for k in lake.store.list(Lake.prefix(*TABLE, day)) if k.endswith(".parquet")]


def test_round_trip_keeps_vietnamese_text_nulls_and_timezones(lake: Lake) -> None:
    frame = _frame(["C1", "C2", "C3"])
    location = lake.write(*TABLE, D1, frame)
    assert location == lake.location(*TABLE, D1)
    back = lake.read(*TABLE, D1)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back.loc[0, "full_name"] == "Nguyễn Thị Hương"
    assert pd.isna(back.loc[1, "full_name"]) and pd.isna(back.loc[1, "spend"])
    assert str(back["seen_at"].dt.tz) == "Asia/Ho_Chi_Minh"
    assert back.loc[0, "seen_at"] == pd.Timestamp("2026-11-20T17:30:00Z")


def test_local_files_are_parquet_an_engine_can_scan(lake: Lake) -> None:
    lake.write(*TABLE, D1, _frame(["C1", "C2", "C3"]))
    files = lake.local_files(*TABLE, D1)
    assert len(files) == 1 and all(Path(f).is_file() for f in files)
    rows = duckdb.connect().read_parquet(files).order("customer_id").fetchall()
    assert [r[0] for r in rows] == ["C1", "C2", "C3"]
    assert rows[2][1] == "Trần Văn Đức"


def test_rewriting_a_date_replaces_only_that_date(lake: Lake) -> None:
    lake.write(*TABLE, D1, _frame(["OLD1", "OLD2"]))
    lake.write(*TABLE, D2, _frame(["OTHER"]))
    lake.write(*TABLE, D1, _frame(["NEW1", "NEW2", "NEW3"]))

    assert lake.read(*TABLE, D1)["customer_id"].tolist() == ["NEW1", "NEW2", "NEW3"]
    listed = [k.removeprefix(Lake.prefix(*TABLE, D1)) for k in lake.store.list(Lake.prefix(*TABLE, D1))]
    assert len(listed) == 2 and listed[0] == MANIFEST
    assert re.fullmatch(r"part-[0-9a-f]{32}-00000\.parquet", listed[1])
    assert lake.manifest(*TABLE, D1)["rows"] == 3  # type: ignore[index]
    assert lake.read(*TABLE, D2)["customer_id"].tolist() == ["OTHER"]
    assert lake.partitions(*TABLE) == [D1, D2]


def test_history_starts_at_the_latest_snapshot(lake: Lake) -> None:
    lake.write(*TABLE, D1, _frame(["A", "B"]), mode="snapshot")
    lake.write(*TABLE, D2, _frame(["C"]), mode="increment")
    lake.write(*TABLE, D3, _frame(["A", "B", "C"]), mode="snapshot")
    lake.write(*TABLE, D4, _frame(["D"]), mode="increment")

    latest = lake.history(*TABLE, D4)
    assert [(p.day, p.mode, p.rows) for p in latest] == [(D3, "snapshot", 3), (D4, "increment", 1)]
    assert duckdb.connect().read_parquet(latest[1].files).fetchall()[0][0] == "D"
    assert [p.day for p in lake.history(*TABLE, D2)] == [D1, D2]
    assert [p.day for p in lake.history(*TABLE, D3)] == [D3]
    assert lake.history(*TABLE, date(2026, 11, 1)) == []

    events = ("raw", "web", "events")
    lake.write(*events, D2, _frame(["E1"]), mode="increment")
    lake.write(*events, D3, _frame(["E2"]), mode="increment")
    assert [p.day for p in lake.history(*events, D4)] == [D2, D3]


def test_missing_partition_names_its_location(lake: Lake) -> None:
    lake.write(*TABLE, D1, _frame(["C1"]))
    assert not lake.exists(*TABLE, D2)
    with pytest.raises(FileNotFoundError, match=re.escape(lake.location(*TABLE, D2))) as exc:
        lake.read(*TABLE, D2)
    assert "dt=2026-11-22" in str(exc.value)
    if isinstance(lake.store, S3Store):
        assert str(exc.value).count(f"s3://{lake.store.bucket}/lake/raw/") == 1


def test_text_objects_round_trip(lake: Lake) -> None:
    where = lake.put_text("validation", "crm", "customers", D1, "report.html", "<p>Khách hàng: Đà Nẵng</p>")
    assert where.endswith("dt=2026-11-21/report.html")
    assert lake.get_text("validation", "crm", "customers", D1, "report.html") == "<p>Khách hàng: Đà Nẵng</p>"
    assert lake.partitions("validation", "crm", "customers") == []  # no manifest: not a data partition


def test_writer_killed_before_manifest_keeps_previous_partition(lake: Lake) -> None:
    lake.write(*TABLE, D1, _frame(["OLD1", "OLD2"]))
    doomed = Lake(DiesBeforeManifest(lake.store), cache_dir=lake.cache_dir)
    with pytest.raises(KeyboardInterrupt):
        doomed.write(*TABLE, D1, _frame(["NEW1"]))

    assert len(_parquet_files(lake, D1)) == 2  # the new data file did land...
    assert lake.read(*TABLE, D1)["customer_id"].tolist() == ["OLD1", "OLD2"]  # ...but nobody reads it
    assert lake.manifest(*TABLE, D1)["rows"] == 2  # type: ignore[index]

    lake.write(*TABLE, D1, _frame(["NEW1"]))  # the re-run commits and sweeps the orphan
    assert lake.read(*TABLE, D1)["customer_id"].tolist() == ["NEW1"]
    assert len(_parquet_files(lake, D1)) == 1


def test_first_write_killed_before_manifest_stays_invisible(lake: Lake) -> None:
    doomed = Lake(DiesBeforeManifest(lake.store), cache_dir=lake.cache_dir)
    with pytest.raises(KeyboardInterrupt):
        doomed.write(*TABLE, D1, _frame(["NEW1"]))
    assert len(_parquet_files(lake, D1)) == 1
    assert not lake.exists(*TABLE, D1)
    assert lake.partitions(*TABLE) == []
    assert lake.history(*TABLE, D1) == []
    with pytest.raises(FileNotFoundError):
        lake.read(*TABLE, D1)


WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import date
    import pandas as pd
    from tasks.lake import Lake
    from tasks.storage_s3 import S3Store

    class SlowManifest(S3Store):
        def put(self, key: str, data: bytes) -> None:
            if key.endswith("_manifest.json"):
                time.sleep(60)  # the test kills us here, between data file and commit
            super().put(key, data)

    Lake(SlowManifest(sys.argv[1], prefix="lake")).write(
        "raw", "crm", "customers", date.fromisoformat(sys.argv[2]), pd.DataFrame({"customer_id": ["NEW1"]})
    )
    """
)


def test_sigkilled_writer_process_leaves_previous_partition_on_s3(s3_bucket: str, tmp_path: Path) -> None:
    lake = Lake(S3Store(s3_bucket, prefix="lake"), cache_dir=tmp_path / "cache")
    lake.write(*TABLE, D1, _frame(["OLD1", "OLD2"]))
    committed = lake.manifest(*TABLE, D1)

    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, s3_bucket, D1.isoformat()],
        cwd=settings.PROJECT_ROOT,
        env=os.environ.copy(),  # the loopback endpoint and fake AWS_* keys set by the fixtures
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while len(_parquet_files(lake, D1)) < 2:
            assert proc.poll() is None, f"writer exited early: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "writer never put its data file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert lake.manifest(*TABLE, D1) == committed
    assert lake.read(*TABLE, D1)["customer_id"].tolist() == ["OLD1", "OLD2"]
    fresh = Lake(S3Store(s3_bucket, prefix="lake"), cache_dir=tmp_path / "other-cache")  # no cached files
    assert fresh.read(*TABLE, D1)["customer_id"].tolist() == ["OLD1", "OLD2"]
    assert fresh.partitions(*TABLE) == [D1]
    assert json.loads(fresh.store.get(Lake.prefix(*TABLE, D1) + MANIFEST))["rows"] == 2

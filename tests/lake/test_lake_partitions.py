"""The lake shows a partition only when complete and replaces it whole on re-run."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.lake import Lake

DAY = date(2026, 11, 24)


def _frame(n: int, label: str) -> pd.DataFrame:
    return pd.DataFrame({"id": list(range(n)), "label": [f"{label}-{i}" for i in range(n)]})


def _hidden_dirs(table_dir: Path) -> list[str]:
    return [p.name for p in table_dir.iterdir() if p.name.startswith((".staging-", ".retired-"))]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    frame = pd.DataFrame({"id": [1, 2, 3], "name": ["Hà Nội", "Huế", None], "x": [1.5, None, 3.0]})
    path = lake.write("raw", "pos", "orders", DAY, frame)
    assert path == tmp_path / "raw" / "source=pos" / "table=orders" / "dt=2026-11-24"
    assert lake.exists("raw", "pos", "orders", DAY)
    pd.testing.assert_frame_equal(lake.read("raw", "pos", "orders", DAY), frame)


def test_rewrite_replaces_partition(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write("raw", "pos", "orders", DAY, _frame(5, "old"))
    final = lake.write("raw", "pos", "orders", DAY, _frame(2, "new"))
    got = lake.read("raw", "pos", "orders", DAY)
    assert got["label"].tolist() == ["new-0", "new-1"]
    assert [p.name for p in final.iterdir()] == ["part-00000.parquet"]
    table_dir = final.parent
    assert [p.name for p in table_dir.iterdir()] == ["dt=2026-11-24"]
    assert _hidden_dirs(table_dir) == []


def test_failed_write_keeps_previous_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash mid-write (partial file, then an error) must not touch the visible partition."""
    lake = Lake(tmp_path)
    lake.write("raw", "pos", "orders", DAY, _frame(3, "good"))

    def broken(self: pd.DataFrame, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        lake.write("raw", "pos", "orders", DAY, _frame(10, "bad"))
    monkeypatch.undo()

    got = lake.read("raw", "pos", "orders", DAY)
    assert got["label"].tolist() == ["good-0", "good-1", "good-2"]
    table_dir = lake.partition("raw", "pos", "orders", DAY).parent
    assert [p.name for p in table_dir.iterdir()] == ["dt=2026-11-24"]
    assert _hidden_dirs(table_dir) == []


def test_failed_first_write_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = Lake(tmp_path)

    def broken(self: pd.DataFrame, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"PAR1 partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(RuntimeError):
        lake.write("raw", "pos", "orders", DAY, _frame(1, "x"))
    assert not lake.exists("raw", "pos", "orders", DAY)
    assert _hidden_dirs(lake.partition("raw", "pos", "orders", DAY).parent) == []


def test_read_missing_partition_names_path(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    with pytest.raises(FileNotFoundError) as exc:
        lake.read("clean", "crm", "contacts", DAY)
    assert str(lake.partition("clean", "crm", "contacts", DAY)) in str(exc.value)


def test_other_dates_are_untouched(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    other = date(2026, 11, 23)
    lake.write("raw", "pos", "orders", other, _frame(1, "yesterday"))
    lake.write("raw", "pos", "orders", DAY, _frame(1, "today"))
    lake.write("raw", "pos", "orders", DAY, _frame(1, "today-again"))
    assert lake.read("raw", "pos", "orders", other)["label"].tolist() == ["yesterday-0"]


def test_failed_swap_restores_previous_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If moving the new partition into place fails after the old one was moved aside, the old one
    must come back; otherwise a crash at that instant would leave the date with no partition at all."""
    lake = Lake(tmp_path)
    lake.write("raw", "pos", "orders", DAY, _frame(3, "good"))
    real_rename = Path.rename

    def flaky(self: Path, target: Any) -> Path:
        if self.name.startswith(".staging-"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", flaky)
    with pytest.raises(OSError, match="rename failed"):
        lake.write("raw", "pos", "orders", DAY, _frame(10, "bad"))
    monkeypatch.undo()

    assert lake.read("raw", "pos", "orders", DAY)["label"].tolist() == ["good-0", "good-1", "good-2"]
    table_dir = lake.partition("raw", "pos", "orders", DAY).parent
    assert _hidden_dirs(table_dir) == []

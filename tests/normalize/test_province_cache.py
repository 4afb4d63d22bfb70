"""The province index is built from the package once per package version and then read from disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.normalize import province


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AUDIENCES_HOME", str(tmp_path))
    province._index.cache_clear()
    province.canonical_province.cache_clear()
    yield tmp_path
    province._index.cache_clear()
    province.canonical_province.cache_clear()


def test_index_is_written_once_and_read_back(fresh_home: Path) -> None:
    assert province.canonical_province("TP.HCM") == "Hồ Chí Minh"
    path = province._cache_file()
    assert path.parent == fresh_home / "cache" and path.is_file()
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored == province._build_index()
    province._index.cache_clear()
    province.canonical_province.cache_clear()
    path.write_text(json.dumps({**stored, "saigonx": "Hồ Chí Minh"}, ensure_ascii=False), encoding="utf-8")
    assert province.canonical_province("Saigonx") == "Hồ Chí Minh"  # proves the file is what was read


def test_unreadable_or_foreign_cache_is_rebuilt(fresh_home: Path) -> None:
    path = province._cache_file()
    path.parent.mkdir(parents=True)
    for bad in ("{not json", json.dumps({"hanoi": "Atlantis"}), "[]"):
        path.write_text(bad, encoding="utf-8")
        province._index.cache_clear()
        province.canonical_province.cache_clear()
        assert province.canonical_province("Ha Noi") == "Hà Nội"
        assert json.loads(path.read_text(encoding="utf-8")) == province._build_index()


def test_cache_name_changes_with_what_the_index_depends_on(fresh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = province._cache_file()
    monkeypatch.setitem(province._ALIASES, "hn", "Hà Nội")
    assert province._cache_file() != before

"""One definition of a page's path: unify's page_path column and the first_page rule agree on it."""

from __future__ import annotations

import duckdb
import ibis
import pytest
from pydantic import ValidationError

from tasks.normalize.url import page_path_sql
from tasks.segments.compile import _page_equals
from tasks.segments.rules import EventWhere, PageMatch

CASES = {
    "https://shop.vn/": "/",
    "https://shop.vn": "/",  # a bare host is its home page
    "https://shop.vn?utm=x": "/",
    "HTTPS://Shop.VN/Sale#top": "/Sale",  # the path keeps its case
    "/c/backpack?utm_source=ads": "/c/backpack",
    "?utm=x": "/",
    "": "/",
    "https://shop.vn//": "//",
    "//cdn/x": "//cdn/x",  # recorded pages are never protocol-relative
    "shop.vn/x": "shop.vn/x",  # no scheme: not a host
    "android-app://vn.shop/p/P-1?x": "/p/P-1",
    None: None,
}


def test_unify_extracts_the_path_of_each_page() -> None:
    con = duckdb.connect()
    got = dict(con.execute(f"SELECT p, {page_path_sql('p')} FROM unnest(?) AS t(p)", [list(CASES)]).fetchall())
    assert got == CASES


@pytest.mark.parametrize("path", ["/", "/Sale", "/c/backpack", "//", "/p/P-1"])
def test_the_first_page_rule_matches_the_pages_whose_path_unify_stores(path: str) -> None:
    pages = list(CASES)
    con = ibis.duckdb.connect()
    table = ibis.memtable({"page": pages}, schema={"page": "string"})
    got = con.execute(table.select(hit=_page_equals(table.page, path).fill_null(False)))["hit"].tolist()
    assert got == [CASES[p] == path for p in pages]


@pytest.mark.parametrize("value", ["/sale?utm=x", "/c/backpack#top"])
def test_a_path_value_with_a_query_or_fragment_is_refused_with_the_fix(value: str) -> None:
    with pytest.raises(ValidationError, match=r"never holds '\?' or '#'; write '/(sale|c/backpack)'"):
        EventWhere.model_validate({"page_equals": value})
    with pytest.raises(ValidationError, match="never holds"):
        PageMatch.model_validate({"equals": value})
    assert EventWhere.model_validate({"page_equals": "https://shop.vn/sale?utm=x"}).page_equals  # a whole URL

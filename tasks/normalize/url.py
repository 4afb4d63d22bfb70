"""The path of a page URL, the one definition both unify (the ``page_path`` column) and rules use.

A rule such as "visited the home page 5 times" compares paths, not URLs: the same page arrives as
``https://shop.vn/``, ``https://shop.vn/?utm_source=fb`` or ``/``. Unify stores each web event's path
once, so a rule over millions of page views compares a short string instead of running a regular
expression per row; the ``first_page`` rule applies the same pattern to the one URL per customer.

The path is what follows an optional ``scheme://host`` up to a ``?``, a ``#`` or the end, and an
empty path is ``/`` (a bare host is its home page). ``//x`` is a path here, not a host: pages are
what the site recorded, never protocol-relative references. The pattern is plain RE2 and Java regex
syntax, so DuckDB and Spark extract the same path.
"""

from __future__ import annotations

PAGE_PATH_PATTERN = r"^(?:[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)?([^?#]*)"


def page_path_sql(column: str) -> str:
    """DuckDB SQL for the path of ``column`` (a quoted identifier); NULL stays NULL."""
    pattern = PAGE_PATH_PATTERN.replace("'", "''")
    path = f"nullif(regexp_extract({column}, '{pattern}', 1), '')"
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE coalesce({path}, '/') END"


def is_path(value: str) -> bool:
    """Whether a rule's page value names a path (starts with "/") rather than a whole URL."""
    return value.startswith("/")

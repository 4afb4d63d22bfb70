"""Compile a validated rule tree to an Ibis boolean expression over the feature table.

Literals enter the expression as typed Ibis literals, never as SQL text. Windows are computed from
the run's business day, so the same rule answers the same for a backfilled date.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir

from tasks.features.catalog import BY_NAME
from tasks.normalize.province import canonical_province
from tasks.segments.rules import All, AnyOf, Compare, Not, Purchased, Rule, Window
from tasks.settings import RunWindow


class Compiler:
    def __init__(self, features: ir.Table, purchases: ir.Table, window: RunWindow) -> None:
        self.f = features
        self.p = purchases
        self.window = window

    def compile(self, rule: Rule) -> ir.BooleanValue:
        if isinstance(rule, All):
            parts = [self.compile(r) for r in rule.all]
            out = parts[0]
            for part in parts[1:]:
                out = out & part
            return out
        if isinstance(rule, AnyOf):
            parts = [self.compile(r) for r in rule.any]
            out = parts[0]
            for part in parts[1:]:
                out = out | part
            return out
        if isinstance(rule, Not):
            # A missing value is "not in the segment" for the inner rule, so NOT makes it a member.
            return ~self.compile(rule.not_).fill_null(False)
        if isinstance(rule, Purchased):
            return self._purchased(rule)
        return self._compare(rule)

    def _literal(self, field: str, value: Any) -> Any:
        kind = BY_NAME[field].kind
        if field == "province" and isinstance(value, str):
            # Marketers write "HCMC" or "Sài Gòn"; the feature holds the canonical name.
            return canonical_province(value) or value
        if kind == "timestamp" and isinstance(value, date) and not isinstance(value, datetime):
            return self.window.day_start(value)
        return value

    def _compare(self, rule: Compare) -> ir.BooleanValue:
        col = self.f[rule.field]
        op = rule.op
        if op == "is_set":
            return col.notnull() & (col != "") if BY_NAME[rule.field].kind == "string" else col.notnull()
        if op == "is_not_set":
            return col.isnull() | (col == "") if BY_NAME[rule.field].kind == "string" else col.isnull()
        if op in {"in", "not_in"}:
            values = [self._literal(rule.field, v) for v in rule.value]
            expr = col.isin(values)
            return expr if op == "in" else ~expr
        if op == "between":
            low, high = (self._literal(rule.field, v) for v in rule.value)
            return col.between(low, high)
        if op == "contains":
            return col.lower().contains(str(rule.value).lower())
        value = self._literal(rule.field, rule.value)
        return {
            "eq": lambda: col == value,
            "ne": lambda: col != value,
            "gt": lambda: col > value,
            "gte": lambda: col >= value,
            "lt": lambda: col < value,
            "lte": lambda: col <= value,
        }[op]()

    def window_bounds(self, within: Window) -> tuple[datetime, datetime]:
        first_day = self.window.run_date - timedelta(days=within.last_days - 1)
        return self.window.day_start(first_day), self.window.as_of

    def _purchased(self, rule: Purchased) -> ir.BooleanValue:
        spec = rule.purchased
        p = self.p
        cond = p.customer_key.notnull()
        if spec.category:
            cond = cond & p.category.lower().isin([c.lower() for c in spec.category])
        if spec.product:
            cond = cond & p.product_id.isin(spec.product)
        start, end = self.window_bounds(spec.within) if spec.within else (None, self.window.as_of)
        cond = cond & (p.ordered_at < ibis.literal(end))
        if start is not None:
            cond = cond & (p.ordered_at >= ibis.literal(start))
        buyers = (
            p.filter(cond)
            .group_by("customer_key")
            .aggregate(n=p.order_id.nunique())
            .filter(lambda t: t.n >= spec.min_orders)
        )
        return self.f.customer_key.isin(buyers.customer_key)

"""Ready-made rule packs: standard segment families a marketer switches on by name.

A pack expands into ordinary segments (the same rule language, the same validation), so every
pack segment can be previewed, explained and exported like a hand-written one, and tuned by
overriding its thresholds in ``segments.yaml``:

    packs:
      - pack: rfm                    # Champions, Loyal, ... Lost (+ unclassified)
      - pack: lifecycle
        params: {new_days: 45}       # tune a threshold
      - pack: nps

Segments of one pack form a priority group (first listed wins), so each customer lands in exactly
one segment of the pack; ``<prefix>unclassified`` holds the customers no rule of the pack covers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = dict[str, Any]


def _f(field: str, op: str, value: Any = None) -> Rule:
    return {"field": field, "op": op} | ({} if value is None else {"value": value})


def _between(field: str, low: Any, high: Any) -> Rule:
    return _f(field, "between", [low, high])


def rfm(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    """The 11 standard RFM groups on quintile scores (5 = best). Order is priority."""
    r, f, m = "r_score", "f_score", "m_score"
    return [
        ("champions", "Champions: bought recently, buy often and spend the most",
         {"all": [_between(r, 4, 5), _between(f, 4, 5), _between(m, 4, 5)]}),
        ("cant_lose_them", "Can't lose them: used to buy often and spend big, long ago",
         {"all": [_f(r, "eq", 1), _between(f, 4, 5), _between(m, 4, 5)]}),
        ("at_risk", "At risk: spent big and often, but not for a long time",
         {"all": [_between(r, 1, 2), _between(f, 3, 5), _between(m, 3, 5)]}),
        ("loyal", "Loyal: buy regularly, respond to promotions",
         {"all": [_between(r, 3, 5), _between(f, 3, 5)]}),
        ("potential_loyalist", "Potential loyalists: recent customers with average frequency",
         {"all": [_between(r, 4, 5), _between(f, 2, 3)]}),
        ("new", "New: bought most recently, only once",
         {"all": [_f(r, "eq", 5), _f(f, "eq", 1)]}),
        ("promising", "Promising: recent shoppers who have not spent much",
         {"all": [_f(r, "eq", 4), _f(f, "eq", 1)]}),
        ("need_attention", "Need attention: above-average recency and frequency",
         {"all": [_f(r, "eq", 3), _f(f, "eq", 3)]}),
        ("about_to_sleep", "About to sleep: below-average recency and frequency",
         {"all": [_f(r, "eq", 3), _between(f, 1, 2)]}),
        ("hibernating", "Hibernating: last purchase long ago, few orders",
         {"all": [_f(r, "eq", 2), _between(f, 1, 2)]}),
        ("lost", "Lost: lowest recency and frequency",
         {"all": [_f(r, "eq", 1), _between(f, 1, 2)]}),
    ]  # fmt: skip


def _no_orders_between(first_days_ago: int, last_days_ago: int) -> Rule:
    return {"purchased": {"within": {"between_days_ago": [first_days_ago, last_days_ago]}, "orders": {"eq": 0}}}


def _orders_between(first_days_ago: int, last_days_ago: int) -> Rule:
    return {"purchased": {"within": {"between_days_ago": [first_days_ago, last_days_ago]}, "orders": {"gte": 1}}}


def lifecycle(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    new_days, active_days, churn_days = p.get("new_days", 30), p.get("active_days", 90), p.get("churn_days", 180)
    ever = 3_650  # the rule language looks back at most ten years
    return [
        ("prospect", "Prospects: known, never bought", _f("orders", "eq", 0)),
        ("reactivated", f"Reactivated: bought in the last {new_days} days after {churn_days}+ days without",
         {"all": [_f("recency_days", "lt", new_days), _no_orders_between(new_days, churn_days + new_days - 1),
                  _orders_between(churn_days + new_days, ever)]}),
        ("new", f"New: first purchase in the last {new_days} days",
         {"all": [_f("recency_days", "lt", new_days), _no_orders_between(new_days, ever)]}),
        ("active", f"Active: bought in the last {active_days} days", _f("recency_days", "lt", active_days)),
        ("at_risk", f"At risk: last purchase {active_days}-{churn_days} days ago",
         _between("recency_days", active_days, churn_days - 1)),
        ("churned", f"Churned: no purchase for {churn_days} days or more", _f("recency_days", "gte", churn_days)),
    ]  # fmt: skip


def value_tiers(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    low = p.get("low_value_vnd", 500_000)
    return [
        ("negative", "Negative: detractors or unhappy with service",
         {"any": [_f("nps_latest", "lte", 6), _f("csat_latest", "lte", 2)]}),
        ("advocate", "Advocates: promoters who buy again",
         {"all": [_f("nps_latest", "gte", 9), _f("orders", "gte", 2)]}),
        ("loyal", "Loyal: frequent and recent", {"all": [_f("orders", "gte", p.get("loyal_orders", 5)),
                                                          _f("recency_days", "lte", 90)]}),
        ("potential", "Potential: a few recent orders",
         {"all": [_between("orders", 2, 4), _f("recency_days", "lte", 60)]}),
        ("low_value", f"Low value: spent under {low:,} VND in total",
         {"all": [_f("orders", "gte", 1), _f("monetary_total", "lt", low)]}),
    ]  # fmt: skip


def shopper_types(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    return [
        ("loyal", "Loyal shoppers", _f("orders", "gte", p.get("loyal_orders", 5))),
        ("bargain_hunter", "Bargain hunters: most orders carry a discount",
         {"all": [_f("orders", "gte", 2), _f("discount_share", "gte", p.get("discount_share", 0.5))]}),
        ("impulse", "Impulse buyers: buy with little browsing",
         {"all": [_f("orders_last_90d", "gte", 1), _f("product_views_30d", "lte", 1)]}),
        ("wandering", "Wanderers: browse a lot, rarely buy",
         {"all": [_f("web_sessions_30d", "gte", 3), _f("orders_last_90d", "eq", 0)]}),
        ("need_based", "Need-based: buy occasionally, for a purpose", _between("orders", 1, 2)),
    ]  # fmt: skip


def purchase_psychology(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    return [
        ("researches_first", "Research first: many product views before buying",
         {"all": [_f("orders_last_30d", "gte", 1), _f("product_views_30d", "gte", p.get("research_views", 10))]}),
        ("buys_at_once", "Buy at once: purchase with few product views",
         {"all": [_f("orders_last_30d", "gte", 1), _f("product_views_30d", "lte", 2)]}),
        ("hesitates", "Hesitate: add to cart but do not buy",
         {"all": [_f("add_to_cart_30d", "gte", 1), _f("orders_last_30d", "eq", 0)]}),
    ]  # fmt: skip


def nps(p: dict[str, Any]) -> list[tuple[str, str, Rule]]:
    return [
        ("promoters", "NPS promoters (9-10)", _f("nps_latest", "gte", 9)),
        ("passives", "NPS passives (7-8)", _between("nps_latest", 7, 8)),
        ("detractors", "NPS detractors (0-6)", _f("nps_latest", "lte", 6)),
    ]


PACKS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, Rule]]]] = {
    "rfm": rfm,
    "lifecycle": lifecycle,
    "value_tiers": value_tiers,
    "shopper_types": shopper_types,
    "purchase_psychology": purchase_psychology,
    "nps": nps,
}


def expand(pack: str, params: dict[str, Any] | None = None, prefix: str | None = None) -> list[dict[str, Any]]:
    """Segment definitions (as YAML would hold them) for one pack, in priority order."""
    if pack not in PACKS:
        from tasks.config.loader import suggest

        raise ValueError(f"unknown pack {pack!r}" + suggest(pack, list(PACKS)))
    prefix = f"{pack}_" if prefix is None else prefix
    defs = PACKS[pack](params or {})
    out: list[dict[str, Any]] = []
    for priority, (name, title, rule) in enumerate(defs, start=1):
        out.append(
            {
                "name": f"{prefix}{name}",
                "title": title,
                "rule": rule,
                "priority_group": {"name": pack, "priority": priority},
            }
        )
    out.append(
        {
            "name": f"{prefix}unclassified",
            "title": f"Not covered by any {pack} rule",
            "rule": {"not": {"any": [{"in_segment": seg["name"]} for seg in out]}},
            "priority_group": {"name": pack, "priority": len(out) + 1},
        }
    )
    return out

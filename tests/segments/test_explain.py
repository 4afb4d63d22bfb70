"""Explanations name the clauses that decided membership, through all / any / not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.segments.explain import deciding_clauses, deciding_text, label, leaves, outcome
from tasks.segments.rules import Segment


def rule_of(rule: dict) -> object:
    return Segment.model_validate({"name": "s", "title": "S", "rule": rule}).rule


RULE = rule_of(
    {
        "all": [
            {"field": "orders", "op": "gte", "value": 3},
            {
                "any": [
                    {"field": "province", "op": "in", "value": ["Hà Nội"]},
                    {"field": "email_opt_in", "op": "eq", "value": True},
                ]
            },
            {"not": {"field": "recency_days", "op": "gt", "value": 90}},
        ]
    }
)


def table(rows: dict[str, list[bool]]) -> pd.DataFrame:
    paths = [leaf.path for leaf in leaves(RULE)]
    return pd.DataFrame(rows, index=paths).T


def test_leaf_labels_read_like_the_yaml() -> None:
    assert [leaf.label for leaf in leaves(RULE)] == [
        "orders ≥ 3",
        "province in ['Hà Nội']",
        "email_opt_in = True",
        "recency_days > 90",
    ]
    assert [leaf.path for leaf in leaves(RULE)] == [
        "rule.all[0]",
        "rule.all[1].any[0]",
        "rule.all[1].any[1]",
        "rule.all[2].not",
    ]


def test_members_are_explained_by_the_clauses_that_hold() -> None:
    truth = table({"A": [True, True, False, False], "B": [True, True, True, False]})
    assert outcome(RULE, truth).tolist() == [True, True]
    got = deciding_clauses(RULE, truth)
    assert got["A"] == "orders ≥ 3; province in ['Hà Nội']; recency_days > 90"
    assert got["B"] == "orders ≥ 3; province in ['Hà Nội']; email_opt_in = True; recency_days > 90"


def test_non_members_are_explained_by_the_clauses_that_failed() -> None:
    truth = table({"C": [False, True, True, False], "D": [True, False, False, True]})
    assert outcome(RULE, truth).tolist() == [False, False]
    got = deciding_clauses(RULE, truth, member=False)
    assert got["C"] == "orders ≥ 3"
    assert got["D"] == "province in ['Hà Nội']; email_opt_in = True; recency_days > 90"


def test_event_clause_labels_fall_back_to_their_yaml() -> None:
    rule = rule_of({"purchased": {"category": "backpack", "within": {"last_days": 30}}})
    assert label(leaves(rule)[0].node) == "purchased: {category: [backpack], within: {last_days: 30}}"


def test_wide_rules_explain_the_same_as_narrow_ones() -> None:
    """Rules of up to 64 clauses take the integer path (in the narrowest of 8, 16, 32 or 64 bits), wider
    ones the bit-row path: for each member, each must name exactly the clauses that hold, in the rule's
    order."""
    rng = np.random.default_rng(5)
    for width in (3, 8, 9, 16, 17, 32, 33, 64, 70):
        rule = rule_of({"any": [{"field": "orders", "op": "gte", "value": i} for i in range(width)]})
        paths = [leaf.path for leaf in leaves(rule)]
        arrays = {p: rng.random(200) < 0.05 for p in paths}
        texts = deciding_text(rule, arrays, 200)
        for row in range(200):
            expected = "; ".join(f"orders ≥ {i}" for i, p in enumerate(paths) if arrays[p][row])
            assert texts[row] == expected

"""The membership table's shape: categorical segment/group/reasons columns that survive combining runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.segments.evaluate import CATEGORICAL, Evaluation, concat_memberships, finalize
from tasks.segments.rules import SegmentsConfig


def _config() -> SegmentsConfig:
    rule = {"field": "orders", "op": "gte", "value": 0}
    return SegmentsConfig.model_validate(
        {
            "segments": [
                {"name": "vip", "title": "VIP", "rule": rule},
                {
                    "name": "trial",
                    "title": "Trial",
                    "rule": rule,
                    "split": {"salt": "t", "groups": {"test": 50, "holdout": 50}},
                },
            ]
        }
    )


def test_finalize_gives_categorical_columns_with_the_member_values() -> None:
    out = finalize(_config(), Evaluation.of({"vip": ["A", "B"], "trial": ["B", "C", "D"]}))
    assert all(isinstance(out[c].dtype, pd.CategoricalDtype) for c in CATEGORICAL)
    assert out[["segment", "customer_key"]].astype(str).values.tolist() == [
        ["vip", "A"], ["vip", "B"], ["trial", "B"], ["trial", "C"], ["trial", "D"],
    ]  # fmt: skip
    assert out["group"].iloc[:2].isna().all() and set(out["group"].iloc[2:]) <= {"test", "holdout"}


def test_runs_combine_without_turning_categories_into_objects() -> None:
    rules = finalize(_config(), Evaluation.of({"vip": ["A"], "trial": ["B"]}))
    clusters = pd.DataFrame(
        {"segment": ["cluster_0", "cluster_1"], "customer_key": ["A", "B"], "group": [None, None],
         "reasons": ["high spend", "new"]}
    )  # fmt: skip
    both = concat_memberships([rules, clusters])
    assert all(isinstance(both[c].dtype, pd.CategoricalDtype) for c in CATEGORICAL)
    assert both["segment"].astype(str).tolist() == ["vip", "trial", "cluster_0", "cluster_1"]
    assert both["reasons"].iloc[2:].astype(str).tolist() == ["high spend", "new"]
    assert both["customer_key"].tolist() == ["A", "B", "A", "B"]


def test_wide_code_ranges_keep_every_members_reason_and_key() -> None:
    """Codes are stored in the narrowest integer type: 200 segments with two reasons each (400 texts, past
    int8) over 300 keys must still give each member its own key, segment and reason."""
    keys = [f"K{i:03d}" for i in range(300)]
    names = [f"s{i}" for i in range(200)]
    config = SegmentsConfig.model_validate(
        {"segments": [{"name": n, "title": n, "rule": {"field": "orders", "op": "gte", "value": 0}} for n in names]}
    )
    hits, reasons, expected = {}, {}, []
    for i, name in enumerate(names):
        hit = np.array([(k + i) % 3 != 0 for k in range(len(keys))])
        members = np.flatnonzero(hit)
        codes = members % 2  # a member's reason: the first or the second text of its segment
        texts = [f"{name} reason a", f"{name} reason b"]
        hits[name], reasons[name] = hit, (codes, texts)
        expected += [[name, keys[m], texts[c]] for m, c in zip(members, codes, strict=True)]
    out = finalize(config, Evaluation(pa.array(keys, pa.large_string()), hits, reasons))
    assert out[["segment", "customer_key", "reasons"]].astype(str).values.tolist() == expected

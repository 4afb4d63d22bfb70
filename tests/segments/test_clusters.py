"""Data-driven segments: k is found, groups are recovered, names are readable and runs repeat."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from tasks.segments.clusters import NO_PURCHASES, NO_PURCHASES_NAME, ClusterResult, cluster_customers

GROUPS = {
    # name: (recency days, orders, avg order value VND, discount share, web sessions, product views)
    "champions": (5, 14, 900_000, 0.05, 12, 40),
    "lapsed": (300, 1, 150_000, 0.6, 0, 1),
    "middle": (60, 4, 350_000, 0.3, 3, 8),
}
PER_GROUP = 150
NON_BUYERS = 40


def synthetic_customers(seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    """Three behaviour groups, log-normal noise like real retail data, plus customers who never bought."""
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for g, (recency, orders, aov, discount, sessions, views) in enumerate(GROUPS.values()):
        n = PER_GROUP
        o = np.maximum(1, np.round(orders * rng.lognormal(0, 0.15, n))).astype(int)
        value = aov * rng.lognormal(0, 0.15, n)
        frames.append(
            pd.DataFrame(
                {
                    "recency_days": np.round(recency * rng.lognormal(0, 0.15, n)).astype(int),
                    "orders": o,
                    "monetary_total": np.round(o * value).astype(int),
                    "avg_order_value": value,
                    "discount_share": np.clip(discount + rng.normal(0, 0.05, n), 0, 1),
                    "web_sessions_30d": rng.poisson(sessions, n),
                    "product_views_30d": rng.poisson(views, n),
                }
            )
        )
        truth += [g] * n
    buyers = pd.concat(frames, ignore_index=True)
    never = pd.DataFrame(
        {
            "recency_days": [None] * NON_BUYERS,
            "orders": 0,
            "monetary_total": 0,
            "avg_order_value": None,
            "discount_share": None,
            "web_sessions_30d": rng.poisson(2, NON_BUYERS),
            "product_views_30d": rng.poisson(5, NON_BUYERS),
        }
    )
    features = pd.concat([buyers, never], ignore_index=True)
    order = rng.permutation(len(features))  # groups interleaved, as in a real feature table
    features = features.iloc[order].reset_index(drop=True)
    features.insert(0, "customer_key", [f"K{i:05d}" for i in range(len(features))])
    labels = np.array([*truth, *[-1] * NON_BUYERS])[order]
    return features, labels


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    return synthetic_customers()


@pytest.fixture(scope="module")
def result(data: tuple[pd.DataFrame, np.ndarray]) -> ClusterResult:
    return cluster_customers(data[0], seed=42)


def test_three_groups_are_found_and_recovered(data: tuple[pd.DataFrame, np.ndarray], result: ClusterResult) -> None:
    features, truth = data
    assert result.k == 3, result.silhouettes
    assert max(result.silhouettes, key=lambda k: result.silhouettes[k]) == 3
    assert set(result.silhouettes) == set(range(2, 9))
    got = result.assignments.loc[features["customer_key"]].to_numpy()
    buyers = truth >= 0
    assert adjusted_rand_score(truth[buyers], got[buyers]) >= 0.9


def test_non_buyers_have_their_own_cluster(data: tuple[pd.DataFrame, np.ndarray], result: ClusterResult) -> None:
    features, truth = data
    got = result.assignments.loc[features["customer_key"]].to_numpy()
    assert ((got == NO_PURCHASES) == (truth == -1)).all()
    profiles = {p.cluster_id: p for p in result.profiles}
    assert profiles[NO_PURCHASES].name == NO_PURCHASES_NAME
    assert profiles[NO_PURCHASES].size == NON_BUYERS
    assert set(profiles) == {NO_PURCHASES, 0, 1, 2}


def test_same_seed_same_clusters_ids_and_names(data: tuple[pd.DataFrame, np.ndarray], result: ClusterResult) -> None:
    again = cluster_customers(data[0].sample(frac=1.0, random_state=3), seed=42)
    assert again.assignments.sort_index().equals(result.assignments.sort_index())
    assert again.names() == result.names()
    assert again.silhouettes == result.silhouettes


def test_profiles_are_readable(result: ClusterResult) -> None:
    profiles = [p for p in result.profiles if p.cluster_id != NO_PURCHASES]
    names = [p.name for p in result.profiles]
    assert len(set(names)) == len(names)
    for p in profiles:
        assert any(w in p.name for w in ("recent", "lapsed")), p.name
        assert any(w in p.name for w in ("frequent", "one-off", "occasional")), p.name
        assert "spenders" in p.name, p.name
        assert p.size == PER_GROUP
    by_recency = sorted(profiles, key=lambda p: p.medians["recency_days"] or 0)
    assert by_recency[0].name.startswith("recent frequent high spenders")
    assert by_recency[-1].name.startswith("lapsed one-off low spenders")
    assert by_recency[-1].medians["recency_days"] == pytest.approx(300, rel=0.1)
    assert sum(p.share for p in result.profiles) == pytest.approx(1.0)
    frame = result.profile_frame()
    assert list(frame.columns[:4]) == ["cluster_id", "name", "size", "share"]
    assert "monetary_total" in frame.columns and len(frame) == 4


def test_a_different_seed_or_column_choice_still_works_fast(data: tuple[pd.DataFrame, np.ndarray]) -> None:
    features, truth = data
    started = time.monotonic()
    out = cluster_customers(features, columns=["recency_days", "orders", "monetary_total"], seed=1)
    assert time.monotonic() - started < 20
    assert out.columns == ["recency_days", "orders", "monetary_total"]
    got = out.assignments.loc[features["customer_key"]].to_numpy()
    assert adjusted_rand_score(truth[truth >= 0], got[truth >= 0]) >= 0.9


def test_bad_input_is_rejected_with_a_reason(data: tuple[pd.DataFrame, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown feature column"):
        cluster_customers(data[0], columns=["orders", "lifetime_value"])
    with pytest.raises(ValueError, match="one row per customer_key"):
        cluster_customers(pd.concat([data[0], data[0].head(1)]))

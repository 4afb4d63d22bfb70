"""Data-driven segments: k-means on scaled RFM and behaviour features, with readable cluster profiles.

Rule-based segments answer questions a marketer already has; clusters suggest the questions. To be
useful next to rules, a clustering run must be explainable (a profile and a plain-language name per
cluster) and repeatable (the same data and seed give the same clusters, ids and names), so a
segment built on "cluster 2" means the same thing tomorrow.

Choices, and why:

* Customers without orders have no recency, frequency or spend; fed to k-means they would form a
  cluster of imputed values that distorts the scaling of everyone else. They get their own
  "no purchases" cluster (id ``NO_PURCHASES``) instead.
* Money and counts are heavy-tailed (a few customers buy 100x the median); ``log1p`` keeps those few
  from owning a cluster each, then ``StandardScaler`` gives every feature equal say.
* k is chosen by silhouette score, computed on a seeded sample of at most ``SILHOUETTE_SAMPLE`` rows
  because the exact score is quadratic in the number of customers.
* Cluster ids are ordered by size (largest first), not by k-means' arbitrary label order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

DEFAULT_COLUMNS: tuple[str, ...] = (
    "recency_days",
    "orders",
    "monetary_total",
    "avg_order_value",
    "discount_share",
    "web_sessions_30d",
    "product_views_30d",
)
# Counts, money and day spans: non-negative and right-skewed in retail data.
LOG_COLUMNS: frozenset[str] = frozenset(
    {
        "recency_days",
        "orders",
        "monetary_total",
        "avg_order_value",
        "web_sessions_30d",
        "product_views_30d",
        "page_views_30d",
        "add_to_cart_30d",
        "orders_last_30d",
        "orders_last_90d",
        "orders_last_365d",
        "spend_last_30d",
        "spend_last_90d",
        "spend_last_365d",
        "survey_answers",
    }
)
NO_PURCHASES = -1
NO_PURCHASES_NAME = "no purchases"
SILHOUETTE_SAMPLE = 5_000
# A cluster's mean, in standard deviations from all buyers, beyond which a feature "stands out".
STANDOUT_Z = 0.5
EXTRA_Z = 0.75
MAX_EXTRAS = 2  # a name is a label, not a report: the profile's medians carry the rest

# (low word, middle word, high word) per feature; None = say nothing for that tier.
_WORDS: dict[str, tuple[str | None, str | None, str | None]] = {
    "recency_days": ("recent", "fairly recent", "lapsed"),
    "orders": ("one-off", "occasional", "frequent"),
    "monetary_total": ("low spenders", "mid spenders", "high spenders"),
    "avg_order_value": ("small baskets", None, "big baskets"),
    "discount_share": ("full-price", None, "deal-seeking"),
    "web_sessions_30d": (None, None, "web-active"),
    "product_views_30d": (None, None, "browsing"),
}
_NAME_ORDER = ("recency_days", "orders", "monetary_total")


@dataclass(frozen=True)
class ClusterProfile:
    """What a cluster looks like, in the units marketers know (days, orders, VND)."""

    cluster_id: int
    name: str
    size: int
    share: float
    medians: dict[str, float | None]
    z_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterResult:
    assignments: pd.Series  # customer_key -> cluster_id (NO_PURCHASES for customers without orders)
    k: int  # clusters among buyers, chosen by silhouette; the "no purchases" cluster is extra
    silhouettes: dict[int, float]
    profiles: list[ClusterProfile]
    columns: list[str]
    log_columns: list[str]
    seed: int

    def profile_frame(self) -> pd.DataFrame:
        """One row per cluster, for a report or a notebook."""
        rows = [
            {"cluster_id": p.cluster_id, "name": p.name, "size": p.size, "share": p.share, **p.medians}
            for p in self.profiles
        ]
        return pd.DataFrame(rows)

    def names(self) -> dict[int, str]:
        return {p.cluster_id: p.name for p in self.profiles}


def cluster_customers(
    features: pd.DataFrame,
    columns: list[str] | None = None,
    k_range: range = range(2, 9),
    seed: int = 42,
) -> ClusterResult:
    """Cluster customers of a feature table (one row per ``customer_key``).

    ``columns`` defaults to the RFM and web-behaviour features present in ``features``. Customers with
    ``orders`` of 0 or missing go to the "no purchases" cluster; when there is no ``orders`` column,
    everyone is clustered.
    """
    if "customer_key" not in features.columns:
        raise ValueError("features need a customer_key column")
    if features["customer_key"].duplicated().any():
        raise ValueError("features must have one row per customer_key")
    wanted = list(columns) if columns is not None else [c for c in DEFAULT_COLUMNS if c in features.columns]
    unknown = [c for c in wanted if c not in features.columns]
    if unknown:
        raise ValueError(f"unknown feature column(s) {unknown}")
    if not wanted:
        raise ValueError("no feature columns to cluster on")
    if not k_range or min(k_range) < 2:
        raise ValueError("k_range needs values of 2 or more")

    # Engines and lake files promise no row order; k-means' seeding depends on it, so fix one.
    features = features.assign(customer_key=features["customer_key"].astype(str)).sort_values("customer_key")
    features = features.reset_index(drop=True)
    keys = features["customer_key"]
    raw = features[wanted].apply(pd.to_numeric, errors="coerce").astype("float64")
    buyer = (raw["orders"].fillna(0) > 0) if "orders" in raw else pd.Series(True, index=raw.index)
    buyers = raw[buyer.to_numpy()]
    usable = [c for c in wanted if buyers[c].notna().any() and buyers[c].nunique(dropna=True) > 1]
    logged = [c for c in usable if _is_skewed(c, buyers[c])]

    matrix = buyers[usable].copy()
    for col in usable:
        # A buyer without web data (or discounts) is imputed at the buyers' median, i.e. "typical".
        matrix[col] = matrix[col].fillna(matrix[col].median())
        if col in logged:
            matrix[col] = np.log1p(matrix[col].clip(lower=0))
    scaled = StandardScaler().fit_transform(matrix.to_numpy()) if usable else np.zeros((len(matrix), 0))

    labels, k, silhouettes = _choose_k(scaled, k_range, seed)
    cluster_ids = np.full(len(features), NO_PURCHASES, dtype="int64")
    cluster_ids[buyer.to_numpy()] = labels
    assignments = pd.Series(cluster_ids, index=pd.Index(keys, name="customer_key"), name="cluster_id")

    profiles = _profiles(raw, scaled, usable, buyer.to_numpy(), labels, assignments)
    log.info("clustered %d buyers into k=%d (silhouettes %s)", len(buyers), k, silhouettes)
    return ClusterResult(assignments, k, silhouettes, profiles, usable, logged, seed)


def _is_skewed(col: str, values: pd.Series) -> bool:
    """Known money/count columns, or any non-negative column with a long right tail."""
    clean = values.dropna().to_numpy(dtype="float64")
    if clean.size == 0 or clean.min() < 0:
        return False
    if col in LOG_COLUMNS:
        return True
    spread = clean.std()
    return bool(spread > 0 and np.mean(((clean - clean.mean()) / spread) ** 3) > 1.0)


def _choose_k(scaled: np.ndarray, k_range: range, seed: int) -> tuple[np.ndarray, int, dict[int, float]]:
    """Labels ordered by cluster size (largest = 0), the chosen k and the silhouette per tried k."""
    n = len(scaled)
    candidates = [k for k in k_range if k < n]
    if not candidates or scaled.shape[1] == 0:
        return np.zeros(n, dtype="int64"), 1 if n else 0, {}
    sample = np.arange(n)
    if n > SILHOUETTE_SAMPLE:
        sample = np.sort(np.random.default_rng(seed).choice(n, SILHOUETTE_SAMPLE, replace=False))
    silhouettes: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in candidates:
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(scaled)
        if len(np.unique(labels[sample])) < 2:
            continue  # identical points: no silhouette to compare
        silhouettes[k] = round(float(silhouette_score(scaled[sample], labels[sample])), 6)
        fits[k] = labels
    if not silhouettes:
        return np.zeros(n, dtype="int64"), 1, {}
    best = max(silhouettes, key=lambda k: (silhouettes[k], -k))  # ties go to the simpler model
    return _relabel_by_size(fits[best], scaled), best, silhouettes


def _relabel_by_size(labels: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """Largest cluster first; equal sizes ordered by centroid, so ids never depend on k-means' label order."""
    order = sorted(
        np.unique(labels),
        key=lambda c: (-int((labels == c).sum()), tuple(np.round(scaled[labels == c].mean(axis=0), 9))),
    )
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype="int64")


def _profiles(
    raw: pd.DataFrame,
    scaled: np.ndarray,
    usable: list[str],
    buyer: np.ndarray,
    labels: np.ndarray,
    assignments: pd.Series,
) -> list[ClusterProfile]:
    total = len(raw)
    ids = sorted(set(assignments.tolist()), key=lambda c: (c == NO_PURCHASES, c))
    profiles: list[ClusterProfile] = []
    used_names: dict[str, int] = {}
    buyers = raw[buyer]
    for cid in ids:
        if cid == NO_PURCHASES:
            members = raw[~buyer]
            z: dict[str, float] = {}
            name = NO_PURCHASES_NAME
        else:
            mask = labels == cid
            members = buyers[mask]
            z = {c: round(float(v), 4) for c, v in zip(usable, scaled[mask].mean(axis=0), strict=True)}
            name = _name(z)
        used_names[name] = used_names.get(name, 0) + 1
        if used_names[name] > 1:  # two clusters alike in every named feature still need distinct names
            name = f"{name} ({used_names[name]})"
        medians = {str(c): (None if pd.isna(m) else float(m)) for c, m in members.median(numeric_only=True).items()}
        profiles.append(ClusterProfile(int(cid), name, len(members), len(members) / total, medians, z))
    return profiles


def _name(z: dict[str, float]) -> str:
    """e.g. "recent frequent high spenders" or "lapsed one-off low spenders, deal-seeking"."""

    def word(col: str, threshold: float) -> str | None:
        low, mid, high = _WORDS[col]
        value = z[col]
        return high if value >= threshold else low if value <= -threshold else mid

    head = [w for c in _NAME_ORDER if c in z and (w := word(c, STANDOUT_Z))]
    extras = [
        w
        for c in sorted((c for c in z if c in _WORDS and c not in _NAME_ORDER), key=lambda c: -abs(z[c]))
        if abs(z[c]) >= EXTRA_Z and (w := word(c, EXTRA_Z))
    ]
    if not head:
        head = ["customers"]
    elif not head[-1].endswith("spenders"):
        head.append("buyers")
    extras = extras[:MAX_EXTRAS]
    return " ".join(head) + (", " + ", ".join(extras) if extras else "")

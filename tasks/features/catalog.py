"""The documented columns of the customer feature table, the vocabulary segment rules may use.

Rules are validated against this catalog when config loads, so a typo fails before a run starts,
and the README's feature reference is generated from the same list. ``FEATURES`` is the built-in
set; ``features(config_dir)`` adds the CRM attributes a deployment lists in config/features.yaml,
which is how a new CRM field becomes a rule field without a code change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.config.loader import load_model

Kind = Literal["string", "integer", "number", "boolean", "date", "timestamp"]


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    doc: str


FEATURES: tuple[Feature, ...] = (
    Feature("customer_key", "string", "Stable key of the unified customer."),
    Feature("customer_id", "string", "Loyalty id shared by POS and CRM."),
    Feature("full_name", "string", "Name as written in the CRM."),
    Feature("email", "string", "Trimmed, lower-cased email; empty when missing."),
    Feature("phone", "string", "Phone in E.164 (+84...)."),
    Feature("gender", "string", "male / female / other, or empty."),
    Feature("birthday", "date", "Date of birth."),
    Feature("birth_month", "integer", "Month of birth, 1-12."),
    Feature("age", "integer", "Whole years on the run date."),
    Feature("province", "string", "Canonical province name with diacritics (e.g. 'Hồ Chí Minh')."),
    Feature("email_opt_in", "boolean", "Consent to email marketing."),
    Feature("sms_opt_in", "boolean", "Consent to SMS marketing."),
    Feature("ads_opt_in", "boolean", "Consent to ad personalization."),
    Feature("member_since", "date", "Loyalty membership date."),
    Feature("orders", "integer", "Orders placed before the run's as-of instant (all history)."),
    Feature("monetary_total", "integer", "Sum of order totals in VND, after discounts (all history)."),
    Feature("avg_order_value", "number", "monetary_total / orders, VND."),
    Feature("first_purchase_at", "timestamp", "First order time, UTC."),
    Feature("last_purchase_at", "timestamp", "Latest order time, UTC."),
    Feature(
        "recency_days",
        "integer",
        "Calendar days between the business date of the last order and the run date "
        "(0 = bought on the run date); empty for customers who never ordered.",
    ),
    Feature("orders_last_30d", "integer", "Orders in the 30 business days ending on the run date."),
    Feature("orders_last_90d", "integer", "Orders in the 90 business days ending on the run date."),
    Feature("orders_last_365d", "integer", "Orders in the 365 business days ending on the run date."),
    Feature("spend_last_30d", "integer", "VND spent in the last 30 business days."),
    Feature("spend_last_90d", "integer", "VND spent in the last 90 business days."),
    Feature("spend_last_365d", "integer", "VND spent in the last 365 business days."),
    Feature("discount_share", "number", "Share of orders that carried a discount, 0-1."),
    Feature("preferred_store", "string", "Store id with the most orders (orders without a store do not count)."),
    Feature("preferred_channel", "string", "store or online, whichever has more orders (ties: the smaller name)."),
    Feature("nps_latest", "integer", "Latest NPS answer, 0-10 (survey file, else the CRM field)."),
    Feature("csat_latest", "integer", "Latest CSAT answer, 1-5 (survey file, else the CRM field)."),
    Feature("nps_avg", "number", "Average NPS over all answers before the as-of instant."),
    Feature("csat_avg", "number", "Average CSAT over all answers before the as-of instant."),
    Feature("survey_answers", "integer", "Survey answers received (survey file)."),
    Feature("web_sessions_30d", "integer", "Web sessions in the last 30 business days."),
    Feature("page_views_30d", "integer", "page_view events in the last 30 business days."),
    Feature("product_views_30d", "integer", "view_item events in the last 30 business days."),
    Feature("add_to_cart_30d", "integer", "add_to_cart events in the last 30 business days."),
    Feature("device_category", "string", "Most used device category on the web."),
    Feature("traffic_source", "string", "Traffic source of the latest web event that has one."),
    # --- customer 360 (issue 4) ---
    Feature("birth_day", "integer", "Day of the month of birth, 1-31."),
    Feature(
        "age_band",
        "string",
        "Age on the run date as '<18', '18-24', '25-34', '35-44', '45-54', '55-64' or '65+'; empty when age is.",
    ),
    Feature("occupation", "string", "Occupation as written in the CRM."),
    Feature("marital_status", "string", "Marital status from the CRM (single, married, ...)."),
    Feature("income_band", "string", "Monthly income band from the CRM, VND (e.g. '<10M', '10-20M', '>40M')."),
    Feature(
        "customer_type",
        "string",
        "personal or business (CRM value, lower-cased); empty CRM value counts as personal.",
    ),
    Feature("company", "string", "Company name (business customers)."),
    Feature("industry", "string", "Company industry (business customers)."),
    Feature("company_size", "string", "Company size band, employees (business customers)."),
    Feature("latitude", "number", "Home latitude from the CRM, WGS84 degrees."),
    Feature("longitude", "number", "Home longitude from the CRM, WGS84 degrees."),
    Feature(
        "tenure_days",
        "integer",
        "Calendar days from member_since to the run date (0 = joined on the run date); empty without member_since.",
    ),
    Feature("orders_last_7d", "integer", "Orders in the 7 business days ending on the run date."),
    Feature("spend_last_7d", "integer", "VND spent in the last 7 business days."),
    Feature(
        "categories_last_30d",
        "string",
        "Distinct product categories bought in the last 30 business days, sorted, comma-joined "
        "(e.g. 'backpack,wallet'; use 'contains'); empty when none.",
    ),
    Feature("categories_last_90d", "string", "Distinct categories bought in the last 90 business days (as above)."),
    Feature("categories_last_365d", "string", "Distinct categories bought in the last 365 business days (as above)."),
    Feature(
        "products_last_30d",
        "string",
        "Distinct product ids bought in the last 30 business days, sorted, comma-joined; empty when none.",
    ),
    Feature("vouchers_used_30d", "integer", "Orders with a voucher code in the last 30 business days."),
    Feature("vouchers_used_90d", "integer", "Orders with a voucher code in the last 90 business days."),
    Feature("vouchers_used_365d", "integer", "Orders with a voucher code in the last 365 business days."),
    Feature(
        "distance_to_nearest_store_km",
        "number",
        "Great-circle (haversine, R = 6371 km) distance from the CRM home coordinates to the nearest store "
        "open on the run date, km; empty without coordinates.",
    ),
    Feature("nearest_store", "string", "Store id of that nearest store (ties: lowest store id)."),
    Feature("web_sessions_7d", "integer", "Web sessions in the last 7 business days."),
    Feature("web_sessions_90d", "integer", "Web sessions in the last 90 business days."),
    Feature("page_views_7d", "integer", "page_view events in the last 7 business days."),
    Feature("page_views_90d", "integer", "page_view events in the last 90 business days."),
    Feature("product_views_7d", "integer", "view_item events in the last 7 business days."),
    Feature("product_views_90d", "integer", "view_item events in the last 90 business days."),
    Feature("add_to_cart_7d", "integer", "add_to_cart events in the last 7 business days."),
    Feature("add_to_cart_90d", "integer", "add_to_cart events in the last 90 business days."),
    Feature(
        "viewed_not_bought_30d",
        "integer",
        "Distinct products viewed (view_item) in the last 30 business days that the customer did not buy "
        "in those same 30 days.",
    ),
    Feature("browser", "string", "Most used web browser (ties: alphabetical)."),
    Feature("first_page", "string", "Page URL of the customer's earliest page_view the lake holds."),
    Feature(
        "r_score",
        "integer",
        "Recency quintile 1-5 among customers with orders (5 = most recent; ties split by customer_key); "
        "empty for non-buyers.",
    ),
    Feature("f_score", "integer", "Frequency quintile 1-5 of orders among buyers (5 = most orders)."),
    Feature("m_score", "integer", "Monetary quintile 1-5 of monetary_total among buyers (5 = highest spend)."),
    Feature("rfm_score", "string", "r_score, f_score and m_score written together, e.g. '545'."),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
COLUMNS: list[str] = [f.name for f in FEATURES]

# Facts a rule can filter with conditions such as "bought category backpack in the last 30 days".
PURCHASE_COLUMNS = ("customer_key", "order_id", "ordered_at", "product_id", "category", "line_total_vnd")

# Words marketers reach for, pointing at the column that answers them (used for suggestions only).
SYNONYMS: dict[str, str] = {
    "total_spend": "monetary_total",
    "spend": "monetary_total",
    "revenue": "monetary_total",
    "order_count": "orders",
    "frequency": "orders",
    "recency": "recency_days",
    "days_since_last_purchase": "recency_days",
    "city": "province",
    "region": "province",
}

# Names a configured CRM attribute may take: they become SQL identifiers and Parquet columns.
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class FeaturesConfig(BaseModel):
    """config/features.yaml: CRM attributes carried into the feature table as-is, typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crm_attributes: dict[str, Kind] = Field(default_factory=dict)

    @field_validator("crm_attributes")
    @classmethod
    def _usable_names(cls, value: dict[str, Kind]) -> dict[str, Kind]:
        for name in value:
            if not _ATTRIBUTE_NAME.match(name):
                raise ValueError(f"{name!r} is not a usable column name; use lower_case letters, digits and _")
            if name in BY_NAME:
                raise ValueError(f"{name!r} is already a built-in feature; remove it from crm_attributes")
        return value


FEATURES_FILE = "features.yaml"


def load_features_config(config_dir: Path) -> FeaturesConfig:
    """The file is optional: a deployment without extra CRM attributes need not ship one."""
    path = config_dir / FEATURES_FILE
    return load_model(path, FeaturesConfig) if path.is_file() else FeaturesConfig()


def crm_features(config: FeaturesConfig) -> tuple[Feature, ...]:
    return tuple(
        Feature(name, kind, "CRM attribute carried as-is (config/features.yaml).")
        for name, kind in config.crm_attributes.items()
    )


def features(config_dir: Path) -> tuple[Feature, ...]:
    """The runtime catalog: built-in features plus the CRM attributes configured in ``config_dir``."""
    return FEATURES + crm_features(load_features_config(config_dir))


def known() -> dict[str, Feature]:
    """Runtime catalog of the active config folder (``AUDIENCES_CONFIG``), by name.

    Rules and destinations validate field names against this, so a CRM attribute added to
    features.yaml is usable in segments.yaml with no code change. Cached per file version.
    """
    from tasks import settings

    directory = settings.config_dir()
    path = directory / FEATURES_FILE
    stamp = path.stat().st_mtime_ns if path.is_file() else 0
    return _known(str(directory), stamp)


@lru_cache(maxsize=16)
def _known(directory: str, stamp: int) -> dict[str, Feature]:
    return {f.name: f for f in features(Path(directory))}

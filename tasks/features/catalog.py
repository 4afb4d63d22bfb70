"""The documented columns of the customer feature table, the vocabulary segment rules may use.

Rules are validated against this catalog when config loads, so a typo fails before a run starts,
and the README's feature reference is generated from the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    Feature("preferred_store", "string", "Store id with the most orders."),
    Feature("preferred_channel", "string", "store or online, whichever has more orders."),
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
    Feature("traffic_source", "string", "Traffic source of the latest web event."),
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

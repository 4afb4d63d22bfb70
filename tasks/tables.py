"""Canonical tables: the shape every source is mapped into before validation.

Declaring columns, types and primary keys once lets extraction, casting, validation and the
feature SQL agree on names, and lets a source be swapped without touching anything downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnType = Literal["string", "integer", "number", "boolean", "date", "timestamp"]


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, ColumnType]
    primary_key: tuple[str, ...]
    required: tuple[str, ...] = field(default=())
    optional: bool = False  # a deployment may have no source for it (features then do without)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return self.required or tuple(self.columns)


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec(
            "stores",
            {
                "store_id": "string",
                "name": "string",
                "province": "string",
                "latitude": "number",
                "longitude": "number",
                "opened_on": "date",
            },
            ("store_id",),
        ),
        TableSpec(
            "products",
            {"product_id": "string", "name": "string", "category": "string", "price_vnd": "integer"},
            ("product_id",),
        ),
        TableSpec(
            "orders",
            {
                "order_id": "string",
                "customer_id": "string",
                "store_id": "string",
                "channel": "string",
                "ordered_at": "timestamp",
                "subtotal_vnd": "integer",
                "discount_vnd": "integer",
                "total_vnd": "integer",
                "updated_at": "timestamp",
                "voucher_code": "string",
            },
            ("order_id",),
            required=("order_id", "customer_id", "store_id", "ordered_at", "subtotal_vnd", "discount_vnd", "total_vnd"),
        ),
        TableSpec(
            "order_lines",
            {
                "order_id": "string",
                "line_no": "integer",
                "product_id": "string",
                "quantity": "integer",
                "unit_price_vnd": "integer",
                "discount_vnd": "integer",
                "line_total_vnd": "integer",
                "updated_at": "timestamp",
            },
            ("order_id", "line_no"),
            required=("order_id", "line_no", "product_id", "quantity", "unit_price_vnd", "line_total_vnd"),
        ),
        TableSpec(
            "contacts",
            {
                "contact_id": "string",
                "customer_id": "string",
                "full_name": "string",
                "email": "string",
                "phone": "string",
                "gender": "string",
                "birthday": "date",
                "province": "string",
                "email_opt_in": "boolean",
                "sms_opt_in": "boolean",
                "ads_opt_in": "boolean",
                "member_since": "date",
                "nps_score": "integer",
                "csat_score": "integer",
                "updated_at": "timestamp",
                # Optional profile attributes (issue 4): a CRM without them still validates.
                "occupation": "string",
                "marital_status": "string",
                "income_band": "string",
                "customer_type": "string",
                "company": "string",
                "industry": "string",
                "company_size": "string",
                "latitude": "number",
                "longitude": "number",
                "interests": "string",
                "commute_mode": "string",
                "works_remotely": "boolean",
            },
            ("contact_id",),
            required=("contact_id", "customer_id", "email", "phone", "email_opt_in", "ads_opt_in"),
        ),
        TableSpec(
            "survey_responses",
            {
                "response_id": "string",
                "customer_id": "string",
                "answered_at": "timestamp",
                "nps_score": "integer",
                "csat_score": "integer",
            },
            ("response_id",),
            optional=True,
        ),
        TableSpec(
            "web_events",
            {
                "event_at": "timestamp",
                "event_name": "string",
                "user_pseudo_id": "string",
                "user_id": "string",
                "session_id": "integer",
                "page_location": "string",
                "device_category": "string",
                "browser": "string",
                "traffic_source": "string",
                "traffic_medium": "string",
                "item_ids": "string",
                "item_categories": "string",
            },
            (),
            required=("event_at", "event_name", "user_pseudo_id"),
        ),
    )
}


@dataclass(frozen=True)
class TableRef:
    """Which source feeds a canonical table in this deployment (from sources.yaml)."""

    source: str
    table: str


# Lineage columns every extractor adds: where a row came from, so any message can name it.
SOURCE_COL = "_source"
ROW_COL = "_row"

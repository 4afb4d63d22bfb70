"""The rule language of config/segments.yaml.

A rule is a tree a marketer can read and an engineer can review:

    all: [ {field: orders, op: gte, value: 3},
           {not: {purchased: {category: backpack, within: {last_days: 30}}}} ]

Each node is validated against the feature catalog when config loads (unknown fields and operators
fail with a suggestion) and compiled to an Ibis expression, so user text is never pasted into SQL
and the same rule can run on DuckDB here or on Spark / a warehouse elsewhere.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from tasks.config.loader import TAG_PREFIX, suggest
from tasks.features.catalog import BY_NAME, COLUMNS

OPERATORS: dict[str, str] = {
    "eq": "equals",
    "ne": "differs from",
    "gt": "greater than",
    "gte": "at least",
    "lt": "less than",
    "lte": "at most",
    "in": "one of",
    "not_in": "none of",
    "between": "between (inclusive)",
    "contains": "contains the text",
    "is_set": "has a value",
    "is_not_set": "has no value",
}
_NO_VALUE = {"is_set", "is_not_set"}
_LIST_VALUE = {"in", "not_in"}
_ORDERED_KINDS = {"integer", "number", "date", "timestamp"}


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Compare(Node):
    """``{field: recency_days, op: gte, value: 90}``"""

    field: str
    op: str
    value: Any = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        if name not in BY_NAME:
            raise ValueError(f"unknown field {name!r}" + suggest(name, COLUMNS))
        return name

    @field_validator("op")
    @classmethod
    def _known_op(cls, op: str) -> str:
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}" + suggest(op, list(OPERATORS)))
        return op

    @model_validator(mode="after")
    def _value_fits(self) -> Compare:
        kind = BY_NAME[self.field].kind
        if self.op in _NO_VALUE:
            if self.value is not None:
                raise ValueError(f"operator {self.op!r} takes no value")
            return self
        if self.op in _LIST_VALUE:
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"operator {self.op!r} needs a non-empty list as value")
            values = self.value
        elif self.op == "between":
            if not isinstance(self.value, list) or len(self.value) != 2:
                raise ValueError("operator 'between' needs a value like [low, high]")
            values = self.value
        else:
            values = [self.value]
        if self.op in {"gt", "gte", "lt", "lte", "between"} and kind not in _ORDERED_KINDS:
            raise ValueError(f"operator {self.op!r} needs a numeric or date field; {self.field!r} is {kind}")
        if self.op == "contains" and kind != "string":
            raise ValueError(f"operator 'contains' needs a text field; {self.field!r} is {kind}")
        for v in values:
            _check_literal(self.field, kind, v)
        return self


def _check_literal(field: str, kind: str, value: Any) -> None:
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "date": isinstance(value, date),
        "timestamp": isinstance(value, date),
    }[kind]
    if not ok:
        hint = {"date": "a date like 2026-01-31", "timestamp": "a date like 2026-01-31"}.get(kind, kind)
        raise ValueError(f"value {value!r} does not fit field {field!r}: expected {hint}")


class Window(Node):
    """Half-open window of whole business days ending with the run date."""

    last_days: int = Field(gt=0, le=3660)


class PurchasedSpec(Node):
    """Customers with at least ``min_orders`` orders containing a matching product in the window."""

    category: list[str] | None = None
    product: list[str] | None = None
    within: Window | None = None
    min_orders: int = Field(1, ge=1)

    @field_validator("category", "product", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Purchased(Node):
    purchased: PurchasedSpec


class All(Node):
    all: list[Rule] = Field(min_length=1)


class AnyOf(Node):
    any: list[Rule] = Field(min_length=1)


class Not(Node):
    not_: Rule = Field(alias="not")


_KINDS = ("all", "any", "not", "purchased", "field")


def _node_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        keys = [k for k in _KINDS if k in raw]
        return TAG_PREFIX + keys[0] if len(keys) == 1 else None
    for cls, key in ((All, "all"), (AnyOf, "any"), (Not, "not"), (Purchased, "purchased"), (Compare, "field")):
        if isinstance(raw, cls):
            return TAG_PREFIX + key
    return None


Rule = Annotated[
    Annotated[All, Tag(TAG_PREFIX + "all")]
    | Annotated[AnyOf, Tag(TAG_PREFIX + "any")]
    | Annotated[Not, Tag(TAG_PREFIX + "not")]
    | Annotated[Purchased, Tag(TAG_PREFIX + "purchased")]
    | Annotated[Compare, Tag(TAG_PREFIX + "field")],
    Discriminator(
        _node_kind,
        custom_error_type="rule_kind",
        custom_error_message="a rule needs exactly one of: all, any, not, purchased, field",
    ),
]

for _model in (All, AnyOf, Not):
    _model.model_rebuild()


class Segment(Node):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    title: str
    description: str = ""
    rule: Rule


class SegmentsConfig(Node):
    segments: list[Segment] = Field(min_length=1)

    @field_validator("segments")
    @classmethod
    def _unique(cls, segments: list[Segment]) -> list[Segment]:
        seen: set[str] = set()
        for seg in segments:
            if seg.name in seen:
                raise ValueError(f"segment name {seg.name!r} is used twice; names must be unique")
            seen.add(seg.name)
        return segments

    def get(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(f"no segment named {name!r}" + suggest(name, [s.name for s in self.segments]))

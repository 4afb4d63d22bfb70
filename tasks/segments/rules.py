"""The rule language of config/segments.yaml.

A rule is a tree a marketer can read and an engineer can review:

    all: [ {field: orders, op: gte, value: 3},
           {not: {purchased: {category: backpack, within: {last_days: 30}}}} ]

Kinds of node: ``all`` / ``any`` / ``not``; ``field`` comparisons over the feature catalog;
``purchased`` (orders and spend over unified purchases); ``did`` (counts of web events);
``viewed_not_bought``; ``first_page``; ``birthday`` anniversaries; ``near`` (radius around a store or
point); ``in_segment`` (another segment's rule). Time windows are in ``tasks.segments.windows``.

Each node is validated when config loads (unknown fields, operators, periods and keys fail with a
suggestion) and compiled to an Ibis expression, so user text is never pasted into SQL and the same
rule can run on DuckDB here or on Spark / a warehouse elsewhere.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from tasks.config.loader import TAG_PREFIX, suggest
from tasks.features import catalog
from tasks.normalize.url import is_path
from tasks.segments.windows import Node, Window

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# The comparison operators of the language, shared by Python checks and engine expressions
# (Ibis overloads the same operators, so one table serves both).
COMPARATORS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

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


class Compare(Node):
    """``{field: recency_days, op: gte, value: 90}``"""

    field: str
    op: str
    value: Any = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        known = catalog.known()
        if name not in known:
            raise ValueError(f"unknown field {name!r}" + suggest(name, list(known)))
        return name

    @field_validator("op")
    @classmethod
    def _known_op(cls, op: str) -> str:
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}" + suggest(op, list(OPERATORS)))
        return op

    @model_validator(mode="after")
    def _value_fits(self) -> Compare:
        kind = catalog.known()[self.field].kind
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


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Count(Node):
    """A condition on a per-customer count or sum: ``{gte: 5}``, ``{eq: 0}``, ``{gte: 1, lt: 4}``.

    Customers without any matching row count as 0, so ``{eq: 0}`` means "never" and ``{lt: 3}``
    includes customers who never did it.
    """

    eq: int | float | None = None
    ne: int | float | None = None
    gt: int | float | None = None
    gte: int | float | None = None
    lt: int | float | None = None
    lte: int | float | None = None

    @model_validator(mode="after")
    def _some(self) -> Count:
        if not self.conditions():
            raise ValueError("give at least one of: eq, ne, gt, gte, lt, lte")
        return self

    def conditions(self) -> list[tuple[str, int | float]]:
        return [(op, v) for op in ("eq", "ne", "gt", "gte", "lt", "lte") if (v := getattr(self, op)) is not None]

    def holds(self, x: int | float) -> bool:
        """Whether a customer with value ``x`` passes; decides how customers without rows are treated."""
        return all(COMPARATORS[op](x, v) for op, v in self.conditions())


class PurchasedSpec(Node):
    """Orders containing a matching product line in the window.

    Without ``orders``/``spend``, a customer needs at least ``min_orders`` such orders (the original
    form). With them, the conditions alone decide and customers with no matching order count as
    0 orders and 0 VND: ``orders: {eq: 0}`` = "no such order in the window", including never-buyers.
    """

    category: list[str] | None = None
    product: list[str] | None = None
    within: Window | None = None
    min_orders: int = Field(1, ge=1)
    orders: Count | None = None
    spend: Count | None = None

    _listify = field_validator("category", "product", mode="before")(_listify)

    @model_validator(mode="after")
    def _one_order_condition(self) -> PurchasedSpec:
        if self.orders is not None and "min_orders" in self.model_fields_set:
            raise ValueError("give either min_orders or orders, not both (min_orders: 3 = orders: {gte: 3})")
        return self

    def order_count(self) -> Count | None:
        if self.orders is not None:
            return self.orders
        if self.spend is not None and "min_orders" not in self.model_fields_set:
            return None
        return Count(gte=self.min_orders)


class Purchased(Node):
    purchased: PurchasedSpec


# GA4's recommended and automatically collected events, plus this shop's call-to-action event.
KNOWN_EVENTS: tuple[str, ...] = (
    "page_view",
    "view_item",
    "view_item_list",
    "select_item",
    "add_to_cart",
    "remove_from_cart",
    "view_cart",
    "add_to_wishlist",
    "begin_checkout",
    "add_shipping_info",
    "add_payment_info",
    "purchase",
    "refund",
    "view_promotion",
    "select_promotion",
    "cta_click",
    "search",
    "login",
    "sign_up",
    "generate_lead",
    "share",
    "session_start",
    "first_visit",
    "user_engagement",
    "scroll",
    "click",
    "file_download",
    "form_start",
    "form_submit",
    "video_start",
    "video_complete",
)


def _page_value(value: str | None) -> str | None:
    """A path ends before any query or fragment, so a "/" value holding one could never match."""
    if value is not None and is_path(value) and ("?" in value or "#" in value):
        path = value.split("?")[0].split("#")[0] or "/"
        raise ValueError(
            f"{value!r} compares the page's path, which never holds '?' or '#'; write {path!r} "
            "(any query string), or page_contains to match a query"
        )
    return value


class EventWhere(Node):
    """Filters on a web event; all given filters must hold.

    ``page_equals`` starting with "/" compares the URL's path (no host, query or fragment), so
    ``/`` is the home page; otherwise it compares the whole URL.
    """

    page_contains: str | None = Field(None, min_length=1)
    page_equals: str | None = Field(None, min_length=1)
    item: list[str] | None = None
    category: list[str] | None = None

    _listify = field_validator("item", "category", mode="before")(_listify)
    _path = field_validator("page_equals")(_page_value)


class DidSpec(Node):
    """Customers whose count of matching web events in the window passes ``times`` (default: at least once).

    Any event name may be used, but one that looks like a typo of a known event fails unless
    ``custom: true`` says it is a name of your own.
    """

    event: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    custom: bool = False
    where: EventWhere | None = None
    within: Window | None = None
    times: Count = Count(gte=1)

    @model_validator(mode="after")
    def _known_event(self) -> DidSpec:
        if not self.custom and self.event not in KNOWN_EVENTS:
            close = difflib.get_close_matches(self.event, KNOWN_EVENTS, n=1, cutoff=0.75)
            if close:
                raise ValueError(
                    f"unknown event {self.event!r}; did you mean {close[0]!r}? "
                    "(set custom: true if it is an event of your own)"
                )
        return self


class Did(Node):
    did: DidSpec


class ViewedNotBoughtSpec(Node):
    """Customers who viewed a product (``view_item``) in the window and did not buy *that* product.

    With ``category``, "that" is the category: viewed a backpack, bought no backpack. Without
    ``item`` or ``category`` any viewed product counts. A purchase anywhere in the same window cancels
    the view, whether before or after it (the window ends at as_of, so "after the view" is covered);
    purchases before the window do not.
    """

    item: list[str] | None = None
    category: list[str] | None = None
    within: Window | None = None

    _listify = field_validator("item", "category", mode="before")(_listify)

    @model_validator(mode="after")
    def _one_key(self) -> ViewedNotBoughtSpec:
        if self.item is not None and self.category is not None:
            raise ValueError("give item or category, not both")
        return self


class ViewedNotBought(Node):
    viewed_not_bought: ViewedNotBoughtSpec


class PageMatch(Node):
    """``contains`` is case-insensitive; ``equals`` works like EventWhere.page_equals."""

    contains: str | None = Field(None, min_length=1)
    equals: str | None = Field(None, min_length=1)

    _path = field_validator("equals")(_page_value)

    @model_validator(mode="after")
    def _exactly_one(self) -> PageMatch:
        if (self.contains is None) == (self.equals is None):
            raise ValueError("give exactly one of: contains, equals")
        return self


class FirstPage(Node):
    """The customer's first page_view ever (before as_of); ties at the same instant go to the smaller URL."""

    first_page: PageMatch


BIRTHDAY_PERIODS: tuple[str, ...] = ("today", "this_week", "this_month", "next_month")


class BirthdaySpec(Node):
    """Birthday anniversaries; a 29 February birthday is celebrated on 28 February in non-leap years.

    ``in`` covers whole calendar periods (this_week = Monday..Sunday, including days after the run
    date, since a birthday is a future date to plan for); ``within_next_days: N`` = the run date and the
    N-1 days after it, crossing the year end.
    """

    in_: str | None = Field(None, alias="in")
    within_next_days: int | None = Field(None, gt=0, le=366)

    @field_validator("in_")
    @classmethod
    def _known_period(cls, value: str | None) -> str | None:
        if value is not None and value not in BIRTHDAY_PERIODS:
            raise ValueError(f"unknown birthday period {value!r}" + suggest(value, list(BIRTHDAY_PERIODS)))
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> BirthdaySpec:
        if (self.in_ is None) == (self.within_next_days is None):
            raise ValueError("give exactly one of: in, within_next_days")
        return self


class Birthday(Node):
    birthday: BirthdaySpec


class NearSpec(Node):
    """Customers whose home coordinates are within ``km`` (great-circle) of any given store, or of a point."""

    store: list[str] | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    km: float = Field(gt=0, le=20_000)

    _listify = field_validator("store", mode="before")(_listify)

    @model_validator(mode="after")
    def _one_center(self) -> NearSpec:
        point = self.lat is not None or self.lon is not None
        if point and (self.lat is None or self.lon is None):
            raise ValueError("a point needs both lat and lon")
        if point == bool(self.store):
            raise ValueError("give either store (one id or a list) or lat and lon")
        return self


class Near(Node):
    near: NearSpec


SEGMENT_NAME = r"^[a-z][a-z0-9_]{0,62}$"


class InSegment(Node):
    """Members of another segment's rule (before its split and priority group are applied)."""

    in_segment: str = Field(pattern=SEGMENT_NAME)


class All(Node):
    all: list[Rule] = Field(min_length=1)


class AnyOf(Node):
    any: list[Rule] = Field(min_length=1)


class Not(Node):
    not_: Rule = Field(alias="not")


_KIND_MODELS: dict[str, type[Node]] = {
    "all": All,
    "any": AnyOf,
    "not": Not,
    "purchased": Purchased,
    "field": Compare,
    "did": Did,
    "viewed_not_bought": ViewedNotBought,
    "first_page": FirstPage,
    "birthday": Birthday,
    "near": Near,
    "in_segment": InSegment,
}
_KINDS = tuple(_KIND_MODELS)
_KIND_ERROR = "a rule needs exactly one of: " + ", ".join(_KINDS)


def _node_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        keys = [k for k in _KINDS if k in raw]
        return TAG_PREFIX + keys[0] if len(keys) == 1 else None
    for key, cls in _KIND_MODELS.items():
        if isinstance(raw, cls):
            return TAG_PREFIX + key
    return None


def _suggest_kind(raw: Any) -> Any:
    """A rule with no known kind key but a near miss ("purchase:") names the key it resembles."""
    if isinstance(raw, dict) and not any(k in raw for k in _KINDS):
        for key in raw:
            hint = suggest(str(key), list(_KINDS))
            if hint.startswith("; did you mean"):
                raise ValueError(f"{_KIND_ERROR}; got {key!r}{hint}")
    return raw


Rule = Annotated[
    Annotated[All, Tag(TAG_PREFIX + "all")]
    | Annotated[AnyOf, Tag(TAG_PREFIX + "any")]
    | Annotated[Not, Tag(TAG_PREFIX + "not")]
    | Annotated[Purchased, Tag(TAG_PREFIX + "purchased")]
    | Annotated[Compare, Tag(TAG_PREFIX + "field")]
    | Annotated[Did, Tag(TAG_PREFIX + "did")]
    | Annotated[ViewedNotBought, Tag(TAG_PREFIX + "viewed_not_bought")]
    | Annotated[FirstPage, Tag(TAG_PREFIX + "first_page")]
    | Annotated[Birthday, Tag(TAG_PREFIX + "birthday")]
    | Annotated[Near, Tag(TAG_PREFIX + "near")]
    | Annotated[InSegment, Tag(TAG_PREFIX + "in_segment")],
    Discriminator(_node_kind, custom_error_type="rule_kind", custom_error_message=_KIND_ERROR),
    BeforeValidator(_suggest_kind),
]

for _model in (All, AnyOf, Not):
    _model.model_rebuild()


def children(rule: Rule) -> list[Rule]:
    if isinstance(rule, All):
        return list(rule.all)
    if isinstance(rule, AnyOf):
        return list(rule.any)
    if isinstance(rule, Not):
        return [rule.not_]
    return []


def referenced_segments(rule: Rule) -> set[str]:
    """Names of the segments a rule builds on through ``in_segment`` (at any depth)."""
    own = {rule.in_segment} if isinstance(rule, InSegment) else set()
    return own.union(*(referenced_segments(r) for r in children(rule)))


class Split(Node):
    """Deterministic percentage split of a segment's members, e.g. a 10 % hold-out.

    A member's group depends only on (salt, customer_key): SHA-256 of ``salt + "\\x1f" + key``, first
    8 bytes as a fraction of 2**64, mapped onto the groups' cumulative shares in the order written.
    SHA-256, not an engine's ``hash()``, because DuckDB does not promise that hash to be stable across
    versions or engines. A customer therefore stays in the same group on every run and whoever else
    joins or leaves the segment; change the salt to reshuffle.
    """

    salt: str = Field(min_length=1)
    groups: dict[str, int | float] = Field(min_length=2)
    # Groups measured but never sent anywhere (the control group of a campaign).
    hold_out: list[str] = Field(default_factory=lambda: ["holdout", "control"])

    @field_validator("groups")
    @classmethod
    def _shares(cls, groups: dict[str, int | float]) -> dict[str, int | float]:
        for name, share in groups.items():
            if not re.fullmatch(SEGMENT_NAME, name):
                raise ValueError(f"group name {name!r} must be lower-case letters, digits and _")
            if share <= 0:
                raise ValueError(f"group {name!r} needs a share above 0 %")
        if abs(sum(groups.values()) - 100) > 1e-9:
            raise ValueError(f"group shares must add up to 100 (%); they add up to {sum(groups.values()):g}")
        return groups

    def group_of(self, customer_key: str) -> str:
        return list(self.groups)[int(self.group_indices([customer_key])[0])]

    def group_indices(self, customer_keys: Sequence[str] | pa.Array) -> np.ndarray:
        """Each key's group as an index into ``groups`` (in the order written).

        The digests are computed by DuckDB's ``sha256`` over the whole array at once: hashlib in a Python
        loop took 0.4 s for the 378k split members of a million customers, DuckDB 0.1 s. Placing the
        positions on the cumulative shares is one ``searchsorted``; dividing the 8-byte integer by 2**64
        is exact in floating point, so the positions equal Python's ``int / 2**64``.
        """
        import duckdb
        import numpy as np
        import pyarrow as pa

        keys = pa.table(
            {
                "customer_key": customer_keys.cast(pa.large_string())
                if isinstance(customer_keys, pa.Array)
                else pa.array(customer_keys, pa.large_string())
            }
        )
        with duckdb.connect() as con:
            con.register("split_keys", keys)
            heads = con.execute(
                # a projection of one table keeps its row order; the first 16 hex digits are the first 8 bytes
                "SELECT CAST('0x' || left(sha256($prefix || customer_key), 16) AS UBIGINT) AS head FROM split_keys",
                {"prefix": f"{self.salt}\x1f"},
            ).fetchnumpy()["head"]
        position = np.asarray(heads, dtype=np.uint64).astype(np.float64) / 2**64 * 100
        cumulative = np.cumsum(np.array(list(self.groups.values()), dtype=np.float64))
        # the first group whose cumulative share exceeds the position; float rounding at the very
        # top of the range falls to the last group
        return np.minimum(np.searchsorted(cumulative, position, side="right"), len(self.groups) - 1)


class PriorityGroup(Node):
    """Segments sharing a group name are exclusive: a customer stays only in the lowest-numbered one."""

    name: str = Field(pattern=SEGMENT_NAME)
    priority: int = Field(ge=0)


class Segment(Node):
    name: str = Field(pattern=SEGMENT_NAME)
    title: str
    description: str = ""
    rule: Rule
    split: Split | None = None
    priority_group: PriorityGroup | None = None


class PackRef(Node):
    """A ready-made rule pack switched on by name (see tasks/segments/packs.py)."""

    pack: str
    params: dict[str, Any] = Field(default_factory=dict)
    prefix: str | None = None

    @field_validator("pack")
    @classmethod
    def _known_pack(cls, pack: str) -> str:
        from tasks.segments.packs import PACKS

        if pack not in PACKS:
            raise ValueError(f"unknown pack {pack!r}" + suggest(pack, list(PACKS)))
        return pack


class ClusterConfig(Node):
    """Data-driven segments: k-means on scaled RFM and behaviour features (tasks/segments/clusters.py).

    Each cluster becomes a segment ``<prefix><id>`` whose title is the cluster's readable profile.
    """

    prefix: str = Field("cluster_", pattern=r"^[a-z][a-z0-9_]{0,30}$")
    seed: int = 42
    max_clusters: int = Field(8, ge=2, le=20)
    columns: list[str] | None = None


class SegmentsConfig(Node):
    """Hand-written segments plus the segments of the packs switched on (appended in pack order)."""

    packs: list[PackRef] = Field(default_factory=list)
    clusters: ClusterConfig | None = None
    segments: list[Segment] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _expand_packs(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("packs"):
            return data
        from tasks.segments.packs import PACKS, expand

        extra: list[Any] = []
        for ref in data["packs"]:
            if isinstance(ref, dict) and ref.get("pack") in PACKS:
                extra.extend(expand(ref["pack"], ref.get("params") or {}, ref.get("prefix")))
        return {**data, "segments": [*(data.get("segments") or []), *extra]}

    @field_validator("segments")
    @classmethod
    def _unique(cls, segments: list[Segment]) -> list[Segment]:
        seen: set[str] = set()
        for seg in segments:
            if seg.name in seen:
                raise ValueError(f"segment name {seg.name!r} is used twice; names must be unique")
            seen.add(seg.name)
        return segments

    @field_validator("segments")
    @classmethod
    def _references(cls, segments: list[Segment]) -> list[Segment]:
        names = [s.name for s in segments]
        deps = {s.name: referenced_segments(s.rule) for s in segments}
        for seg in segments:
            for ref in sorted(deps[seg.name]):
                if ref not in deps:
                    raise ValueError(f"segment {seg.name!r} uses unknown segment {ref!r}" + suggest(ref, names))
        dependency_order(deps)
        return segments

    @field_validator("segments")
    @classmethod
    def _priorities(cls, segments: list[Segment]) -> list[Segment]:
        taken: dict[tuple[str, int], str] = {}
        for seg in segments:
            if seg.priority_group is None:
                continue
            slot = (seg.priority_group.name, seg.priority_group.priority)
            if slot in taken:
                raise ValueError(
                    f"segments {taken[slot]!r} and {seg.name!r} both have priority {slot[1]} in group {slot[0]!r}"
                )
            taken[slot] = seg.name
        return segments

    def get(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(f"no segment named {name!r}" + suggest(name, [s.name for s in self.segments]))

    def in_dependency_order(self) -> list[Segment]:
        order = dependency_order({s.name: referenced_segments(s.rule) for s in self.segments})
        return [self.get(name) for name in order]


def dependency_order(deps: dict[str, set[str]]) -> list[str]:
    """Names with every segment before the ones that use it, otherwise in config order.

    A cycle fails with its path. Callers check unknown names first, so every dependency has a rank.
    """
    rank = {name: i for i, name in enumerate(deps)}
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = [*path[path.index(name) :], name]
            raise ValueError("segments refer to each other in a cycle: " + " -> ".join(cycle))
        state[name] = "active"
        for dep in sorted(deps.get(name, ()), key=lambda d: rank.get(d, -1)):
            visit(dep, [*path, name])
        state[name] = "done"
        done.append(name)

    for name in deps:
        visit(name, [])
    return done

"""Identity resolution: one stable ``customer_key`` for the POS, CRM and web records of one person.

Records are linked when they share a normalized identifier (loyalty id, email, phone, web login user
id, web pseudo id); linked records form connected components (union-find). Two things make this
safe to run daily:

* Junk identifiers never link anything. Placeholder phones and emails, a configurable blocklist and
  a cap on how many records one value may link are checked before matching, because one
  ``0000000000`` typed at a till would otherwise fuse thousands of walk-in customers into one.
* Keys are sticky. The record -> key assignment lives in the state DB, so reruns and new data keep
  every existing key; when new data links two existing clusters the older key wins and the merge
  is recorded. Merges are never undone automatically: a wrong one is fixed in the state DB, on
  purpose, by a person who can read ``identity_merges``.

Identifier values never appear in logs, exceptions or the merge record, only their SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks import settings
from tasks.config.loader import load_model
from tasks.normalize.contact import normalize_email, normalize_phone
from tasks.state.store import StateStore

log = logging.getLogger(__name__)

IdentifierType = Literal["customer_id", "email", "phone", "web_user_id", "web_pseudo_id"]
IDENTIFIER_COLUMNS: tuple[IdentifierType, ...] = ("customer_id", "email", "phone", "web_user_id", "web_pseudo_id")
RECORD_COLUMNS = ["record_id", *IDENTIFIER_COLUMNS]

# A logged-in web user id is the loyalty id (profiles.py), so both live in one value space.
_SPACE: dict[str, str] = {
    "customer_id": "customer_id",
    "web_user_id": "customer_id",
    "email": "email",
    "phone": "phone",
    "web_pseudo_id": "web_pseudo_id",
}
REASONS: dict[str, str] = {
    "customer_id": "same loyalty id",
    "web_user_id": "web login user_id",
    "email": "same email",
    "phone": "same phone",
    "web_pseudo_id": "same web pseudo id",
}
MERGE_COLUMNS = ["run_date", "customer_key", "record_a", "record_b", "identifier_type", "identifier_hash", "reason"]
REFUSED_COLUMNS = ["identifier_type", "identifier_hash", "records", "reason"]


# --------------------------------------------------------------------------------------------- config


class IdentityConfig(BaseModel):
    """Which identifier values may link records; edited by hand in config/identity.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocked_emails: list[str] = Field(default_factory=list)
    blocked_email_patterns: list[str] = Field(default_factory=list)
    blocked_phones: list[str] = Field(default_factory=list)
    max_records_per_identifier: int = Field(20, ge=2)
    max_records_per_type: dict[IdentifierType, int] = Field(default_factory=dict)

    @field_validator("blocked_emails")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]

    @field_validator("blocked_email_patterns")
    @classmethod
    def _compiles(cls, values: list[str]) -> list[str]:
        for pattern in values:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression ({exc})") from None
        return values

    @field_validator("max_records_per_type")
    @classmethod
    def _at_least_two(cls, values: dict[IdentifierType, int]) -> dict[IdentifierType, int]:
        low = sorted(k for k, v in values.items() if v < 2)
        if low:
            raise ValueError(f"caps below 2 would refuse every identifier: {', '.join(low)}")
        return values

    def cap(self, space: str) -> int:
        caps: dict[str, int] = {str(k): v for k, v in self.max_records_per_type.items()}
        return caps.get(space, self.max_records_per_identifier)


def load_identity_config(path: Path | None = None) -> IdentityConfig:
    return load_model(path or settings.config_dir() / "identity.yaml", IdentityConfig)


# ---------------------------------------------------------------------------------------------- guards


def identifier_hash(value: str) -> str:
    """SHA-256 of the normalized value: lets people compare two merges without seeing the value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def national_digits(raw: str) -> str:
    """Digits after the Vietnamese trunk/country prefix, so '0900 000 000' and '+84900000000' agree."""
    text = raw.strip()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+84") or (not text.startswith("+") and digits.startswith("84") and len(digits) >= 11):
        return digits[2:]
    if text.startswith("+"):
        return digits
    return digits[1:] if digits.startswith("0") else digits


def phone_junk_reason(raw: str) -> str | None:
    """Why a phone is a placeholder rather than a person's number, or None."""
    digits = re.sub(r"\D", "", raw)
    national = national_digits(raw)
    if not digits or len(set(digits)) == 1 or len(set(national)) <= 1:
        return "placeholder phone: one repeated digit"
    if len(national) < 9:
        return "placeholder phone: fewer than 9 national digits"
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(national)}
    if steps in ({1}, {9}):
        return "placeholder phone: digit run"
    if len(set(national[-8:])) == 1:
        return "placeholder phone: one repeated digit"
    return None


@dataclass(frozen=True)
class _Guard:
    """The config compiled once per run."""

    blocked_emails: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    blocked_phones: frozenset[str]

    @classmethod
    def of(cls, config: IdentityConfig) -> _Guard:
        return cls(
            frozenset(config.blocked_emails),
            tuple(re.compile(p) for p in config.blocked_email_patterns),
            frozenset(national_digits(p) for p in config.blocked_phones),
        )

    def email(self, raw: str) -> tuple[str, str | None]:
        value = normalize_email(raw)
        if value is None:
            return raw.strip().lower(), "not a valid email"
        if value in self.blocked_emails:
            return value, "blocked email"
        if any(p.search(value) for p in self.patterns):
            return value, "blocked email pattern"
        return value, None

    def phone(self, raw: str) -> tuple[str, str | None]:
        junk = phone_junk_reason(raw)
        value = normalize_phone(raw)
        shown = value or re.sub(r"\D", "", raw)
        if junk:
            return shown, junk
        if national_digits(raw) in self.blocked_phones:
            return shown, "blocked phone"
        if value is None:
            return shown, "not a valid phone"
        return value, None


def _normalize(long: pd.DataFrame, guard: _Guard) -> pd.DataFrame:
    """Normalize each distinct raw value once (phonenumbers is slow) and attach a refusal reason."""
    long = long.copy()
    long["value"] = long["raw"]
    long["refused"] = pd.Series(pd.NA, index=long.index, dtype="string")
    for kind, check in (("email", guard.email), ("phone", guard.phone)):
        mask = long["type"] == kind
        if not mask.any():
            continue
        uniq = pd.unique(long.loc[mask, "raw"])
        checked = {u: check(str(u)) for u in uniq}
        long.loc[mask, "value"] = long.loc[mask, "raw"].map({u: c[0] for u, c in checked.items()})
        long.loc[mask, "refused"] = long.loc[mask, "raw"].map({u: c[1] for u, c in checked.items()})
    return long


# -------------------------------------------------------------------------------------------- records


def _frame(data: dict[str, pd.Series]) -> pd.DataFrame:
    out = pd.DataFrame(data)
    for col in RECORD_COLUMNS:
        if col not in out:
            out[col] = pd.Series(pd.NA, index=out.index, dtype="string")
        out[col] = out[col].astype("string")
    return out[RECORD_COLUMNS].reset_index(drop=True)


def contact_records(contacts: pd.DataFrame) -> pd.DataFrame:
    """One record per CRM contact.

    Emails and phones stay raw: ``resolve`` normalizes them, so a placeholder that does not even
    parse (0000000000) is reported as refused instead of silently vanishing.
    """
    c = contacts.dropna(subset=["contact_id"]).drop_duplicates("contact_id", keep="last")
    return _frame(
        {
            "record_id": "crm:" + c["contact_id"].astype("string"),
            "customer_id": c["customer_id"],
            "email": c["email"],
            "phone": c["phone"],
        }
    )


def order_records(orders: pd.DataFrame) -> pd.DataFrame:
    """One record per POS customer (loyalty id) seen on an order."""
    ids = pd.Series(orders["customer_id"].dropna().astype("string").unique(), dtype="string")
    return _frame({"record_id": "pos:" + ids, "customer_id": ids})


def web_records(events: pd.DataFrame) -> pd.DataFrame:
    """One record per browser (pseudo id), with one row per user id it logged in as.

    A pseudo id seen with two user ids (a shared family or shop device) keeps both rows so that
    ``resolve`` can see the conflict and refuse the pseudo id as a link rather than fuse two people.
    """
    pairs = events[["user_pseudo_id", "user_id"]].dropna(subset=["user_pseudo_id"]).drop_duplicates()
    logged_in = pairs.dropna(subset=["user_id"])
    anonymous = pairs[pairs["user_id"].isna() & ~pairs["user_pseudo_id"].isin(logged_in["user_pseudo_id"])]
    pairs = pd.concat([logged_in, anonymous.drop_duplicates("user_pseudo_id")], ignore_index=True)
    pseudo = pairs["user_pseudo_id"].astype("string")
    return _frame({"record_id": "web:" + pseudo, "web_pseudo_id": pseudo, "web_user_id": pairs["user_id"]})


def identity_records(contacts: pd.DataFrame, orders: pd.DataFrame, web_events: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(
        [contact_records(contacts), order_records(orders), web_records(web_events)], ignore_index=True
    ).sort_values("record_id", kind="stable", ignore_index=True)


# ---------------------------------------------------------------------------------------------- state

identity_metadata = sa.MetaData()

identity_keys = sa.Table(
    "identity_keys",
    identity_metadata,
    sa.Column("record_id", sa.String(512), primary_key=True),
    sa.Column("customer_key", sa.String(64), nullable=False, index=True),
    sa.Column("first_seen_run", sa.String(10), nullable=False),
)

identity_merges = sa.Table(
    "identity_merges",
    identity_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_date", sa.String(10), nullable=False),
    sa.Column("customer_key", sa.String(64), nullable=False, index=True),
    sa.Column("record_a", sa.String(512), nullable=False),
    sa.Column("record_b", sa.String(512), nullable=False),
    sa.Column("identifier_type", sa.String(32), nullable=False),
    sa.Column("identifier_hash", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(256), nullable=False),
)


class IdentityStore:
    """The record -> customer_key assignment and the merge record, in the pipeline's state DB."""

    def __init__(self, url: str | None = None) -> None:
        self.engine = StateStore(url).engine
        identity_metadata.create_all(self.engine)

    def assignments(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(identity_keys)).all()
        return pd.DataFrame(rows, columns=["record_id", "customer_key", "first_seen_run"], dtype="string")

    def explain(self, customer_key: str) -> pd.DataFrame:
        """Every recorded union behind this key, including those of clusters later merged into it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*(identity_merges.c[c] for c in MERGE_COLUMNS))
                .where(identity_merges.c.customer_key == customer_key)
                .order_by(identity_merges.c.id)
            ).all()
        return pd.DataFrame(rows, columns=MERGE_COLUMNS)

    def save(self, run_date: str, new_keys: pd.DataFrame, renamed: dict[str, str], merges: pd.DataFrame) -> None:
        """One transaction, so a failed run leaves yesterday's keys intact."""
        with self.engine.begin() as conn:
            for old, new in renamed.items():
                conn.execute(identity_keys.update().where(identity_keys.c.customer_key == old).values(customer_key=new))
                conn.execute(
                    identity_merges.update().where(identity_merges.c.customer_key == old).values(customer_key=new)
                )
            if len(new_keys):
                conn.execute(
                    identity_keys.insert(),
                    [
                        {"record_id": r, "customer_key": k, "first_seen_run": run_date}
                        for r, k in zip(new_keys["record_id"], new_keys["customer_key"], strict=True)
                    ],
                )
            if len(merges):
                rows = [
                    dict(zip(MERGE_COLUMNS, row, strict=True)) for row in merges[MERGE_COLUMNS].itertuples(index=False)
                ]
                conn.execute(identity_merges.insert(), rows)


def explain(customer_key: str, store: IdentityStore | None = None) -> pd.DataFrame:
    return (store or IdentityStore()).explain(customer_key)


# -------------------------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Resolution:
    keys: pd.DataFrame  # record_id, customer_key
    merges: pd.DataFrame  # MERGE_COLUMNS: the unions performed by this run
    refused: pd.DataFrame  # REFUSED_COLUMNS: identifier values refused as merge keys


def new_key(min_record_id: str) -> str:
    """Derived from the component's smallest record id, so a rebuilt state DB gives the same keys."""
    return "CK-" + hashlib.sha256(min_record_id.encode("utf-8")).hexdigest()[:16]


class _UnionFind:
    """Union by size with path halving; each root carries the oldest existing key of its set."""

    def __init__(self, n: int, keys: list[str | None], age: dict[str, tuple[str, str]]) -> None:
        self.parent = list(range(n))
        self.size = [1] * n
        self.key = keys
        self.age = age

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> tuple[str | None, str | None] | None:
        """Join the sets of a and b; returns (winning key, losing key) or None if already joined."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        ka, kb = self.key[ra], self.key[rb]
        if ka is not None and kb is not None and ka != kb and self.age[kb] < self.age[ka]:
            ka, kb = kb, ka
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.key[ra] = ka if ka is not None else kb
        return ka, kb


def _long(records: pd.DataFrame) -> pd.DataFrame:
    missing = sorted(set(RECORD_COLUMNS) - set(records.columns))
    if missing:
        raise ValueError(f"identity records lack column(s): {', '.join(missing)}")
    long = records[RECORD_COLUMNS].melt(id_vars="record_id", var_name="type", value_name="raw")
    long = long.dropna(subset=["raw", "record_id"])
    long["raw"] = long["raw"].astype("string").str.strip()
    long = long[long["raw"] != ""]
    long["record_id"] = long["record_id"].astype("string")
    return long.reset_index(drop=True)


def _refuse_shared_devices(long: pd.DataFrame) -> pd.DataFrame:
    """A browser that logged in as two user ids links neither: drop its user ids and its pseudo id."""
    users = long[long["type"] == "web_user_id"].groupby("record_id")["value"].nunique()
    shared = users[users > 1]
    if shared.empty:
        return long
    hit = long["record_id"].isin(shared.index) & long["type"].isin(["web_user_id", "web_pseudo_id"])
    pseudo = hit & (long["type"] == "web_pseudo_id") & long["refused"].isna()
    long = long.copy()
    long.loc[pseudo, "refused"] = long.loc[pseudo, "record_id"].map(
        lambda r: f"pseudo id logged in as {shared[r]} different user ids"
    )
    # The user ids themselves are fine identifiers elsewhere; only this record's claim to them goes.
    return long[~(hit & (long["type"] == "web_user_id"))]


def resolve(records: pd.DataFrame, config: IdentityConfig, store: IdentityStore, run_date: str) -> Resolution:
    """Assign every record a customer_key, keeping existing keys, and persist the result."""
    record_ids = pd.Index(records["record_id"].dropna().astype("string").unique()).sort_values()
    long = _normalize(_long(records), _Guard.of(config))
    long = _refuse_shared_devices(long)
    long["space"] = long["type"].map(_SPACE)

    accepted = long[long["refused"].isna()].drop_duplicates(["space", "value", "record_id"])
    counts = accepted.groupby(["space", "value"])["record_id"].transform("size")
    caps = accepted["space"].map(config.cap)
    over = counts > caps

    refused_rows = long[long["refused"].notna()].assign(identifier_type=lambda d: d["space"])
    capped = accepted[over].assign(
        identifier_type=lambda d: d["space"],
        refused=lambda d: d["space"].map(lambda s: f"shared by more than {config.cap(s)} records"),
    )
    refused = (
        pd.concat([refused_rows, capped], ignore_index=True)
        .groupby(["identifier_type", "value", "refused"])
        .agg(records=("record_id", "nunique"))
        .reset_index()
        .rename(columns={"refused": "reason"})
    )
    refused["identifier_hash"] = refused["value"].map(identifier_hash)
    refused = refused[REFUSED_COLUMNS].sort_values(["identifier_type", "identifier_hash"], ignore_index=True)

    # Star edges: every record sharing a value links to the smallest record id carrying it.
    usable = accepted[~over].sort_values(["space", "value", "record_id"], kind="stable")
    first = usable.groupby(["space", "value"], sort=False)[["record_id", "type"]].transform("first")
    edges = usable.assign(anchor=first["record_id"], anchor_type=first["type"])
    edges = edges[edges["record_id"] != edges["anchor"]]
    via_web = (edges["type"] == "web_user_id") | (edges["anchor_type"] == "web_user_id")
    edges = edges.assign(edge_type=edges["space"].where(~via_web, "web_user_id"))
    edges = edges.sort_values(["anchor", "record_id", "edge_type"], kind="stable", ignore_index=True)

    stored = store.assignments()
    age = {str(k): (str(g), str(k)) for k, g in stored.groupby("customer_key")["first_seen_run"].min().items()}
    known = dict(zip(stored["record_id"], stored["customer_key"], strict=True))
    position = {r: i for i, r in enumerate(record_ids)}
    initial: list[str | None] = [known.get(r) for r in record_ids]
    uf = _UnionFind(len(record_ids), list(initial), age)

    # Records that already share a key stay together even if today's data no longer links them.
    first_of_key: dict[str, int] = {}
    for i, k in enumerate(initial):
        if k is not None:
            uf.union(first_of_key.setdefault(k, i), i)

    unions: list[tuple[int, int, str, str, str]] = []
    for a, b, etype, value in zip(edges["anchor"], edges["record_id"], edges["edge_type"], edges["value"], strict=True):
        ia, ib = position[a], position[b]
        joined = uf.union(ia, ib)
        if joined is None:
            continue
        win, lose = joined
        if win is not None and lose is not None and win != lose:
            reason = f"merged cluster {lose} into {win} via {etype}"
        else:
            reason = REASONS[etype]
        unions.append((ia, ib, etype, identifier_hash(value), reason))

    roots = pd.Series([uf.find(i) for i in range(len(record_ids))], index=record_ids)
    smallest = pd.Series(record_ids, index=record_ids).groupby(roots.tolist()).transform("min")
    final = [uf.key[r] or new_key(str(m)) for r, m in zip(roots.to_numpy(), smallest.to_numpy(), strict=True)]
    keys = pd.DataFrame({"record_id": record_ids, "customer_key": final}, dtype="string")

    renamed = {str(k): final[i] for i, k in enumerate(initial) if k is not None and k != final[i]}
    new = keys[[k is None for k in initial]]
    merges = pd.DataFrame(
        [
            (run_date, final[ia], record_ids[ia], record_ids[ib], etype, h, reason)
            for ia, ib, etype, h, reason in unions
        ],
        columns=MERGE_COLUMNS,
    )
    store.save(run_date, new, renamed, merges)
    log.info(
        "identity: %d records -> %d customer keys (%d new records, %d unions, %d clusters merged, "
        "%d identifiers refused)",
        len(keys),
        keys["customer_key"].nunique(),
        len(new),
        len(merges),
        len(renamed),
        len(refused),
    )
    summary = refused.groupby(["identifier_type", "reason"]).size().reset_index(name="n")
    for itype, reason, n in summary.itertuples(index=False):
        log.info("identity: refused %d %s value(s) as merge keys: %s", n, itype, reason)
    return Resolution(keys=keys.reset_index(drop=True), merges=merges, refused=refused)

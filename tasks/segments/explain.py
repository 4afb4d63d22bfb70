"""Why a customer is (or is not) in a segment: the clauses that decided it.

A rule tree is split into its leaf clauses; each leaf is evaluated as one boolean column in the
engine, and the deciding clauses per customer are derived with vectorised boolean algebra:

* a member of ``all`` is there because of every child; of ``any``, because of the true children;
* ``not X`` holds because of the clauses that made X false (its *refuting* clauses).

Labels are short, readable renderings of the YAML clause ("orders ≥ 3"), so a marketer can read
them in a file or on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel

_SYMBOLS = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}


@dataclass(frozen=True)
class Leaf:
    path: str  # position in the tree, e.g. "all[1].not"
    node: BaseModel
    label: str


def children(node: Any) -> tuple[str, list[Any]] | None:
    """The combinator of a node and its children, or None for a leaf clause."""
    for attr in ("all", "any"):
        value = getattr(node, attr, None)
        if isinstance(value, list) and not isinstance(node, str):
            return attr, value
    inner = getattr(node, "not_", None)
    if inner is not None:
        return "not", [inner]
    return None


def label(node: BaseModel) -> str:
    field = getattr(node, "field", None)
    op = getattr(node, "op", None)
    if isinstance(field, str) and isinstance(op, str):
        value = getattr(node, "value", None)
        if op in _SYMBOLS:
            return f"{field} {_SYMBOLS[op]} {value}"
        if op in ("is_set", "is_not_set"):
            return f"{field} {'has a value' if op == 'is_set' else 'has no value'}"
        return f"{field} {op.replace('_', ' ')} {value}"
    data = node.model_dump(mode="json", exclude_none=True, exclude_defaults=True, by_alias=True)
    text = yaml.safe_dump(data, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text[1:-1] if text.startswith("{") and text.endswith("}") else text


def leaves(rule: Any, path: str = "rule") -> list[Leaf]:
    kids = children(rule)
    if kids is None:
        return [Leaf(path, rule, label(rule))]
    kind, nodes = kids
    out: list[Leaf] = []
    for i, child in enumerate(nodes):
        out.extend(leaves(child, f"{path}.{kind}" + (f"[{i}]" if kind != "not" else "")))
    return out


def _value(rule: Any, path: str, truth: dict[str, np.ndarray]) -> np.ndarray:
    kids = children(rule)
    if kids is None:
        return truth[path]
    kind, nodes = kids
    if kind == "not":
        return ~_value(nodes[0], f"{path}.not", truth)
    values = [_value(c, f"{path}.{kind}[{i}]", truth) for i, c in enumerate(nodes)]
    return np.logical_and.reduce(values) if kind == "all" else np.logical_or.reduce(values)


def _masks(rule: Any, path: str, truth: dict[str, np.ndarray], supporting: bool) -> dict[str, np.ndarray]:
    """For each leaf, where it supports (or, with supporting=False, refutes) the node's outcome."""
    kids = children(rule)
    if kids is None:
        return {path: truth[path] if supporting else ~truth[path]}
    kind, nodes = kids
    if kind == "not":
        return _masks(nodes[0], f"{path}.not", truth, not supporting)
    out: dict[str, np.ndarray] = {}
    for i, child in enumerate(nodes):
        child_path = f"{path}.{kind}[{i}]"
        relevant = _value(child, child_path, truth)
        if not supporting:
            relevant = ~relevant
        if (kind == "all") == supporting:  # every child carries an all-member / an any-non-member
            relevant = np.ones_like(relevant)
        for leaf_path, mask in _masks(child, child_path, truth, supporting).items():
            out[leaf_path] = out.get(leaf_path, np.zeros_like(mask)) | (mask & relevant)
    return out


def deciding_clauses(rule: Any, truth: pd.DataFrame, member: bool = True) -> pd.Series:
    """Per row of ``truth`` (one boolean column per leaf path), the clauses that decided it, "; "-joined.

    ``member=True`` explains why rows are in the segment, ``False`` why they are not.
    """
    arrays = {c: truth[c].fillna(False).to_numpy(dtype=bool) for c in truth.columns}
    return pd.Series(deciding_text(rule, arrays, len(truth), member), index=truth.index)


def deciding_text(rule: Any, arrays: dict[str, np.ndarray], rows: int, member: bool = True) -> np.ndarray:
    """``deciding_clauses`` on leaf arrays (leaf path -> bool array of ``rows`` customers)."""
    codes, texts = deciding_codes(rule, arrays, rows, member)
    return np.asarray(texts, dtype=object)[codes] if rows else np.array([], dtype=object)


def code_type(values: int) -> type[np.signedinteger[Any]]:
    """The narrowest signed integer type that holds 0 .. ``values`` and -1, as a categorical's codes do: a
    code per member in int64 is 100 MB at 12M memberships, whose first touch alone costs about 0.1 s."""
    for kind in (np.int8, np.int16, np.int32):
        if values < np.iinfo(kind).max:
            return kind
    return np.int64


def deciding_codes(
    rule: Any, arrays: dict[str, np.ndarray], rows: int, member: bool = True
) -> tuple[np.ndarray, list[str]]:
    """The deciding clauses as a code per row and the text of each code ("; "-joined labels).

    Customers decided by the same clauses share one text, and a segment has few such combinations, so
    the text is built once per combination rather than concatenated per customer (a million members
    would otherwise mean a million string joins per clause).
    """
    masks = _masks(rule, "rule", arrays, supporting=member)
    labels = {leaf.path: leaf.label for leaf in leaves(rule)}
    paths = list(masks)
    if not paths or rows == 0:
        return np.zeros(rows, dtype=np.int8), [""]
    # Which clauses decided each customer, as one integer (a bit per clause) hashed into codes: a hash
    # per customer rather than sorting rows of bits. Over 64 clauses the rows of bits are sorted instead.
    if len(paths) <= 64:
        kind = np.dtype(next(k for k in ("u1", "u2", "u4", "u8") if int(k[1]) * 8 >= len(paths)))
        word: np.ndarray = np.zeros(rows, dtype=kind)  # as narrow as the clauses allow: less to fill and hash
        for bit, p in enumerate(paths):
            word |= np.left_shift(np.broadcast_to(masks[p], (rows,)).astype(kind), bit, dtype=kind)
        codes, combos = pd.factorize(word)
        used = [[bool(int(combo) >> bit & 1) for bit in range(len(paths))] for combo in combos]
    else:
        bits = np.column_stack([np.broadcast_to(masks[p], (rows,)) for p in paths])
        packed, codes = np.unique(np.packbits(bits, axis=1), axis=0, return_inverse=True)
        used = np.unpackbits(packed, axis=1, count=len(paths)).astype(bool).tolist()
    texts = ["; ".join(labels[p] for p, on in zip(paths, row, strict=True) if on) for row in used]
    return codes.reshape(-1).astype(code_type(len(texts))), texts


def value(rule: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The rule's outcome per customer from its leaf arrays."""
    return _value(rule, "rule", arrays)


def truth_table(compiler: Any, features: Any, rule: Any, where: Any = None) -> pd.DataFrame:
    """Evaluate every leaf for the customers ``where`` selects (all by default): one boolean column
    per leaf path, indexed by customer_key."""
    table = features if where is None else features.filter(where)
    cols = {leaf.path: compiler.compile(leaf.node).fill_null(False) for leaf in leaves(rule)}
    frame: pd.DataFrame = table.select(table.customer_key, **cols).to_pandas()
    return frame.set_index("customer_key")


def outcome(rule: Any, truth: pd.DataFrame) -> pd.Series:
    arrays = {c: truth[c].fillna(False).to_numpy(dtype=bool) for c in truth.columns}
    return pd.Series(_value(rule, "rule", arrays), index=truth.index)

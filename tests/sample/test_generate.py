"""Properties of the sample generator that downstream modules and DQ tests rely on."""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import json
import math
import pathlib
import re
import sqlite3
from collections import Counter
from typing import Any

import pandas as pd
import pytest

from tasks.sample import InjectedRow, SampleData, generate, injected_counts, write
from tasks.sample.generate import PROVINCES

END = dt.date(2026, 11, 24)
SCALE = 0.2
EXPECTED_COUNTS = {
    "duplicate_id": 2,
    "future_timestamp": 4,
    "malformed_email": 3,
    "missing_event_name": 2,
    "missing_id": 2,
    "negative_amount": 3,
    "nps_out_of_range": 1,
    "csat_out_of_range": 1,
}
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@pytest.fixture(scope="module")
def data() -> SampleData:
    return generate(END, scale=SCALE, seed=42)


@pytest.fixture(scope="module")
def out_dir(data: SampleData, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("sample")
    write(data, path)
    return path


def _bad_rows(data: SampleData, table: str) -> set[int]:
    return {r.row for r in data.injected if r.table == table}


def _good_orders(data: SampleData) -> pd.DataFrame:
    return data.orders[~data.orders["_row"].isin(_bad_rows(data, "orders"))]


def _read_orders(path: pathlib.Path) -> dict[int, dict[str, Any]]:
    con = sqlite3.connect(path / "pos.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in con.execute("SELECT * FROM orders")}
    finally:
        con.close()


def _read_contacts(path: pathlib.Path) -> list[dict[str, str]]:
    with (path / "crm" / "contacts.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_is_deterministic(data: SampleData) -> None:
    again = generate(END, scale=SCALE, seed=42)
    for name in ("stores", "products", "orders", "order_lines", "contacts"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(again, name))
    assert data.web_events == again.web_events
    assert data.injected == again.injected
    assert data.truth_province == again.truth_province


def test_different_seed_differs(data: SampleData) -> None:
    other = generate(END, scale=SCALE, seed=7)
    assert not other.contacts["full_name"].equals(data.contacts["full_name"])
    assert not other.orders["total_vnd"].equals(data.orders["total_vnd"])


def test_injected_counts_match_spec(data: SampleData) -> None:
    assert injected_counts(data) == EXPECTED_COUNTS
    assert len(set(data.injected)) == len(data.injected)


def test_good_order_totals_match_lines(data: SampleData) -> None:
    good = _good_orders(data)
    lines = data.order_lines
    assert (lines["line_total_vnd"] == lines["quantity"] * lines["unit_price_vnd"] - lines["discount_vnd"]).all()
    per_order = (
        lines.groupby("order_id")[["line_total_vnd", "discount_vnd"]]
        .sum()
        .rename(columns={"discount_vnd": "discount_vnd_lines"})
    )
    merged = good.set_index("order_id").join(per_order, how="left")
    assert merged["line_total_vnd"].notna().all(), "every good order has lines"
    assert (merged["total_vnd"] == merged["line_total_vnd"]).all()
    assert (merged["total_vnd"] == merged["subtotal_vnd"] - merged["discount_vnd"]).all()
    assert (merged["discount_vnd"] == merged["discount_vnd_lines"]).all()
    assert (good["total_vnd"] > 0).all()
    assert 0.2 < (good["discount_vnd"] > 0).mean() < 0.4
    assert set(lines["order_id"]) <= set(good["order_id"])


def test_good_orders_reference_known_customers_and_unique_ids(data: SampleData) -> None:
    good = _good_orders(data)
    assert good["customer_id"].notna().all()
    assert set(good["customer_id"]) <= set(data.contacts["customer_id"])
    assert set(good["store_id"]) <= set(data.stores["store_id"])
    assert not good["order_id"].duplicated().any()
    assert set(good["channel"]) == {"store", "online"}


def test_bad_orders_have_no_lines_and_look_valid(data: SampleData) -> None:
    bad = data.orders[data.orders["_row"].isin(_bad_rows(data, "orders"))]
    assert set(bad["customer_id"]) <= set(data.contacts["customer_id"])
    assert set(bad["store_id"]) <= set(data.stores["store_id"])
    good_ids = set(_good_orders(data)["order_id"])
    # duplicates share an order_id with a good order; their "lines" are the original's.
    unique_bad = bad[~bad["order_id"].isin(good_ids)]
    assert not unique_bad["order_id"].dropna().isin(data.order_lines["order_id"]).any()


def test_manifest_points_at_bad_rows_in_files(data: SampleData, out_dir: pathlib.Path) -> None:
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["injected_counts"] == EXPECTED_COUNTS
    entries = [InjectedRow(**e) for e in manifest["injected"]]
    assert entries == data.injected

    orders = _read_orders(out_dir)
    contacts = _read_contacts(out_dir)
    end_cutoff = dt.datetime(END.year, END.month, END.day) + dt.timedelta(days=1)
    seen_positions: set[str] = set()
    for e in entries:
        if e.table == "orders":
            assert e.source == "pos.sqlite:orders"
            row = orders[e.row]
            ordered_at = dt.datetime.strptime(row["ordered_at"], "%Y-%m-%dT%H:%M:%SZ")
            if e.kind == "missing_id":
                assert row["order_id"] is None
            elif e.kind == "negative_amount":
                assert row["total_vnd"] < 0 and row["subtotal_vnd"] < 0
            elif e.kind == "future_timestamp":
                assert end_cutoff + dt.timedelta(days=3) <= ordered_at
                assert ordered_at < end_cutoff + dt.timedelta(days=11)
            elif e.kind == "duplicate_id":
                earlier = [r for rid, r in orders.items() if rid < e.row and r["order_id"] == row["order_id"]]
                assert len(earlier) == 1
                assert earlier[0]["total_vnd"] != row["total_vnd"]
            else:
                pytest.fail(f"unexpected order kind {e.kind}")
            if e.kind != "future_timestamp":
                assert ordered_at < end_cutoff
        elif e.table == "contacts":
            assert e.source == "crm/contacts.csv" and e.kind == "malformed_email"
            assert not EMAIL_RE.match(contacts[e.row - 1]["email"])
        elif e.table == "web_events":
            lines = (out_dir / e.source).read_text(encoding="utf-8").splitlines()
            event = json.loads(lines[e.row - 1])
            if e.kind == "missing_event_name":
                assert event["event_name"] is None
            elif e.kind == "future_timestamp":
                assert e.source == f"web/events_{END:%Y%m%d}.ndjson"
                assert event["event_timestamp"] // 1_000_000 > end_cutoff.replace(tzinfo=dt.UTC).timestamp()
            else:
                pytest.fail(f"unexpected web kind {e.kind}")
        elif e.table == "survey_responses":
            with (out_dir / e.source).open(encoding="utf-8", newline="") as fh:
                answer = list(csv.DictReader(fh))[e.row - 1]
            if e.kind == "nps_out_of_range":
                assert not 0 <= int(answer["nps_score"]) <= 10
            else:
                assert e.kind == "csat_out_of_range" and not 1 <= int(answer["csat_score"]) <= 5
        else:
            pytest.fail(f"unexpected table {e.table}")
        seen_positions.add(f"{e.source}:{e.row}")

    # scattered, not simply appended
    bad_order_rows = sorted(_bad_rows(data, "orders"))
    assert bad_order_rows[0] < len(orders) // 2
    assert min(_bad_rows(data, "contacts")) < len(contacts)


def test_only_manifest_rows_are_bad(data: SampleData, out_dir: pathlib.Path) -> None:
    contacts = _read_contacts(out_dir)
    bad_emails = {i + 1 for i, c in enumerate(contacts) if not EMAIL_RE.match(c["email"])}
    assert bad_emails == _bad_rows(data, "contacts")
    assert all(
        c["email"].split("@")[1].lower() in {"example.com", "example.vn", "example.net"}
        for c in contacts
        if EMAIL_RE.match(c["email"])
    )
    flagged = {(r.source, r.row) for r in data.injected if r.table == "web_events"}
    for path in sorted((out_dir / "web").glob("events_*.ndjson")):
        source = f"web/{path.name}"
        day = dt.datetime.strptime(path.stem.removeprefix("events_"), "%Y%m%d")
        # Files hold one Vietnamese (UTC+7) day, as a GA4 property in Asia/Ho_Chi_Minh exports them.
        lo = (int(day.replace(tzinfo=dt.UTC).timestamp()) - 7 * 3600) * 1_000_000
        hi = lo + 86_400 * 1_000_000
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            event = json.loads(line)
            good = event["event_name"] is not None and lo <= event["event_timestamp"] < hi
            assert good != ((source, n) in flagged), (source, n)


def test_sample_frames_match_written_files(data: SampleData, out_dir: pathlib.Path) -> None:
    orders = _read_orders(out_dir)
    assert list(orders) == data.orders["id"].tolist()
    assert [r["order_id"] for r in orders.values()] == [None if pd.isna(v) else v for v in data.orders["order_id"]]
    contacts = _read_contacts(out_dir)
    assert [c["contact_id"] for c in contacts] == data.contacts["contact_id"].tolist()
    assert contacts[0]["full_name"] == data.contacts["full_name"].iloc[0]
    files = sorted((out_dir / "web").glob("events_*.ndjson"))
    assert len(files) == 60
    assert files[-1].name == f"events_{END:%Y%m%d}.ndjson"
    n_lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)
    assert n_lines == len(data.web_events) == len(data.web_event_locations)
    source, row = data.web_event_locations[5]
    line = (out_dir / source).read_text(encoding="utf-8").splitlines()[row - 1]
    assert json.loads(line) == data.web_events[5]


def test_messy_crm_values(data: SampleData) -> None:
    contacts = data.contacts
    hcm = {
        "TP.HCM",
        "Hồ Chí Minh",
        "Ho Chi Minh City",
        "TP. Hồ Chí Minh",
        "Sài Gòn",
        "HCMC",
    }
    assert len(set(contacts["province"]) & hcm) >= 3
    truth_hcm = [cid for cid, p in data.truth_province.items() if p == "Hồ Chí Minh"]
    written = dict(zip(contacts["customer_id"], contacts["province"], strict=True))
    # Bình Dương was merged into Hồ Chí Minh City in 2025; old addresses count as HCMC.
    assert {written[c] for c in truth_hcm} <= hcm | {"Bình Dương", "Binh Duong"}
    assert all(written[c] != "" for c in data.truth_province)

    forms = Counter(
        "plus84"
        if p.startswith("+84")
        else "84"
        if p.startswith("84")
        else "spaced"
        if " " in p
        else "0"
        if p.startswith("0")
        else "blank"
        for p in contacts["phone"]
    )
    assert len({f for f in forms if f != "blank"}) >= 2
    assert any(b.endswith("-02-29") for b in contacts["birthday"])
    assert set(contacts["gender"]) <= {"male", "female", "other", ""}
    share = sum(p in {"Hồ Chí Minh", "Hà Nội"} for p in data.truth_province.values())
    assert 0.35 < share / len(contacts) < 0.55


def test_customer_behaviour_mix(data: SampleData) -> None:
    good = _good_orders(data)
    lines = data.order_lines.merge(good[["order_id", "customer_id", "ordered_at"]], on="order_id")
    lines = lines.merge(data.products[["product_id", "category"]], on="product_id")
    recent = pd.Timestamp(END - dt.timedelta(days=29))
    ordered = pd.to_datetime(lines["ordered_at"].str.rstrip("Z"))
    backpack = lines[(lines["category"] == "backpack") & (ordered >= recent)]
    assert backpack["customer_id"].nunique() >= 1

    per = good.groupby("customer_id").agg(n=("id", "size"), spend=("total_vnd", "sum"))
    big = per[(per["n"] >= 3) & (per["spend"] >= 1_000_000)]
    assert 0 < len(big) < len(data.contacts)
    never = set(data.contacts["customer_id"]) - set(good["customer_id"])
    assert len(never) > 3  # CRM-only customers beyond the malformed ones
    last = pd.to_datetime(good.groupby("customer_id")["ordered_at"].max().str.rstrip("Z"))
    assert (last < pd.Timestamp(END - dt.timedelta(days=90))).sum() > 0


def test_write_is_idempotent(data: SampleData, tmp_path: pathlib.Path) -> None:
    first = write(data, tmp_path)
    snapshot = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # a stray day file from another run must not survive a rewrite
    (tmp_path / "web" / "events_19990101.ndjson").write_text("{}\n", encoding="utf-8")
    second = write(data, tmp_path)
    again = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert first == second
    assert first["orders"] == len(data.orders)
    assert snapshot == again


def test_profile_attributes_and_vouchers_leave_earlier_values_unchanged(
    data: SampleData, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = importlib.import_module("tasks.sample.generate")  # the package re-exports a function of that name
    monkeypatch.setattr(gen, "_contact_attributes", lambda rng, contacts, end_date: contacts)
    monkeypatch.setattr(gen, "_voucher_codes", lambda rng, orders: orders)
    without = generate(END, scale=SCALE, seed=42)
    pd.testing.assert_frame_equal(data.contacts[without.contacts.columns], without.contacts)
    pd.testing.assert_frame_equal(data.orders[without.orders.columns], without.orders)
    assert data.web_events == without.web_events


def test_contact_profile_attributes(data: SampleData, out_dir: pathlib.Path) -> None:
    contacts = _read_contacts(out_dir)
    assert list(contacts[0])[-3:] == ["interests", "commute_mode", "works_remotely"]
    frame = pd.DataFrame(contacts)
    business = frame[frame["customer_type"] == "business"]
    personal = frame[frame["customer_type"] != "business"]
    assert 0.03 < len(business) / len(frame) < 0.15
    assert (business[["company", "industry", "company_size"]] != "").all().all()
    assert (personal[["company", "industry", "company_size"]] == "").all().all()
    assert set(frame["customer_type"]) == {"personal", "business", ""}
    assert set(frame["income_band"]) <= {"<10M", "10-20M", "20-40M", ">40M", ""}
    assert set(frame["works_remotely"]) == {"true", "false", ""}
    assert frame["interests"].str.contains(";").any()
    assert ((frame["latitude"] == "") == (frame["longitude"] == "")).all()

    stores = [(p, float(la), float(lo)) for p, la, lo in data.stores[["province", "latitude", "longitude"]].values]
    spelled = {s: prov for prov, (_, spellings) in PROVINCES.items() for s in spellings}
    placed = frame[frame["latitude"] != ""]
    assert 0.7 < len(placed) / len(frame) < 0.95
    for province, lat, lon in zip(placed["province"], placed["latitude"], placed["longitude"], strict=True):
        own = [(la, lo) for p, la, lo in stores if p == spelled[province]]
        if own:  # drawn 1-25 km from one of the province's stores
            assert min(_km(float(lat), float(lon), la, lo) for la, lo in own) <= 25.01


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lon2 - lon1))
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def test_voucher_codes_only_on_discounted_orders(data: SampleData, out_dir: pathlib.Path) -> None:
    orders = _read_orders(out_dir)
    with_code = [o for o in orders.values() if o["voucher_code"] is not None]
    assert with_code and all(o["discount_vnd"] > 0 for o in with_code)
    discounted = sum(1 for o in orders.values() if (o["discount_vnd"] or 0) > 0)
    assert 0.08 < len(with_code) / discounted < 0.25
    codes = {o["voucher_code"] for o in with_code}
    assert {"BLACKFRIDAY", "MEMBER10"} <= codes and any(c.startswith("TET") for c in codes)
    assert list(data.orders["voucher_code"].dropna()) == [o["voucher_code"] for o in with_code]

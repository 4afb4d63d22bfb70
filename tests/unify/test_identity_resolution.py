"""Identity resolution: what links records, what is refused as a link, and how keys survive reruns."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks import settings
from tasks.config.loader import ConfigError
from tasks.unify.identity import (
    RECORD_COLUMNS,
    IdentityConfig,
    IdentityStore,
    Resolution,
    identity_records,
    load_identity_config,
    new_key,
    phone_junk_reason,
    resolve,
)

CONFIG = load_identity_config(settings.PROJECT_ROOT / "config" / "identity.yaml")
DAY1, DAY2, DAY3 = "2026-11-01", "2026-11-02", "2026-11-03"


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    return IdentityStore(f"sqlite:///{tmp_path / 'state.db'}")


def _records(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{c: row.get(c) for c in RECORD_COLUMNS} for row in rows], columns=RECORD_COLUMNS)


def _key(res: Resolution, record_id: str) -> str:
    return str(res.keys.set_index("record_id").loc[record_id, "customer_key"])


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _contacts(*rows: tuple[str, str | None, str | None, str | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["contact_id", "customer_id", "email", "phone"])


def _orders(*customer_ids: str) -> pd.DataFrame:
    return pd.DataFrame({"order_id": [f"O{i}" for i in range(len(customer_ids))], "customer_id": list(customer_ids)})


def _events(*pairs: tuple[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["user_pseudo_id", "user_id"])


def test_crm_pos_and_web_records_of_one_person_share_a_key_and_say_why(store: IdentityStore) -> None:
    contacts = _contacts(
        ("CRM-1", "CUS-1", " Hoa.Nguyen@Shop.VN ", "0903 456 781"),
        ("CRM-2", None, "hoa.nguyen@shop.vn", None),  # same email, typed differently
        ("CRM-3", None, None, "+84903456781"),  # same phone in E.164
        ("CRM-9", "CUS-9", "binh.tran@shop.vn", "0938 111 222"),
    )
    events = _events(("P1", None), ("P1", "CUS-1"), ("P1", "CUS-1"), ("P2", None))
    records = identity_records(contacts, _orders("CUS-1", "CUS-1", "CUS-9"), events)
    res = resolve(records, CONFIG, store, DAY1)

    one = {_key(res, r) for r in ("crm:CRM-1", "crm:CRM-2", "crm:CRM-3", "pos:CUS-1", "web:P1")}
    assert len(one) == 1
    key = one.pop()
    assert _key(res, "crm:CRM-9") == _key(res, "pos:CUS-9") != key
    assert _key(res, "web:P2") not in {key, _key(res, "crm:CRM-9")}
    assert res.keys["customer_key"].nunique() == 3

    mine = res.merges[res.merges["customer_key"] == key]
    assert len(mine) == 4  # a spanning tree over 5 records
    pairs = {(r.record_a, r.record_b, r.identifier_type, r.reason) for r in mine.itertuples()}
    assert pairs == {
        ("crm:CRM-1", "crm:CRM-2", "email", "same email"),
        ("crm:CRM-1", "crm:CRM-3", "phone", "same phone"),
        ("crm:CRM-1", "pos:CUS-1", "customer_id", "same loyalty id"),
        ("crm:CRM-1", "web:P1", "web_user_id", "web login user_id"),
    }
    email_row = mine[mine["identifier_type"] == "email"].iloc[0]
    assert email_row["identifier_hash"] == _sha("hoa.nguyen@shop.vn")
    assert (mine["run_date"] == DAY1).all()
    explained = store.explain(key)
    assert set(explained["reason"]) == {"same email", "same phone", "same loyalty id", "web login user_id"}


def test_placeholder_phone_and_test_email_do_not_merge_strangers(store: IdentityStore) -> None:
    records = _records(
        {"record_id": "crm:A", "email": "test@test.com", "phone": "0000000000"},
        {"record_id": "crm:B", "email": "TEST@test.com", "phone": "000 000 0000"},
        {"record_id": "crm:C", "email": "noreply@shop.vn", "phone": "+84000000000"},
        {"record_id": "crm:D", "email": "noreply@shop.vn", "phone": "0123456789"},
    )
    res = resolve(records, CONFIG, store, DAY1)
    assert res.keys["customer_key"].nunique() == 4
    assert res.merges.empty
    refused = res.refused.set_index(["identifier_type", "identifier_hash"])
    assert refused.loc[("email", _sha("test@test.com")), "records"] == 2
    assert refused.loc[("email", _sha("test@test.com")), "reason"] == "blocked email"
    assert refused.loc[("email", _sha("noreply@shop.vn")), "reason"] == "blocked email pattern"
    assert refused.loc[("phone", _sha("0000000000")), "reason"] == "placeholder phone: one repeated digit"
    assert refused.loc[("phone", _sha("0000000000")), "records"] == 2
    assert refused.loc[("phone", _sha("0123456789")), "reason"] == "placeholder phone: digit run"


@pytest.mark.parametrize(
    "email", ["a@a.com", "khongco@gmail.com", "noemail@yahoo.com", "na@na.com", "lan@example.invalid", "test1@shop.vn"]
)
def test_configured_placeholder_emails_are_refused(store: IdentityStore, email: str) -> None:
    records = _records({"record_id": "crm:A", "email": email}, {"record_id": "crm:B", "email": email.upper()})
    res = resolve(records, CONFIG, store, DAY1)
    assert _key(res, "crm:A") != _key(res, "crm:B")
    assert res.refused["identifier_hash"].tolist() == [_sha(email)]


@pytest.mark.parametrize(
    ("phone", "junk"),
    [
        ("0000000000", True),
        ("+84000000000", True),
        ("0900000000", True),
        ("0911111111", True),
        ("0123456789", True),
        ("0987654321", True),
        ("091234", True),
        ("0903456781", False),
        ("+84 938 111 222", False),
    ],
)
def test_automatic_phone_junk_rules(phone: str, junk: bool) -> None:
    assert (phone_junk_reason(phone) is not None) is junk


def test_blocked_phone_matches_in_any_format(store: IdentityStore) -> None:
    config = CONFIG.model_copy(update={"blocked_phones": ["0938 111 222"]})
    records = _records({"record_id": "crm:A", "phone": "+84938111222"}, {"record_id": "crm:B", "phone": "0938111222"})
    res = resolve(records, config, store, DAY1)
    assert _key(res, "crm:A") != _key(res, "crm:B")
    assert res.refused["reason"].tolist() == ["blocked phone"]
    assert res.refused["records"].tolist() == [2]


def test_phone_shared_by_more_records_than_the_cap_links_nobody(store: IdentityStore) -> None:
    shop = [{"record_id": f"pos:W{i:02d}", "customer_id": f"W{i:02d}", "phone": "0283 822 1234"} for i in range(25)]
    family = [{"record_id": f"crm:F{i:02d}", "phone": "0938 555 666"} for i in range(20)]
    res = resolve(_records(*shop, *family), CONFIG, store, DAY1)
    shop_keys = res.keys[res.keys["record_id"].str.startswith("pos:")]["customer_key"]
    family_keys = res.keys[res.keys["record_id"].str.startswith("crm:")]["customer_key"]
    assert shop_keys.nunique() == 25
    assert family_keys.nunique() == 1  # exactly at the cap: still a merge key
    assert res.refused[["identifier_type", "identifier_hash", "records", "reason"]].values.tolist() == [
        ["phone", _sha("+842838221234"), 25, "shared by more than 20 records"]
    ]


def test_pseudo_id_seen_with_two_user_ids_merges_neither(store: IdentityStore) -> None:
    events = _events(("SHARED", "CUS-1"), ("SHARED", "CUS-2"), ("SHARED", None), ("OWN", "CUS-1"))
    records = identity_records(_contacts(), _orders("CUS-1", "CUS-2"), events)
    assert (records["record_id"] == "web:SHARED").sum() == 2  # both logins kept for resolve to judge
    res = resolve(records, CONFIG, store, DAY1)
    assert _key(res, "pos:CUS-1") != _key(res, "pos:CUS-2")
    assert _key(res, "web:SHARED") not in {_key(res, "pos:CUS-1"), _key(res, "pos:CUS-2")}
    assert _key(res, "web:OWN") == _key(res, "pos:CUS-1")
    assert res.refused.values.tolist() == [
        ["web_pseudo_id", _sha("SHARED"), 1, "pseudo id logged in as 2 different user ids"]
    ]


def test_keys_survive_reruns_and_new_data(store: IdentityStore, tmp_path: Path) -> None:
    first = _records(
        {"record_id": "crm:A", "customer_id": "CUS-1", "email": "an@shop.vn"},
        {"record_id": "pos:CUS-1", "customer_id": "CUS-1"},
        {"record_id": "crm:B", "email": "binh@shop.vn"},
    )
    run1 = resolve(first, CONFIG, store, DAY1)
    rerun = resolve(first, CONFIG, store, DAY1)
    pd.testing.assert_frame_equal(rerun.keys, run1.keys)
    assert len(run1.merges) == 1 and rerun.merges.empty  # nothing new to record on a rerun
    assert len(store.explain(_key(run1, "crm:A"))) == 1

    # New records that sort before the old ones must not re-derive existing keys.
    later = pd.concat(
        [
            first,
            _records(
                {"record_id": "crm:0-new", "email": "AN@shop.vn"},
                {"record_id": "crm:0-other", "email": "chi@shop.vn"},
            ),
        ]
    )
    run2 = resolve(later, CONFIG, store, DAY2)
    for record in ("crm:A", "pos:CUS-1", "crm:B"):
        assert _key(run2, record) == _key(run1, record)
    assert _key(run2, "crm:0-new") == _key(run1, "crm:A")
    assert _key(run2, "crm:0-other") == new_key("crm:0-other")
    assert run2.merges[["record_a", "record_b", "reason", "run_date"]].values.tolist() == [
        ["crm:0-new", "crm:A", "same email", DAY2]
    ]

    # A fresh state DB derives the same keys for the same data: keys are not run-order accidents.
    fresh = resolve(first, CONFIG, IdentityStore(f"sqlite:///{tmp_path / 'other.db'}"), DAY1)
    pd.testing.assert_frame_equal(fresh.keys, run1.keys)


def test_record_linking_two_clusters_merges_into_the_older_key(store: IdentityStore) -> None:
    older = _records({"record_id": "crm:B", "phone": "0938 222 333"})
    kb = _key(resolve(older, CONFIG, store, DAY1), "crm:B")
    younger = _records(
        {"record_id": "crm:A", "email": "an@shop.vn"},
        {"record_id": "crm:A2", "email": "an@shop.vn"},
        {"record_id": "crm:B", "phone": "0938 222 333"},
    )
    ka = _key(resolve(younger, CONFIG, store, DAY2), "crm:A")
    assert kb > ka  # the older key sorts last, so only its age can make it win below

    # crm:A2 is absent today, yet it belongs to the losing cluster and must follow it.
    linking = _records(
        {"record_id": "crm:A", "email": "an@shop.vn"},
        {"record_id": "crm:B", "phone": "0938 222 333"},
        {"record_id": "crm:C", "email": "an@shop.vn", "phone": "+84938222333"},
    )
    res = resolve(linking, CONFIG, store, DAY3)
    assert set(res.keys["customer_key"]) == {kb}
    assert res.merges[["record_a", "record_b", "identifier_type", "reason"]].values.tolist() == [
        ["crm:A", "crm:C", "email", "same email"],
        ["crm:B", "crm:C", "phone", f"merged cluster {ka} into {kb} via phone"],
    ]
    stored = store.assignments().set_index("record_id")
    assert stored.loc["crm:A2", "customer_key"] == kb
    assert stored.loc["crm:A2", "first_seen_run"] == DAY2
    assert store.explain(ka).empty
    history = store.explain(kb)
    assert f"merged cluster {ka} into {kb} via phone" in set(history["reason"])
    assert len(history) == 3  # A-A2 from day 2, plus both unions of day 3


def test_key_format_is_derived_from_the_smallest_record_id(store: IdentityStore) -> None:
    records = _records(
        {"record_id": "web:zz", "web_user_id": "CUS-7", "web_pseudo_id": "zz"},
        {"record_id": "pos:CUS-7", "customer_id": "CUS-7"},
    )
    res = resolve(records, CONFIG, store, DAY1)
    key = _key(res, "web:zz")
    assert key == _key(res, "pos:CUS-7") == "CK-" + _sha("pos:CUS-7")[:16]
    assert re.fullmatch(r"CK-[0-9a-f]{16}", key)


def test_no_identifier_values_in_merges_refusals_or_logs(
    store: IdentityStore, caplog: pytest.LogCaptureFixture
) -> None:
    contacts = _contacts(
        ("CRM-1", "CUS-1", "hoa.nguyen@shop.vn", "0903456781"),
        ("CRM-2", None, "hoa.nguyen@shop.vn", "0903456781"),
        ("CRM-3", None, "test@test.com", "0000000000"),
        ("CRM-4", None, "test@test.com", "0000000000"),
    )
    caplog.set_level(logging.DEBUG)
    res = resolve(identity_records(contacts, _orders(), _events()), CONFIG, store, DAY1)
    assert len(res.merges) == 1 and len(res.refused) == 2
    assert "refused" in caplog.text  # the refusals are reported, just not their values
    dumped = res.merges.to_csv() + res.refused.to_csv() + caplog.text
    for pii in ("hoa.nguyen", "0903456781", "+84903456781", "test@test.com", "0000000000"):
        assert pii not in dumped
    assert res.merges["identifier_hash"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_identity_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "identity.yaml"
    path.write_text("blocked_emails: [a@a.com]\nmax_records_per_identifer: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="max_records_per_identifer: unknown key"):
        load_identity_config(path)
    path.write_text("blocked_email_patterns: ['^(test@']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_identity_config(path)
    assert isinstance(CONFIG, IdentityConfig)
    assert CONFIG.cap("phone") == 20 and CONFIG.cap("customer_id") == 100

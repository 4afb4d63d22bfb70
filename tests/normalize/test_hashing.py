"""Per-platform normalize-and-hash: the platforms' published examples, already-hashed values, missing and junk
values, Vietnamese phones and names, and the vectorized phone fast path against phonenumbers."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.normalize import hashing
from tasks.normalize.contact import normalize_email, normalize_phone
from tasks.normalize.hashing import (
    e164_phone,
    google_email,
    google_name,
    google_phone,
    hash_once,
    is_sha256,
    mailchimp_subscriber_hash,
    md5_hex,
    meta_city,
    meta_country,
    meta_email,
    meta_gender,
    meta_name,
    meta_phone,
    sha256_hex,
    split_vietnamese_name,
    tiktok_email,
    tiktok_phone,
)

# A copy of shared/test-vectors/hashing.json: the repository is tested on its own in CI.
VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "hashing_vectors.json").read_text(encoding="utf-8"))
NORMALIZERS: dict[tuple[str, str], Callable[[pd.Series], pd.Series]] = {
    ("meta_custom_audiences", "EMAIL"): meta_email,
    ("meta_custom_audiences", "PHONE"): meta_phone,
    ("google_customer_match", "email"): google_email,
    ("google_customer_match", "phone"): google_phone,
    ("google_customer_match", "given_name"): google_name,
    ("google_customer_match", "family_name"): google_name,
    ("tiktok", "phone"): tiktok_phone,
}
SHA_VECTORS = [
    pytest.param(platform, v, id=f"{platform}-{v['field']}-{v['raw'].strip()}")
    for platform, rows in VECTORS.items()
    if platform not in ("about", "mailchimp_subscriber_hash")
    for v in rows
]
MD5_VECTORS = [pytest.param(v, id=v["raw"]) for v in VECTORS["mailchimp_subscriber_hash"]]
ALL_PUBLIC: list[Callable[[pd.Series], pd.Series]] = [
    sha256_hex,
    md5_hex,
    hash_once,
    meta_email,
    meta_phone,
    meta_name,
    meta_city,
    meta_country,
    meta_gender,
    google_email,
    google_phone,
    google_name,
    tiktok_email,
    tiktok_phone,
    mailchimp_subscriber_hash,
    e164_phone,
]
HASHED_PLATFORM_NORMALIZERS = [n for n in ALL_PUBLIC if n.__name__.split("_")[0] in ("meta", "google", "tiktok")]
SHA_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def one(fn: Callable[[pd.Series], pd.Series], raw: Any) -> Any:
    """fn on a one-row Series, the result as a plain Python value (None for NA)."""
    value = fn(pd.Series([raw], dtype=object)).iloc[0]
    return None if pd.isna(value) else value


# --------------------------------------------------------------------------------------
# Published examples
# --------------------------------------------------------------------------------------


def test_every_vector_has_a_normalizer() -> None:
    fields = {
        (p, v["field"]) for p, rows in VECTORS.items() if p not in ("about", "mailchimp_subscriber_hash") for v in rows
    }
    assert fields == set(NORMALIZERS)
    assert len(SHA_VECTORS) == 13 and len(MD5_VECTORS) == 1


@pytest.mark.parametrize(("platform", "vector"), SHA_VECTORS)
def test_vector_normalizes_and_hashes_as_published(platform: str, vector: dict[str, str]) -> None:
    normalized = NORMALIZERS[(platform, vector["field"])](pd.Series([vector["raw"]]))
    assert normalized.iloc[0] == vector["normalized"]
    assert sha256_hex(normalized).iloc[0] == vector["sha256"]
    assert hash_once(normalized).iloc[0] == vector["sha256"]


@pytest.mark.parametrize("vector", MD5_VECTORS)
def test_mailchimp_vector(vector: dict[str, str]) -> None:
    assert mailchimp_subscriber_hash(pd.Series([vector["raw"]])).iloc[0] == vector["md5"]
    assert md5_hex(pd.Series([vector["normalized"]])).iloc[0] == vector["md5"]
    assert one(mailchimp_subscriber_hash, f"  {vector['raw'].upper()} ") == vector["md5"]


def test_digests_match_hashlib_on_utf8() -> None:
    values = pd.Series(["abc", "nguyễn", "hồchíminh", ""])
    assert sha256_hex(values).tolist() == [hashlib.sha256(v.encode("utf-8")).hexdigest() for v in values]
    assert md5_hex(values).tolist() == [hashlib.md5(v.encode("utf-8")).hexdigest() for v in values]
    assert sha256_hex(values).iloc[0] == SHA_OF_ABC


# --------------------------------------------------------------------------------------
# Already hashed
# --------------------------------------------------------------------------------------


def test_is_sha256_recognises_64_hex_of_either_case() -> None:
    values = pd.Series(
        [
            SHA_OF_ABC,
            SHA_OF_ABC.upper(),
            f" {SHA_OF_ABC} ",
            SHA_OF_ABC[:-1],
            SHA_OF_ABC + "0",
            "g" + SHA_OF_ABC[1:],
            "abc",
            None,
            "",
        ]
    )
    assert is_sha256(values).tolist() == [True, True, True, False, False, False, False, False, False]
    assert is_sha256(values).dtype == bool


def test_hash_once_never_hashes_twice() -> None:
    values = pd.Series([SHA_OF_ABC.upper(), "abc", SHA_OF_ABC])
    once = hash_once(values)
    assert once.tolist() == [SHA_OF_ABC, SHA_OF_ABC, SHA_OF_ABC]
    assert hash_once(once).tolist() == once.tolist()
    assert sha256_hex(pd.Series([SHA_OF_ABC])).iloc[0] != SHA_OF_ABC  # sha256_hex itself always hashes


@pytest.mark.parametrize("normalizer", HASHED_PLATFORM_NORMALIZERS, ids=lambda f: f.__name__)
def test_platform_normalizers_pass_hashes_through(normalizer: Callable[[pd.Series], pd.Series]) -> None:
    assert one(normalizer, f" {SHA_OF_ABC.upper()} ") == SHA_OF_ABC
    assert hash_once(normalizer(pd.Series([SHA_OF_ABC.upper()]))).iloc[0] == SHA_OF_ABC


def test_plain_value_platforms_do_not_take_hashes() -> None:
    assert one(e164_phone, SHA_OF_ABC) is None
    assert one(mailchimp_subscriber_hash, SHA_OF_ABC) is None


# --------------------------------------------------------------------------------------
# Missing and unusable values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ALL_PUBLIC, ids=lambda f: f.__name__)
def test_missing_stays_missing_and_index_is_kept(fn: Callable[[pd.Series], pd.Series]) -> None:
    values = pd.Series([None, pd.NA, float("nan"), "abc"], index=[10, 11, 12, 13], name="col", dtype=object)
    out = fn(values)
    assert out.index.tolist() == [10, 11, 12, 13]
    assert out.name == "col"
    assert out.iloc[:3].isna().all()


@pytest.mark.parametrize("fn", [*ALL_PUBLIC, split_vietnamese_name], ids=lambda f: f.__name__)
def test_empty_and_all_missing_columns(fn: Callable[[pd.Series], Any]) -> None:
    assert len(fn(pd.Series([], dtype="str"))) == 0
    assert fn(pd.Series([None, None], dtype=object)).isna().all(axis=None)


@pytest.mark.parametrize("fn", [f for f in ALL_PUBLIC if f not in (sha256_hex, md5_hex)], ids=lambda f: f.__name__)
def test_blank_and_odd_cells_become_missing_without_raising(fn: Callable[[pd.Series], pd.Series]) -> None:
    values = pd.Series(["", "   ", True, b"bytes", object(), 1.5, float("inf")], dtype=object)
    assert fn(values).isna().all()


def test_digests_hash_text_not_missing() -> None:
    out = sha256_hex(pd.Series(["abc", None], dtype="str"))
    assert out.iloc[0] == SHA_OF_ABC and pd.isna(out.iloc[1])
    assert hash_once(pd.Series(["", "  "])).tolist()[0] != hash_once(pd.Series(["x"])).iloc[0]
    assert pd.isna(hash_once(pd.Series([""])).iloc[0])


def test_string_dtypes_and_chunked_input_agree() -> None:
    raw = ["0912 345 678", None, " Lan@Example.com "]
    chunked = pd.concat([pd.Series(raw[:1], dtype="str"), pd.Series(raw[1:], dtype="str")], ignore_index=True)
    variants = [pd.Series(raw, dtype=object), pd.Series(raw, dtype="string"), chunked, pd.Series(raw, dtype="str")]
    for fn in (meta_phone, meta_email):
        results = [[None if pd.isna(x) else x for x in fn(v)] for v in variants]
        assert all(r == results[0] for r in results), fn.__name__
    assert meta_phone(variants[0]).iloc[0] == "84912345678"


def test_sliced_series_is_read_from_its_own_offset() -> None:
    phones = pd.Series(["junk", "0912 345 678", "", "+84 24 3825 3232"], dtype="str")
    assert meta_phone(phones.iloc[1:]).tolist()[::2] == ["84912345678", "842438253232"]
    assert pd.isna(meta_phone(pd.Series(["", ""], dtype="str"))).all()


# --------------------------------------------------------------------------------------
# Emails
# --------------------------------------------------------------------------------------

BAD_EMAILS = ["a@@b.com", "a b@c.vn", "no-at.example.com", "a@b", "@b.com", "a@-b.com", "lan@", "lân@example.com"]


@pytest.mark.parametrize("fn", [meta_email, google_email, tiktok_email, mailchimp_subscriber_hash])
@pytest.mark.parametrize("raw", BAD_EMAILS)
def test_invalid_emails_become_missing(fn: Callable[[pd.Series], pd.Series], raw: str) -> None:
    assert one(fn, raw) is None


def test_meta_and_tiktok_email_agree_with_contact_normalize_email() -> None:
    raws = ["  Lan.Nguyen@Example.COM ", "x+tag@mail.example.com.vn\n", "First.Last+promo@GMAIL.com", *BAD_EMAILS]
    expected = [normalize_email(r) for r in raws]
    for fn in (meta_email, tiktok_email):
        got = fn(pd.Series(raws)).tolist()
        assert [None if pd.isna(g) else g for g in got] == expected
    assert expected[2] == "first.last+promo@gmail.com"  # no Gmail rule outside Google


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A.B+c@GMAIL.com", "ab@gmail.com"),
        ("a.b.c+x+y@googlemail.com", "abc@googlemail.com"),
        ("a.b+c@gmail.com.vn", "a.b+c@gmail.com.vn"),  # not a Gmail domain
        ("a.b+c@example.com", "a.b+c@example.com"),
        ("+only@gmail.com", None),  # nothing left before the '@'
        ("...@gmail.com", None),
    ],
)
def test_google_gmail_rule(raw: str, expected: str | None) -> None:
    assert one(google_email, raw) == expected


# --------------------------------------------------------------------------------------
# Phones
# --------------------------------------------------------------------------------------

VN_SPELLINGS = [
    "0912345678",
    "0912 345 678",
    "0912.345.678",
    "091-234-5678",
    "+84912345678",
    "+84 912 345 678",
    "(+84) 91-234-5678",
    "84912345678",
    " 84 912 345 678 ",
    "912345678",
    "+84 0912 345 678",
    "0084912345678",
    912345678,
    84912345678,
    84912345678.0,
    "０９１２３４５６７８",
]


@pytest.mark.parametrize("raw", VN_SPELLINGS, ids=str)
def test_vietnamese_spellings_agree_per_platform(raw: object) -> None:
    assert one(meta_phone, raw) == "84912345678"
    assert one(google_phone, raw) == "+84912345678"
    assert one(tiktok_phone, raw) == "84912345678"
    assert one(e164_phone, raw) == "+84912345678"


@pytest.mark.parametrize("raw", ["024 3825 3232", "+84 24 3825 3232", "842438253232", "(024) 3825-3232"])
def test_vietnamese_landline(raw: str) -> None:
    assert one(meta_phone, raw) == "842438253232"
    assert one(google_phone, raw) == "+842438253232"


BAD_PHONES = [
    "abc",
    "12345",
    "0912",
    "+84 12",
    "0123456789",
    "09123456789",
    "0912 345 678 / 0987 654 321",
    "+84 123 456 789",
    "+0912345678",
    "0000000000",
    "n/a",
    "không có",
    "0912+345678",
]


@pytest.mark.parametrize("fn", [meta_phone, google_phone, tiktok_phone, e164_phone], ids=lambda f: f.__name__)
@pytest.mark.parametrize("raw", BAD_PHONES)
def test_invalid_phones_become_missing(fn: Callable[[pd.Series], pd.Series], raw: str) -> None:
    assert one(fn, raw) is None


def test_country_code_written_without_plus() -> None:
    assert one(tiktok_phone, "374-93-828222") == "37493828222"
    assert one(meta_phone, "374-93-828222") == "37493828222"
    assert one(google_phone, "6591234567") == "+6591234567"
    assert one(e164_phone, "374 93 828222") is None  # SMS: no guessing the country
    assert one(e164_phone, "+374 93 828222") == "+37493828222"
    assert one(meta_phone, "430183613") is None  # 9 digits: a Vietnamese number gone wrong, not Austria


def test_foreign_number_with_country_code_is_taken_as_written_for_hashing_only() -> None:
    """+1 555 numbers are fictional, so phonenumbers calls them invalid; Meta's own example uses one."""
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+1 (555) 987-6543"))
    assert one(meta_phone, "+1 (555) 987-6543") == "15559876543"
    assert one(google_phone, "001 555 987 6543") == "+15559876543"
    assert one(e164_phone, "+1 (555) 987-6543") is None  # SMS goes to valid numbers only
    assert one(meta_phone, "+1 555 98") is None  # not even a possible length
    assert one(meta_phone, "+84 123 456 789") is None  # Vietnamese numbers are always validated


def _generated_phones(count: int, seed: int = 7) -> list[str]:
    """Vietnamese-looking numbers with every two-digit prefix and lengths 8-11, in the spellings the fast path
    reads and a few it must leave alone."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(count):
        size = int(rng.choice([8, 9, 9, 9, 10, 10, 11]))
        national = f"{rng.integers(10, 100)}" + "".join(map(str, rng.integers(0, 10, size - 2)))
        spaced = f"{national[:3]} {national[3:6]} {national[6:]}"
        form = int(rng.integers(0, 10))
        out.append(
            [
                f"+84{national}",
                f"84{national}",
                f"0{national}",
                national,
                f"0{spaced}",
                f"(+84) {spaced}",
                f"0{national[:3]}.{national[3:6]}.{national[6:]}",
                f"+84 0{national}",
                f"84-{national}",
                f"+{national}",
            ][form]
        )
    return out


@pytest.fixture(scope="module")
def generated() -> tuple[list[str], list[str | None]]:
    phones = _generated_phones(4000)
    return phones, [normalize_phone(p) for p in phones]


def test_fast_path_says_what_phonenumbers_says(generated: tuple[list[str], list[str | None]]) -> None:
    phones, reference = generated
    text = pc.utf8_trim_whitespace(hashing._to_arrow(pd.Series(phones, dtype="str")))
    fast, decided = hashing._fast_vn(text)
    fast_values, decided_flags = fast.to_pylist(), decided.to_pylist()
    disagree = [
        (p, f, r) for p, f, d, r in zip(phones, fast_values, decided_flags, reference, strict=True) if d and f != r
    ]
    assert disagree == []
    for value in [f for f, d in zip(fast_values, decided_flags, strict=True) if d][:500]:
        assert phonenumbers.is_valid_number(phonenumbers.parse(value))
    valid = sum(r is not None for r in reference)
    assert sum(decided_flags) > 0.8 * valid > 500  # the fast path does the work, it is not vacuous


def test_whole_phone_path_matches_normalize_phone(generated: tuple[list[str], list[str | None]]) -> None:
    """Fast path + fallback: e164_phone is normalize_phone, value for value. The hashed platforms agree with it
    wherever it has an answer; where it has none they may only add a possible non-Vietnamese number."""
    phones, reference = generated
    assert [None if pd.isna(v) else v for v in e164_phone(pd.Series(phones))] == reference
    lenient = [None if pd.isna(v) else v for v in google_phone(pd.Series(phones))]
    for raw, value, ref in zip(phones, lenient, reference, strict=True):
        if ref is not None:
            assert value == ref, raw
        elif value is not None:
            assert not value.startswith("+84") and phonenumbers.is_possible_number(phonenumbers.parse(value)), raw
    added = sum(v is not None and r is None for v, r in zip(lenient, reference, strict=True))
    assert 0 < added < 0.2 * len(phones)  # '+' + national forms of the generator: a few read as foreign numbers
    slow = [hashing._slow_e164(p, for_hashing=False) for p in phones[:1000]]
    assert slow == reference[:1000]


# --------------------------------------------------------------------------------------
# Names, places, gender
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Nguyễn", "nguyễn"),
        ("  Đặng Thị Ánh ", "đặngthịánh"),
        ("NGUYỄN VĂN AN", "nguyễnvănan"),
        ("O'Neil-Smith Jr.", "oneilsmithjr"),
        ("Lê 2", "lê"),
        ("123 !", None),
    ],
)
def test_meta_name_keeps_vietnamese_letters(raw: str, expected: str | None) -> None:
    assert one(meta_name, raw) == expected


def test_decomposed_and_composed_letters_hash_alike() -> None:
    composed = "Nguyễn Thị Ánh"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    for fn in (meta_name, google_name, meta_city):
        assert hash_once(fn(pd.Series([decomposed]))).iloc[0] == hash_once(fn(pd.Series([composed]))).iloc[0]
    assert one(google_name, decomposed) == "nguyễn thị ánh"


def test_google_name_trims_and_lowercases_only() -> None:
    assert one(google_name, "  Trần Thị  ") == "trần thị"
    assert one(google_name, "   ") is None


@pytest.mark.parametrize(
    ("raw", "expected"), [("Hồ Chí Minh", "hồchíminh"), ("Hà Nội", "hànội"), ("TP. Đà Nẵng", "tpđànẵng")]
)
def test_meta_city(raw: str, expected: str) -> None:
    assert one(meta_city, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("VN", "vn"), (" us ", "us"), ("United States", None), ("USA", None), ("V1", None), ("Việt Nam", None)],
)
def test_meta_country(raw: str, expected: str | None) -> None:
    assert one(meta_country, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("M", "m"),
        ("male", "m"),
        ("Nam", "m"),
        ("f", "f"),
        (" Female ", "f"),
        ("Nữ", "f"),
        ("NU", "f"),
        ("other", None),
        ("", None),
    ],
)
def test_meta_gender(raw: str, expected: str | None) -> None:
    assert one(meta_gender, raw) == expected


def test_split_vietnamese_name() -> None:
    names = pd.Series(["Nguyễn Văn An", "  Trần   Thị  Bích  Ngọc ", "An", None, "  "], index=list("abcde"))
    out = split_vietnamese_name(names)
    assert list(out.columns) == ["first_name", "last_name"]
    assert out.index.tolist() == list("abcde")
    as_rows = [tuple(None if pd.isna(v) else v for v in row) for row in out.itertuples(index=False)]
    assert as_rows == [("An", "Nguyễn"), ("Ngọc", "Trần"), ("An", None), (None, None), (None, None)]


def test_digit_scan_reads_slices_and_shared_buffers() -> None:
    """_scan works on raw Arrow buffers: a sliced array, or one whose first value does not start at byte 0."""
    whole = pa.array(["x", "0912.345.678", "", "+84 (91) 2", None, "ab1"], type=pa.large_string())
    offsets = np.frombuffer(whole.buffers()[1], dtype=np.int64)[1:]  # skips "x": the data starts at byte 1
    validity = pc.is_valid(whole.slice(1)).buffers()[1]
    shared = pa.LargeStringArray.from_buffers(5, pa.py_buffer(offsets.tobytes()), whole.buffers()[2], validity)
    for view in (whole.slice(1), shared):
        digits, other, pluses = hashing._scan(view)
        assert digits.to_pylist() == ["0912345678", "", "84912", None, "1"]
        assert other.tolist() == [0, 0, 0, 0, 2]
        assert pluses.tolist() == [0, 0, 1, 0, 0]
